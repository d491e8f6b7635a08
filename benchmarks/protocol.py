"""What every benchmark here does the same way: print the machine it ran on, and append its figures
to one results file that ``make bench`` gathers (JSON lines, one record per benchmark run).

The timing itself is :func:`equiprune.experiments.timing.interleave`: both sides in one process, in
alternation, over several rounds, reported as the median ratio with its lowest and highest round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from equiprune.experiments.timing import machine_state

#: Where a benchmark appends its record when ``--results`` is not given (``make bench`` sets it).
RESULTS_ENV = "EQUIPRUNE_BENCH_RESULTS"


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=os.environ.get(RESULTS_ENV),
        help=f"append this run's figures as one JSON line to this file (default: ${RESULTS_ENV}, else none)",
    )


def print_machine() -> dict[str, Any]:
    """Print, and return, what decides the timings besides the code: cores, threads, load, torch."""
    machine = machine_state()
    load = machine["load_at_start"]
    print(f"machine: {machine['cores']} cores, {machine['threads']} torch threads, "
          f"load {'unknown' if load is None else f'{load:.2f}'} at start, torch {machine['torch']}, "
          f"device {machine['device']}")  # fmt: skip
    return machine


def record(path: Path | None, benchmark: str, machine: dict[str, Any], figures: dict[str, Any]) -> None:
    """Append one record (benchmark, command line, machine, figures, time) to ``path`` as a single
    write of one line, so that a run killed midway leaves the file's earlier records whole."""
    if path is None:
        return
    entry = {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "figures": figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    print(f"figures appended to {path}")

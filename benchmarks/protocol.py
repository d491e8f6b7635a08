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

import torch

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


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"),
                        help="where the timed work runs: cpu (default) or an accelerator such as cuda")  # fmt: skip


def checked_device(parser: argparse.ArgumentParser, device: torch.device) -> torch.device:
    """``device`` if this machine has it; else the parser's usage error, naming what it has."""
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch {torch.__version__} sees no CUDA device here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {device}: the benchmarks run on cpu or cuda")
    return device


def print_machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Print, and return, what decides the timings besides the code: cores, threads, load, torch,
    and the device the timed work runs on."""
    machine = machine_state(device)
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

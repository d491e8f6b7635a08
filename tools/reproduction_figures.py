"""Copy the plots of a `equiprune reproduce game-mnist` directory into docs/images/game-mnist/, so
the docs show the runs' own figures (seed 0 of each configuration).

    python tools/reproduction_figures.py runs/game-mnist
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "images" / "game-mnist"
PLOTS = {"participation_histogram.png": "histogram", "dynamics.png": "dynamics"}


def copy_figures(reproduce_dir: Path, target: Path = TARGET, seed: int = 0) -> list[Path]:
    """``<config>-histogram.png`` and ``<config>-dynamics.png`` for every configuration run."""
    runs = sorted(p for p in reproduce_dir.glob(f"*/seed{seed}") if (p / "results.json").is_file())
    if not runs:
        raise SystemExit(f"reproduction_figures: {reproduce_dir} has no finished seed{seed} runs")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        for plot, name in PLOTS.items():
            if (run / plot).is_file():
                written.append(Path(shutil.copyfile(run / plot, target / f"{run.parent.name}-{name}.png")))
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for path in copy_figures(Path(sys.argv[1])):
        print(f"wrote {path.relative_to(ROOT)}")

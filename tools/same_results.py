"""Fourteen short runs covering every method family, for checking that a change computes the same.

Run it once with the equiprune to compare against on the path and once with this one, then diff:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old/src python tools/same_results.py /tmp/same/old
    python tools/same_results.py /tmp/same/new
    diff /tmp/same/old/summary.json /tmp/same/new/summary.json && echo identical

Each run pins one CPU thread, so the two sides sum in the same order. summary.json holds, per run,
the test accuracy and loss, sizes, kept counts and every epoch's loss (or the run's error).
Reads MNIST and Fashion-MNIST from $EQUIPRUNE_DATA (else ../shared/data beside the checkout).
"""

import json
import os
import sys
from pathlib import Path

from equiprune.config import parse_config

try:
    from equiprune.experiments.loop import run
except ImportError:  # equiprune 0.1's layout
    from equiprune.train import run

DATA = os.environ.get("EQUIPRUNE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
BASE = """
seed = 1
device = "cpu"
threads = 1
[data]
dataset = "{ds}"
root = "{data}"
train_subset = 3000
test_subset = 1000
[model]
name = "{model}"
{hidden}
[train]
epochs = 4
finetune_epochs = 1
lr = 0.002
[method]
{method}
"""
CASES = {  # name: (dataset, model, [model] lines, [method] lines)
    "game-ascent": (
        "mnist",
        "mlp",
        "hidden = [64, 32]",
        'name = "game"\npreset = "l1-l2-combined"\nlr_s = 0.05\ncost_ramp = 0.5',
    ),
    "game-best": (
        "mnist",
        "mlp",
        "hidden = [64, 32]",
        'name = "game"\nupdate = "newton"\nanchored = true\ngamma = 0.2\nlr_s = 0.01\ncost_weighting = "width"\ncost_ramp = 0.75\nstart = 0.25',  # noqa: E501
    ),
    "game-br-width": (
        "mnist",
        "mlp",
        "hidden = [64, 32]",
        'name = "game"\nupdate = "best_response"\ngamma = 0.1\nlr_s = 0.2\ncost_weighting = "width"\ncost_taper = 1.0',
    ),
    "game-weight": (
        "mnist",
        "mlp",
        "hidden = [32, 16]",
        'name = "game"\nplayers = "weight"\ngamma = 0.05\nlr_s = 0.05',
    ),
    "game-lenet": (
        "fashion-mnist",
        "lenet5",
        "",
        'name = "game"\ngamma = 0.005\neta = 0.01\nlr_s = 0.01\ncost_weighting = "macs"\nupdate = "newton"\nstart = 0.25',  # noqa: E501
    ),
    "taylor-iter": (
        "mnist",
        "mlp",
        "hidden = [64, 32]",
        'name = "taylor"\nbudget = 0.2\nschedule = "iterative"\nrounds = 3',
    ),
    "slimming": ("mnist", "mlp", "hidden = [64, 32]", 'name = "slimming"\nbudget = 0.3\nl1 = 0.001'),
    "snip": ("mnist", "mlp", "hidden = [64, 32]", 'name = "snip"\nbudget = 0.1'),
    "synflow": ("mnist", "mlp", "hidden = [64, 32]", 'name = "synflow"\nbudget = 0.1'),
    "imp": ("mnist", "mlp", "hidden = [64, 32]", 'name = "imp"\nbudget = 0.2\nrounds = 2'),
    "gmp": ("mnist", "mlp", "hidden = [64, 32]", 'name = "gmp"\nbudget = 0.1'),
    "lenet-taylor": ("fashion-mnist", "lenet5", "", 'name = "taylor"\nbudget = 0.3'),
    "lomp": ("mnist", "mlp", "hidden = [64, 32]", 'name = "lomp"\nbudget = 0.1\nl1 = 0.0001'),
    "scratch": ("mnist", "mlp", "hidden = [64, 32]", 'name = "scratch"\nbudget = 0.25'),
}


def main(out: Path) -> None:
    summary = {}
    for name, (ds, model, hidden, method) in CASES.items():
        cfg = parse_config(BASE.format(ds=ds, model=model, hidden=hidden, method=method, data=DATA))
        try:
            r = run(cfg, out / name, quiet=True)
        except Exception as exc:  # noqa: BLE001  (a run's failure is an outcome to compare too)
            summary[name] = {"error": str(exc)}
            continue
        metrics = (out / name / "metrics.jsonl").read_text()
        summary[name] = {
            k: r[k]
            for k in ("test_accuracy", "test_loss", "params_after", "macs_after", "test_accuracy_before_compaction")
        }
        summary[name]["kept"] = r.get("kept", r.get("neurons_kept"))
        summary[name]["losses"] = [json.loads(row)["loss"] for row in metrics.splitlines()]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("done", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

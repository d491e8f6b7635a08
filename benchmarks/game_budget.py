"""The budgeted game (label ``game-budget``) in sweep directories: does it land on every budget, and
how does it compare with every other method at that budget?

    equiprune sweep configs/sweeps/mnist_mlp_neurons.toml --out runs/sweep-mnist --jobs 2 --only game-budget
    python benchmarks/game_budget.py runs/sweep-mnist [runs/sweep-lenet300 ...]

For each directory and budget: the seeds run, how many kept exactly round(budget · players) (one
per layer at least), what the fit to the budget changed (players removed / restored, mean over the
seeds), the test accuracy, and the verdict against each other method stored at that budget (the
reports' tie rule); failed runs are counted. The last line is
``budget_landed=L/N failed=F losses=X`` over all directories.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from equiprune.experiments.comparison import TIE_RULE, judge, mean_std
from equiprune.experiments.store import ResultStore

LABEL = "game-budget"


def summarise(sweep_dir: Path) -> tuple[int, int, int, int]:
    with ResultStore(sweep_dir / "results.sqlite") as store:
        rows = store.rows()
    ours = [r for r in rows if r["label"] == LABEL]
    failed = sum(r["status"] != "finished" for r in ours)
    finished = [r for r in ours if r["status"] == "finished"]
    others: dict[tuple[float, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["label"] != LABEL and r["status"] == "finished" and r["budget"] is not None:
            others[(r["budget"], r["label"])].append(r["results"]["test_accuracy"])
    print(f"\n## {sweep_dir}: {len(ours)} {LABEL} runs, {failed} failed; {TIE_RULE}\n")
    print("| budget | seeds | landed | fit removed / restored | test accuracy | against the others at this budget |")
    print("|---|---|---|---|---|---|")
    landed = losses = 0
    for budget in sorted({r["budget"] for r in finished}):
        runs = [r["results"] for r in finished if r["budget"] == budget]
        players = sum(runs[0]["total"].values())
        target = min(players, max(len(runs[0]["total"]), round(budget * players)))
        exact = sum(sum(r["kept"].values()) == target for r in runs)
        landed += exact
        fits = [r["budget_fit"] for r in runs if r.get("budget_fit")]
        removed = statistics.fmean(f["removed_by_fit"] for f in fits) if fits else float("nan")
        restored = statistics.fmean(f["restored_by_fit"] for f in fits) if fits else float("nan")
        mean, std = mean_std([r["test_accuracy"] for r in runs])
        verdicts = []
        for (b, label), accs in sorted(others.items()):
            if b != budget:
                continue
            o_mean, o_std = mean_std(accs)
            verdict = judge(mean, std, o_mean, o_std)
            losses += verdict == "loss"
            verdicts.append(f"{label} {100 * (mean - o_mean):+.2f} ({verdict})")
        print(
            f"| {100 * budget:g}% | {len(runs)} | {exact}/{len(runs)} at {target} players | {removed:.1f} / "
            f"{restored:.1f} | {100 * mean:.2f} ± {100 * std:.2f} | {', '.join(verdicts) or '–'} |"
        )
    return landed, len(finished), failed, losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep directories (equiprune sweep --out)")
    args = p.parse_args()
    totals = [summarise(d) for d in args.sweeps]
    landed, runs, failed, losses = (sum(t[i] for t in totals) for i in range(4))
    print(f"\nbudget_landed={landed}/{runs} failed={failed} losses={losses}")


if __name__ == "__main__":
    main()

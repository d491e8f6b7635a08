"""The selection-plateau study's figures: accuracy per scorer and sparsity over seeds, each scorer's
escape from the plateau (the rank-monotone scorers' accuracy) by the tie rule, the selections'
overlaps, as JSON, a Markdown page and two plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from equiprune.core.scorers import KAPPAS, Scorer
from equiprune.experiments.comparison import TIE_RULE, judge, mean_std
from equiprune.experiments.figures import save_png, subplots


def _plateau_per_seed(rows: list[dict[str, Any]], key: str) -> dict[tuple, float]:
    """(players, sparsity, seed) -> the mean accuracy of the rank-monotone (κ = 0) scorers there."""
    acc = defaultdict(list)
    for r in rows:
        if r["kappa"] == 0:
            acc[(r["players"], r["sparsity"], r["seed"])].append(r[key])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def summarise(per_seed: list[dict[str, Any]], scorers: dict[str, Scorer], finetune_steps: int) -> dict[str, Any]:
    rows = [r for seed in per_seed for r in seed["rows"]]
    cells = defaultdict(list)
    for r in rows:
        cells[(r["players"], r["scorer"], r["sparsity"])].append(r)
    plateau = {key: _plateau_per_seed(rows, key) for key in ("test_accuracy_cut", "test_accuracy_finetuned")}
    table = []
    order = {name: i for i, name in enumerate(scorers)}
    for (kind, name, sparsity), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        entry = {"players": kind, "scorer": name, "kappa": scorers[name].kappa, "sparsity": sparsity, "seeds": len(rs)}
        for key in ("test_accuracy_cut", "test_accuracy_finetuned"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std([r[key] for r in rs])
            base = [plateau[key].get((kind, sparsity, r["seed"])) for r in rs]
            if None not in base:  # the plateau: the κ = 0 scorers' accuracy on the same seeds
                b_mean, b_std = mean_std(base)
                entry[f"{key}_escape"] = entry[f"{key}_mean"] - b_mean
                # one seed has no spread to judge a difference by
                entry[f"{key}_verdict"] = (
                    judge(entry[f"{key}_mean"], entry[f"{key}_std"], b_mean, b_std) if len(rs) > 1 else "one seed"
                )
        table.append(entry)
    overlap = defaultdict(list)
    for seed in per_seed:
        for o in seed["overlaps"]:
            overlap[(o["players"], o["sparsity"])].append(o)
    overlaps = []
    for (kind, sparsity), os_ in sorted(overlap.items()):
        names = os_[0]["scorers"]
        n = len(names)
        mean = [[sum(o["jaccard"][i][j] for o in os_) / len(os_) for j in range(n)] for i in range(n)]
        overlaps.append({"players": kind, "sparsity": sparsity, "scorers": names, "jaccard": mean})
    monotone = [
        o["jaccard"][i][j]
        for seed in per_seed
        for o in seed["overlaps"]
        for i, a in enumerate(o["scorers"])
        for j, b in enumerate(o["scorers"])
        if scorers[a].kappa == 0 and scorers[b].kappa == 0
    ]
    return {
        "dense_test_accuracy": {str(s["seed"]): s["dense_test_accuracy"] for s in per_seed},
        "finetune_steps": finetune_steps,
        "scorers": {
            name: {"kappa": s.kappa, "class": KAPPAS[s.kappa], "description": s.description}
            for name, s in scorers.items()
        },  # fmt: skip
        "rank_monotone_min_overlap": min(monotone) if monotone else None,
        "table": table,
        "overlaps": overlaps,
        "rows": rows,
    }


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def render(result: dict[str, Any]) -> str:
    lines = ["# The selection plateau", ""]
    dense = ", ".join(f"seed {k}: {100 * v:.2f}%" for k, v in result["dense_test_accuracy"].items())
    lines += [f"Dense test accuracy: {dense}. Fine-tuning: {result['finetune_steps']} steps for every cut.", ""]
    lo = result["rank_monotone_min_overlap"]
    if lo is not None:
        lines += [f"Overlap (Jaccard) of the selections of any two rank-monotone scorers, lowest over every "
                  f"seed, kind and sparsity: {lo:.4f} (1: the very same players).", ""]  # fmt: skip
    lines += [f"Escape: a scorer's mean accuracy minus the plateau's (the κ = 0 scorers'), judged by the tie "
              f"rule: {TIE_RULE}.", ""]  # fmt: skip
    by_kind = defaultdict(list)
    for e in result["table"]:
        by_kind[e["players"]].append(e)
    for kind, entries in by_kind.items():
        sparsities = sorted({e["sparsity"] for e in entries})
        for key, title in (("test_accuracy_finetuned", "after fine-tuning"), ("test_accuracy_cut", "as cut")):
            lines += [f"## {kind} players, test accuracy (%) {title}", ""]
            lines += ["| scorer | κ | " + " | ".join(f"S = {s:g}" for s in sparsities) + " |"]
            lines += ["|---|---|" + "---|" * len(sparsities)]
            for name in dict.fromkeys(e["scorer"] for e in entries):
                cells = []
                for s in sparsities:
                    e = next(x for x in entries if x["scorer"] == name and x["sparsity"] == s)
                    cell = _pct(e[f"{key}_mean"], e[f"{key}_std"])
                    if f"{key}_escape" in e and e["kappa"] != 0:
                        cell += f" ({100 * e[f'{key}_escape']:+.2f}, {e[f'{key}_verdict']})"
                    cells.append(cell)
                lines.append(f"| {name} | {result['scorers'][name]['kappa']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> None:
    kinds = list(dict.fromkeys(e["players"] for e in result["table"]))
    stages = (
        ("test_accuracy_finetuned", f"after {result['finetune_steps']} fine-tuning steps"),
        ("test_accuracy_cut", "as cut"),
    )
    fig, axes = subplots(2, len(kinds), figsize=(6 * len(kinds), 8.4), squeeze=False)
    styles = {0: "-", 1: "--", 2: ":", "control": "-.", "gradient": (0, (1, 1))}
    for col, kind in enumerate(kinds):
        entries = [e for e in result["table"] if e["players"] == kind]
        for row, (key, stage) in enumerate(stages):
            ax = axes[row][col]
            for name in dict.fromkeys(e["scorer"] for e in entries):
                pts = sorted((e["sparsity"], e[f"{key}_mean"]) for e in entries if e["scorer"] == name)
                kappa = result["scorers"][name]["kappa"]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, ls=styles.get(kappa, "-"),
                        label=f"{name} (κ {kappa})")  # fmt: skip
            ax.set_title(f"{kind} players, {stage}", fontsize=9)
            ax.set_xlabel("sparsity (share removed)")
            ax.set_ylabel("test accuracy (mean over seeds)")
            ax.legend(fontsize=7)
    save_png(fig, out / "plateau_accuracy.png")

    overlaps = result["overlaps"]
    sparsities = sorted({o["sparsity"] for o in overlaps})
    fig, axes = subplots(len(kinds), len(sparsities), figsize=(3.6 * len(sparsities), 3.4 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, s in enumerate(sparsities):
            o = next(x for x in overlaps if x["players"] == kind and x["sparsity"] == s)
            ax = axes[i][j]
            ax.imshow(o["jaccard"], vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(o["scorers"])), o["scorers"], rotation=90, fontsize=6)
            ax.set_yticks(range(len(o["scorers"])), o["scorers"], fontsize=6)
            ax.set_title(f"{kind}, S = {s:g}: Jaccard", fontsize=8)
    save_png(fig, out / "overlap.png")

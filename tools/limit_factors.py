"""The factors study of paper 002: does the one-shot pruning limit fall as the weights grow and the
loss sharpens? One base configuration is trained once per ℓ1 strength λ (a larger λ shrinks the
weights and changes the curvature), and ``equiprune limit`` predicts and measures each network's
limit. Writes ``OUT/l1=<λ>/`` (each case's configuration, run and limit.json), ``OUT/factors.json``
(one row per case: λ, the weights' mean |w|, the Hessian's λ_max and tr(H)/D, the predicted and
measured limits, and Spearman's rank correlation of each factor with the measured limit) and
``OUT/factors.png``.

    python tools/limit_factors.py configs/limit/fc_mnist_factors.toml --l1 0 2e-5 5e-5 1e-4 --out runs/limit-factors

ℓ1 moves both factors at once, so the study shows whether they go with the limit as the paper
says, not the effect of either alone. Repeating the command resumes: finished cases are kept.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.core.scorers import mean_ranks
from equiprune.experiments.figures import save_png, subplots
from equiprune.experiments.limit_study import limit


def case_config(base: Path, l1: float, out: Path) -> Path:
    """A copy of ``base`` with ``method.l1`` set to ``l1``, written where the case's results go."""
    text = base.read_text()
    pattern = re.compile(r"^(\s*l1\s*=\s*)[^#\n]*", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{base}: expected exactly one `l1 = ...` line in [method] to vary")
    path = out / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pattern.sub(lambda m: f"{m.group(1)}{l1!r}  ", text))
    return path


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None when either side is constant."""
    ra, rb = (mean_ranks(torch.tensor(v, dtype=torch.float64)).tolist() for v in (a, b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / (va * vb) ** 0.5


def study(base: Path, l1s: list[float], out: Path, quiet: bool = False) -> dict[str, Any]:
    rows = []
    for l1 in l1s:
        case = out / f"l1={l1!r}"
        done = case / "limit.json"
        result = (
            json.loads(done.read_text()) if done.is_file() else limit(case_config(base, l1, case), case, quiet=quiet)
        )
        sp = result["spectrum"]
        rows.append({
            "l1": l1,
            "mean_abs_weight": result["weight_magnitude"]["mean_abs"],
            "lambda_max": sp["lambda_max"],
            "mean_eigenvalue": sp["trace"] / sp["dim"],
            "predicted_ratio": result["predicted_ratio"],
            "measured_ratio": result["measured_ratio"],
            "dense_test_accuracy": result["dense_test_accuracy"],
        })  # fmt: skip
    measured = [r["measured_ratio"] for r in rows]
    factors = ("mean_abs_weight", "lambda_max", "mean_eigenvalue")
    correlation = {f: spearman([r[f] for r in rows], measured) for f in factors}
    return {"base": str(base), "rows": rows, "spearman_with_measured_ratio": correlation}


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    fig, axes = subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, (key, label) in zip(axes, (("mean_abs_weight", "mean |w|"), ("lambda_max", "λ_max of the Hessian"),
                                       ("mean_eigenvalue", "tr(H)/D"))):  # fmt: skip
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["measured_ratio"] for r in rows], "o-", label="measured limit")
        ax.plot(xs, [r["predicted_ratio"] for r in rows], "s--", label="predicted limit")
        for r, x in zip(rows, xs):
            ax.annotate(f"λ₁={r['l1']:g}", (x, r["measured_ratio"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        rho = result["spearman_with_measured_ratio"][key]
        ax.set_xlabel(label)
        ax.set_title("Spearman ρ " + ("–" if rho is None else f"{rho:+.2f}"), fontsize=9)
    axes[0].set_ylabel("pruning ratio (share removed)")
    axes[0].legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="a limit configuration whose [method] has an `l1 = ...` line")
    p.add_argument("--l1", type=float, nargs="+", required=True, help="the ℓ1 strengths, one case each")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if len(args.l1) < 3:
        p.error("--l1: give at least three strengths, or no rank correlation means anything")
    result = study(args.base, args.l1, args.out, args.quiet)
    io.write_json(args.out / "factors.json", result)
    plot(result, args.out / "factors.png")
    print("| λ₁ | mean abs weight | λ_max | tr(H)/D | predicted | measured |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['l1']:g} | {r['mean_abs_weight']:.4g} | {r['lambda_max']:.4g} | {r['mean_eigenvalue']:.3g} "
              f"| {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} |")  # fmt: skip
    rhos = result["spearman_with_measured_ratio"].items()
    print("Spearman ρ with the measured limit:", ", ".join(f"{k} {'–' if v is None else f'{v:+.2f}'}" for k, v in rhos))


if __name__ == "__main__":
    main()

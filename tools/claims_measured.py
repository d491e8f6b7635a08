"""The claim rows of papers 002 (the pruning limit: `equiprune limit`, the factors study, the weight
sweep, the SLQ benchmark) and 004 (the selection plateau: `equiprune plateau`), read from their
result files; tools/claims.py puts them on the page."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from claims_common import CPU_FLOOR, Claim, _holds, _pct

from equiprune.experiments.comparison import CPU_SHIFT, judge

#: |predicted − measured| pruning limit, at most this: the prediction holds.
LIMIT_MAX_ERROR = 0.02


# --- paper 002, from `equiprune limit` ---------------------------------------------------------------


def _case(result: dict[str, Any]) -> str:
    case = result.get("case")
    if not case:
        return Path(result["source"]).name
    model = case["model"]
    shape = f" {'-'.join(map(str, model['hidden']))}" if model.get("hidden") else ""
    return f"{model['name']}{shape} on {case['dataset']}"


def _limit_flags(result: dict[str, Any]) -> str:
    """A run directory carries no [limit] table: the flags that give the analysis its settings again."""
    if str(result["source"]).endswith(".toml") or "settings" not in result:
        return ""
    st = result["settings"]
    samples = f" --hessian-samples {st['hessian_samples']}" if st.get("hessian_samples") else ""
    return f"{samples} --probes {st['probes']} --iters {st['iters']}"


def limit_claims(limit_dirs: list[Path]) -> list[Claim]:
    results = [(d, json.loads((d / "limit.json").read_text())) for d in limit_dirs]
    figure = "; ".join(
        f"{_case(r)}: predicted {r['predicted_ratio']:.3f}, measured {r['measured_ratio']:.3f}" for _, r in results
    )
    commands = ", ".join(f"`equiprune limit {r['source']} --out {d}{_limit_flags(r)}`" for d, r in results)
    worst = max((r["prediction_error"] for _, r in results), default=None)
    prediction = Claim(
        "002",
        "the pruning limit predicted from the Gaussian width of the loss sublevel set matches the measured one",
        figure or "–",
        commands or "–",
        "not measured yet" if worst is None else _holds(worst <= LIMIT_MAX_ERROR),
        "no `equiprune limit` directory given"
        if worst is None
        else f"holds when predicted and measured differ by at most {100 * LIMIT_MAX_ERROR:g} points on every case "
        f"(worst "
        f"{100 * worst:.1f}); the paper's cases are on CIFAR-10/100, which this machine does not have",
    )
    return [prediction]


#: A factor "goes with" the limit when Spearman's ρ of it against the measured limit is at most this.
FACTOR_MIN_CORRELATION = -0.8


def factors_claim(factors_dir: Path | None) -> Claim:
    """Weight magnitude and sharpness against the measured limit (tools/limit_factors.py)."""
    text = (
        "weight magnitude and loss sharpness are what set the pruning limit: larger weights and a sharper loss, "
        "a lower limit"
    )
    if factors_dir is None:
        return Claim("002", text, "–", "–", "not measured yet", "no factors study given (`tools/limit_factors.py`)")
    result = json.loads((factors_dir / "factors.json").read_text())
    rows, rho = result["rows"], result["spearman_with_measured_ratio"]
    figure = (
        "; ".join(
            f"λ₁ {r['l1']:g}: mean |w| {r['mean_abs_weight']:.3g}, λ_max {r['lambda_max']:.3g}, measured limit "
            f"{r['measured_ratio']:.3f}"
            for r in rows
        )
        + "; Spearman ρ with the limit: "
        + ", ".join(f"{k} {'–' if v is None else f'{v:+.2f}'}" for k, v in rho.items())
    )
    l1s = " ".join(f"{r['l1']:g}" for r in rows)
    command = f"`python tools/limit_factors.py {result['base']} --l1 {l1s} --out {factors_dir}`"

    def goes_with(key: str) -> bool:
        return rho[key] is not None and rho[key] <= FACTOR_MIN_CORRELATION

    held = [name for key, name in (("mean_abs_weight", "magnitude"), ("lambda_max", "sharpness")) if goes_with(key)]
    why = (f"holds when both mean |w| and λ_max fall in rank as the limit rises (ρ ≤ {FACTOR_MIN_CORRELATION}); "
           f"{' and '.join(held) or 'neither'} does. ℓ1 moves both factors at once, so this is their association "
           "with the limit, not the effect of either alone")  # fmt: skip
    return Claim("002", text, figure, command, _holds(len(held) == 2), why)


def lomp_claim(sweep_dir: Path | None) -> Claim:
    """LOMP (one-shot, no retraining; and with the sweep's fine-tuning) against iterative magnitude
    pruning, budget by budget, by the sweeps' tie rule."""
    text = (
        "one-shot global magnitude pruning after ℓ1 training (LOMP) is competitive with or better than iterative "
        "pruning"
    )
    if sweep_dir is None:
        return Claim("002", text, "–", "–", "not measured yet", "no weight sweep with `lomp` and `imp` given")
    rows = {(r["method"], r["budget"]): r for r in json.loads((sweep_dir / "frontier.json").read_text())}
    budgets = sorted(b for m, b in rows if m == "imp" and b is not None)
    parts, verdicts = [], {}
    for label in ("lomp-one-shot", "lomp"):
        for b in budgets:
            ours, imp = rows.get((label, b)), rows[("imp", b)]
            if ours is None:
                continue
            v = judge(ours["test_accuracy_mean"], ours["test_accuracy_std"], imp["test_accuracy_mean"],
                      imp["test_accuracy_std"], CPU_SHIFT)  # fmt: skip
            verdicts.setdefault(label, []).append(v)
            parts.append(f"`{label}` at {_pct(b)} of the weights: {100 * ours['test_accuracy_mean']:.2f} ± "
                         f"{100 * ours['test_accuracy_std']:.2f} against imp {100 * imp['test_accuracy_mean']:.2f} ± "
                         f"{100 * imp['test_accuracy_std']:.2f} ({v})")  # fmt: skip
    if "lomp-one-shot" not in verdicts:
        return Claim("002", text, "–", "–", "not measured yet", f"{sweep_dir} has no `lomp-one-shot` rows")
    paper = verdicts["lomp-one-shot"]
    why = (f"the paper's LOMP (no retraining) {paper.count('win')} wins, {paper.count('tie')} ties, "
           f"{paper.count('loss')} losses over {len(paper)} budgets; holds with no loss. With the sweep's 8 epochs "
           f"of fine-tuning: {', '.join(verdicts.get('lomp', [])) or 'not run'}. A tie: the means differ by at most "
           f"the larger standard deviation {CPU_FLOOR}")  # fmt: skip
    command = (
        f"`equiprune sweep configs/sweeps/mnist_mlp_weights.toml --out {sweep_dir}` (labels imp, lomp, lomp-one-shot)"
    )
    return Claim("002", text, "; ".join(parts), command, _holds("loss" not in paper), why)


def slq_claim(bench_file: Path | None) -> Claim:
    """Our SLQ against PyHessian's, from every slq_vs_pyhessian record in a benchmark results file."""
    text = "the improved SLQ estimates a large Hessian's spectrum efficiently"
    records = []
    if bench_file is not None:
        lines = bench_file.read_text().splitlines()
        records = [r for r in map(json.loads, filter(str.strip, lines)) if r["benchmark"] == "slq_vs_pyhessian"]
    if not records:
        return Claim("002", text, "–", "–", "not measured yet", "no `benchmarks/slq_vs_pyhessian.py` record given")
    ratios = sorted(r["figures"]["time_ratio"]["median"] for r in records)
    worst_l1 = max(r["figures"]["density_l1"] for r in records)
    median = statistics.median(ratios)
    figure = (f"equiprune's time over PyHessian's, same probes and steps: median {median:.3f} over {len(ratios)} runs "
              f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}); densities apart by ∫|Δp| ≤ {worst_l1:.4f}")  # fmt: skip
    why = ("holds when every run is faster than PyHessian with the same density (∫|Δp| < 0.01); the paper's own "
           "speed-up is over a plain Lanczos without its improvements, which is not run here")  # fmt: skip
    ok = ratios[-1] < 1 and worst_l1 < 0.01
    return Claim(
        "002", text, figure, f"`python benchmarks/slq_vs_pyhessian.py --results {bench_file}`", _holds(ok), why
    )


# --- paper 004, from `equiprune plateau` ------------------------------------------------------------

PLATEAU_CLAIMS = (
    ("plateau", "every rank-monotone scorer selects the same weights and reaches the same accuracy at a given "
     "sparsity (the selection plateau)"),
    ("smooth", "smooth non-monotone features (κ = 1) escape the plateau at S ≈ 0.7 "
     "(+6.6 points on ViT-Small/CIFAR-10)"),
    ("raw", "at S = 0.8 only raw features with high-frequency wiggle (κ = 2) escape (+2.6 points)"),
    ("control", "a fake non-monotone control does not escape"),
    ("bump", "a hand-made Gaussian bump barely escapes (+0.006) against a chaos-derived feature (+0.046)"),
)  # fmt: skip


def _escapes(table, kappa, sparsity) -> list[dict[str, Any]]:
    return [
        e for e in table if e["kappa"] == kappa and e["sparsity"] == sparsity and "test_accuracy_finetuned_escape" in e
    ]


def _wins(entries) -> list[dict[str, Any]]:
    return [e for e in entries if e["test_accuracy_finetuned_verdict"] == "win"]


def _fmt_escapes(entries) -> str:
    return ", ".join(f"{e['scorer']} ({e['players']}) {100 * e['test_accuracy_finetuned_escape']:+.2f} "
                     f"({e['test_accuracy_finetuned_verdict']})" for e in entries) or "–"  # fmt: skip


def _plateau_verdicts(result: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Per claim, our figure in one study and whether it holds there."""
    t = result["table"]
    lo = result["rank_monotone_min_overlap"]
    spread = 0.0
    for e in t:
        if e["kappa"] == 0:
            same = [x["test_accuracy_finetuned_mean"] for x in t if x["kappa"] == 0 and x["players"] == e["players"]
                    and x["sparsity"] == e["sparsity"]]  # fmt: skip
            spread = max(spread, max(same) - min(same))
    out = {"plateau": (f"lowest overlap of two rank-monotone selections {lo:.4f}; their accuracies differ by at most "
                       f"{100 * spread:.2f} points", lo == 1.0 and spread == 0.0)}  # fmt: skip
    smooth7, raw8, smooth8 = _escapes(t, 1, 0.7), _escapes(t, 2, 0.8), _escapes(t, 1, 0.8)
    out["smooth"] = (f"at S = 0.7: {_fmt_escapes(smooth7)}", bool(_wins(smooth7)))
    out["raw"] = (f"at S = 0.8: κ = 2 {_fmt_escapes(raw8)}; κ = 1 {_fmt_escapes(smooth8)}",
                  bool(_wins(raw8)) and not _wins(smooth8))  # fmt: skip
    control = [e for e in t if e["kappa"] == "control" and "test_accuracy_finetuned_escape" in e]
    best = max(control, key=lambda e: e["test_accuracy_finetuned_escape"], default=None)
    figure = f"best: {_fmt_escapes([best])} at S = {best['sparsity']:g}" if best else "–"
    out["control"] = (figure, not _wins(control))
    pairs = []
    for sparsity in (0.7, 0.8):
        for kind in dict.fromkeys(e["players"] for e in t):
            bump = next(
                (e for e in t if e["scorer"] == "bump" and e["sparsity"] == sparsity and e["players"] == kind), None
            )
            chaos = next(
                (e for e in t if e["scorer"] == "chaos" and e["sparsity"] == sparsity and e["players"] == kind), None
            )
            if bump and chaos:
                pairs.append((sparsity, kind, bump, chaos))
    figure = "; ".join(f"S = {s:g}, {k}: bump {100 * b['test_accuracy_finetuned_escape']:+.2f}, chaos "
                       f"{100 * c['test_accuracy_finetuned_escape']:+.2f}" for s, k, b, c in pairs)  # fmt: skip
    held = bool(pairs) and all(
        judge(c["test_accuracy_finetuned_mean"], c["test_accuracy_finetuned_std"], b["test_accuracy_finetuned_mean"],
              b["test_accuracy_finetuned_std"]) == "win" for _, _, b, c in pairs)  # fmt: skip
    out["bump"] = (figure or "–", held)
    return out


def plateau_claims(plateau_dirs: list[Path]) -> list[Claim]:
    if not plateau_dirs:
        return [
            Claim(
                "004",
                "the paper's headline claims",
                "–",
                "–",
                "not measured yet",
                "no `equiprune plateau` directory given",
            )
        ]
    studies = [(d, json.loads((d / "plateau.json").read_text())) for d in plateau_dirs]
    command = ", ".join(f"`equiprune plateau {r['source']} --out {d}`" for d, r in studies)
    claims = []
    for key, text in PLATEAU_CLAIMS:
        per = [(d, _plateau_verdicts(r)[key]) for d, r in studies]
        figure = "; ".join(f"{d.name}: {fig}" for d, (fig, _) in per)
        held = all(ok for _, (_, ok) in per)
        why = ("after the same fine-tuning for every cut, a difference from the plateau (the κ = 0 scorers) counts "
               "when it exceeds the larger standard deviation over seeds; holds only if it holds in every study; "
               "the paper's ViT-Small/CIFAR-10 is `configs/plateau/vit_small_cifar10.toml`, not run here "
               "(no CIFAR, no GPU)")  # fmt: skip
        claims.append(Claim("004", text, figure, command, _holds(held), why))
    return claims

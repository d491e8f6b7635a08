"""The claim rows of paper 001 (lottery tickets with concave mask regularisers), read from
`equiprune lottery` studies (lottery.json) and an `equiprune mask-convex` directory; tools/claims.py
puts them on the page."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from claims_common import CPU_FLOOR, Claim, _holds

from equiprune.config import load_config
from equiprune.data import DATASETS
from equiprune.experiments.comparison import CPU_SHIFT, judge
from equiprune.experiments.hooks import no_better_than_chance

MODERATE, HIGH = (0.2,), (0.05, 0.02)  # fractions of the weights left where the paper makes its claims
#: When two tickets tie: what another CPU moves their means by counts as no difference either.
TIE_RULE = f"a tie: the means differ by at most the larger standard deviation over 3 seeds {CPU_FLOOR}"
#: The convex check: the log mask's test accuracy may be at most this far below the subgradient's.
CONVEX_ACCURACY_SLACK = 0.005


def _summary(study: Path) -> dict[tuple[str, str, float], dict]:
    """(label, variant, rounded kept fraction) -> that cell's mean and std over seeds."""
    rows = json.loads((study / "lottery.json").read_text())["summary"]
    return {(r["label"], r["variant"], round(r["kept_fraction"], 4)): r for r in rows}


def _command(study: Path) -> str:
    name = json.loads((study / "lottery.json").read_text())["name"].replace("-lottery", "").replace("-", "_")
    return f"`equiprune lottery configs/lottery/{name}.toml --out {study} --jobs 2`"


def _compare(studies, ours, theirs, fractions, variants=("ticket", "ticket")):
    parts, verdicts = [], []
    for study in studies:
        cells = _summary(study)
        for f in fractions:
            a, b = cells.get((ours, variants[0], f)), cells.get((theirs, variants[1], f))
            if a is None or b is None:
                continue
            v = judge(a["accuracy_mean"], a["accuracy_std"], b["accuracy_mean"], b["accuracy_std"], CPU_SHIFT)
            verdicts.append(v)
            parts.append(f"{study.name}, {100 * f:g}% left: {ours} {variants[0]} {100 * a['accuracy_mean']:.2f} ± "
                         f"{100 * a['accuracy_std']:.2f} against {theirs} {variants[1]} {100 * b['accuracy_mean']:.2f}"
                         f" ± {100 * b['accuracy_std']:.2f} ({v})")  # fmt: skip
    return parts, verdicts


def _strengths(studies) -> str:
    """The λ each study gave log and ℓ1, read from their seed-0 searches: equal λ is not equal
    strength (at m = 0.5 log's slope is ε/(ε + m), a sixth of ℓ1's at ε 0.1)."""
    said = []
    for study in studies:
        configs = {label: study / label / "seed0" / "search" / "config.toml" for label in ("log", "l1")}
        given = {label: load_config(c).method.settings for label, c in configs.items() if c.is_file()}
        lam = {label: settings.lam for label, settings in given.items() if hasattr(settings, "lam")}
        if len(lam) == 2:
            said.append(f"{study.name}: λ log {lam['log']:.3g}, ℓ1 {lam['l1']:.3g}")
    shape = " (ℓ1's λ·ε/(ε + 0.5): the same pull on the masks at their start, so that the two differ in shape alone)"
    return "; ".join(said) + shape if said else "the studies' λ unknown"


def _stalled(studies, labels) -> str:
    """Which of ``labels``' searches had an epoch no better than a uniform guess, read from their
    metrics with the run's own test (so that runs written before the test widened count alike):
    a round that starts at chance picks its next ticket by masks that moved while the network did
    not learn."""
    said = []
    for study in studies:
        for label in labels:
            searches = sorted(study.glob(f"{label}/seed*/search"))
            stalled = [s for s in searches if _has_stalled_epoch(s)]
            if stalled:
                said.append(f"{study.name} {label} {len(stalled)} of {len(searches)}")
    if not said:
        return ""
    return ("; searches with an epoch no better than a uniform guess (the round's ticket chosen by masks that moved "
            f"while the network did not learn): {', '.join(said)}")  # fmt: skip


@functools.cache  # one read per search: the rows comparing log with IMP and with ℓ1 both ask
def _has_stalled_epoch(search: Path) -> bool:
    if not (search / "metrics.jsonl").is_file():  # an unfinished search, or none
        return False
    classes = DATASETS.get(load_config(search / "config.toml").data.dataset).num_classes
    rows = [json.loads(line) for line in (search / "metrics.jsonl").read_text().splitlines()]
    return any(no_better_than_chance(r, classes, "") for r in rows if r["phase"] == "prune")


def _row(text, studies, parts, verdicts, ok, why) -> Claim:
    if not verdicts:
        return Claim("001", text, "–", "–", "not measured yet", "no lottery study with these methods given")
    tally = f"{verdicts.count('win')} wins, {verdicts.count('tie')} ties, {verdicts.count('loss')} losses; "
    return Claim("001", text, "; ".join(parts), ", ".join(_command(s) for s in studies), _holds(ok), tally + why)


def lottery_claims(studies: list[Path]) -> list[Claim]:
    claims = []
    stalled = _stalled(studies, ("log", "imp"))
    parts, v = _compare(studies, "log", "imp", MODERATE)
    claims.append(_row("the log-regularised ticket is comparable to IMP's at moderate sparsity (20% of weights left)",
                       studies, parts, v, bool(v) and "loss" not in v,
                       f"holds with no loss ({TIE_RULE}){stalled}"))  # fmt: skip
    parts, v = _compare(studies, "log", "imp", HIGH)
    claims.append(_row("the log-regularised ticket outperforms IMP's at high sparsity (5% and 2% of weights left)",
                       studies, parts, v, "win" in v and "loss" not in v,
                       f"holds only with a win and no loss ({TIE_RULE}){stalled}"))  # fmt: skip
    parts, v = _compare(studies, "log", "l1", MODERATE + HIGH)
    claims.append(_row("the log regulariser on the mask finds better tickets than ℓ1 on the mask", studies, parts, v,
                       "win" in v and "loss" not in v,
                       f"holds only with a win and no loss ({TIE_RULE}); {_strengths(studies)}"
                       f"{_stalled(studies, ('log', 'l1'))}"))  # fmt: skip
    parts, v = [], []
    for label in ("log", "imp"):
        for baseline in ("reinit", "random"):
            p, w = _compare(studies, label, label, MODERATE + HIGH, ("ticket", baseline))
            parts += p
            v += w
    claims.append(_row("the tickets are winning tickets: above the same mask re-initialised and a random mask",
                       studies, parts, v, bool(v) and set(v) == {"win"},
                       f"holds only when every comparison is a win ({TIE_RULE})"))  # fmt: skip
    return claims


def threshold_claim(threshold_study: Path | None, percentage_studies: list[Path]) -> Claim:
    """Each threshold point against the percentage way's log tickets interpolated (in log fraction)
    at the fraction the threshold landed on."""
    text = "pruning the learned mask by a threshold gives better tickets than a fixed percentage at high sparsity"
    if threshold_study is None or not percentage_studies:
        return Claim("001", text, "–", "–", "not measured yet", "no threshold study and percentage study given")
    curve = sorted((f, r) for (label, variant, f), r in _summary(percentage_studies[0]).items()
                   if label == "log" and variant == "ticket")  # fmt: skip
    parts, verdicts = [], []
    for (label, variant, f), r in sorted(_summary(threshold_study).items()):
        lower = [c for c in curve if c[0] <= f]
        upper = [c for c in curve if c[0] >= f]
        if variant != "ticket" or not lower or not upper:
            parts.append(f"{label}: {100 * f:.2f}% left, outside the percentage curve")
            continue
        (f0, a), (f1, b) = lower[-1], upper[0]
        t = 0.0 if f1 == f0 else (math.log(f) - math.log(f0)) / (math.log(f1) - math.log(f0))
        mean = a["accuracy_mean"] + t * (b["accuracy_mean"] - a["accuracy_mean"])
        std = max(a["accuracy_std"], b["accuracy_std"])
        v = judge(r["accuracy_mean"], r["accuracy_std"], mean, std, CPU_SHIFT)
        verdicts.append(v)
        parts.append(f"{label}: {100 * f:.2f}% left, {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} "
                     f"against percentage {100 * mean:.2f} ({v})")  # fmt: skip
    ok = "win" in verdicts and "loss" not in verdicts
    why = (f"{verdicts.count('win')} wins, {verdicts.count('tie')} ties, {verdicts.count('loss')} losses against the "
           f"percentage way's log tickets at the same fraction (interpolated in log fraction; {TIE_RULE}); holds only "
           "with a win and no loss")  # fmt: skip
    command = f"{_command(threshold_study)} beside {_command(percentage_studies[0])}"
    return Claim("001", text, "; ".join(parts), command, _holds(ok), why)


def convex_claim(convex_dir: Path | None) -> Claim:
    text = (
        "on a convex problem (logistic regression), the log-regularised mask gives sparse accurate solutions "
        "where ℓ1's subgradient oscillates"
    )
    if convex_dir is None:
        return Claim("001", text, "–", "–", "not measured yet", "no `equiprune mask-convex` directory given")
    rows = {r["way"]: r for r in json.loads((convex_dir / "mask_convex.json").read_text())["rows"]}
    log, sub = rows["log-mask"], rows["l1-subgradient"]
    figure = "; ".join(f"{w}: test {100 * r['test_accuracy']:.2f}%, {100 * r['sparsity']:.1f}% sparse, "
                       f"{100 * r['exact_zeros']:.1f}% exactly zero, {r['flips_in_last_fifth']} sign flips in the "
                       "last fifth" for w, r in rows.items())  # fmt: skip
    ok = (log["exact_zeros"] >= 0.5 and sub["flips_in_last_fifth"] > 10 * (log["flips_in_last_fifth"] + 1)
          and log["test_accuracy"] >= sub["test_accuracy"] - CONVEX_ACCURACY_SLACK
          and log["sparsity"] >= sub["sparsity"])  # fmt: skip
    why = (
        "holds when the log mask is at least as sparse, has at least half its weights exactly zero, its sign "
        "flips are a tenth of the subgradient's or fewer, and its test accuracy is within "
        f"{100 * CONVEX_ACCURACY_SLACK:g} point of the subgradient's"
    )
    return Claim("001", text, figure, f"`equiprune mask-convex --out {convex_dir}`", _holds(ok), why)

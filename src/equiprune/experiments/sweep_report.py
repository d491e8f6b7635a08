"""The report of a sweep: accuracy against size, per method, from the results store.

``DIR/frontier.json`` holds one row per method and budget (or cost setting): the means and
standard deviations over seeds. ``DIR/report.md`` shows a table per budget (mean ± std per method,
the best in bold, ties within one standard deviation named), a verdict of the equilibrium
pruner against every baseline, and the plots ``frontier_kept.png``, ``frontier_params.png`` and
``frontier_macs.png``. Methods without a budget (the equilibrium pruner's cost settings) are
placed at the sweep budget nearest their mean kept fraction, and the table says how far off it is.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from equiprune import io
from equiprune.errors import ConfigError
from equiprune.experiments.comparison import TIE_RULE, judge, mean_std
from equiprune.experiments.figures import save_png, subplots
from equiprune.experiments.hooks import CHANCE_MARGIN
from equiprune.experiments.store import ResultStore
from equiprune.methods import METHODS

#: A row without a budget of its own joins the nearest sweep budget only if its mean kept fraction
#: lies within this factor of it; otherwise it appears in the plots and the "unplaced" table only.
PLACEMENT_TOLERANCE = 1.3
#: How the report names an environment that a run stored before equiprune recorded it lacks.
UNRECORDED = "not recorded"


@dataclass
class FrontierRow:
    method: str  # the sweep label
    method_name: str  # the registered method
    role: str  # "candidate", "baseline" or "reference" (see sweep.ROLES)
    point: str
    budget: float | None  # the sweep budget the row belongs to
    seeds: int
    kept_fraction_mean: float
    kept_fraction_std: float
    test_accuracy_mean: float
    test_accuracy_std: float
    params_after_mean: float
    macs_after_mean: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def unpruned(self) -> bool:
        """The dense reference: shown above the tables, not in them."""
        return self.role == "reference" and self.budget is None and self.kept_fraction_mean >= 1.0


def _finished(row: dict[str, Any]) -> bool:
    """Whether a store row is a finished run (rows stored before failures were recorded are)."""
    return row.get("status", "finished") == "finished"


def frontier_rows(
    rows: list[dict[str, Any]], budgets: list[float] | None = None, roles: dict[str, str] | None = None
) -> list[FrontierRow]:
    """One row per label and point; ``roles``: label -> role (else the method's default role)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not _finished(r):
            continue
        groups[(r["label"], r["point"])].append(r)
    budgets = sorted(budgets or {r["budget"] for r in rows if r["budget"] is not None})
    out = []
    for (label, point), runs in sorted(groups.items()):
        res = [r["results"] for r in runs]
        kept = [x["kept_fraction"] for x in res]
        acc = [x["test_accuracy"] for x in res]
        macs = [x["macs_after"] for x in res if x.get("macs_after") is not None]
        kmean, kstd = mean_std(kept)
        amean, astd = mean_std(acc)
        budget = runs[0]["budget"]
        role = (roles or {}).get(label) or METHODS.get(runs[0]["method"]).default_role
        if budget is None and budgets and not (role == "reference" and kmean >= 1.0):
            nearest = min(budgets, key=lambda b: abs(math.log(kmean / b)))
            budget = nearest if abs(math.log(kmean / nearest)) <= math.log(PLACEMENT_TOLERANCE) else None
        out.append(FrontierRow(label, runs[0]["method"], role, point, budget, len(runs), kmean, kstd, amean, astd,
                               statistics.fmean(x["params_after"] for x in res),
                               statistics.fmean(macs) if macs else None))  # fmt: skip
    return out


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _verdict_of(a: FrontierRow, b: FrontierRow) -> str:
    return judge(a.test_accuracy_mean, a.test_accuracy_std, b.test_accuracy_mean, b.test_accuracy_std)


def render_markdown(
    title: str,
    frontier: list[FrontierRow],
    budgets: list[float],
    failed: list[dict[str, Any]] = (),
    runs: list[dict[str, Any]] = (),
) -> str:
    """``runs``: the store's rows behind ``frontier`` (for the environment they ran in)."""
    lines = [f"# {title}", ""]
    dense = [r for r in frontier if r.unpruned]
    if dense:
        d = dense[0]
        lines += [f"Dense model: {_fmt(d.test_accuracy_mean, d.test_accuracy_std)}% test accuracy "
                  f"({d.seeds} seeds, {d.params_after_mean:,.0f} parameters).", ""]  # fmt: skip
    for b in budgets:
        rows = [r for r in frontier if r.budget == b and not r.unpruned]
        if not rows:
            continue
        competitors = [r for r in rows if r.role != "reference"]
        best = max(competitors, key=lambda r: r.test_accuracy_mean) if competitors else None
        lines += [f"## Budget {100 * b:g}% of players kept", "",
                  "| method | test accuracy (%) | kept (%) | parameters | MACs | seeds |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in sorted(rows, key=lambda r: -r.test_accuracy_mean):
            acc = _fmt(r.test_accuracy_mean, r.test_accuracy_std)
            name = r.method + (" (reference)" if r.role == "reference" else "")
            if r is best:
                acc, name = f"**{acc}**", f"**{name}**"
            elif best is not None and r.role != "reference" and _verdict_of(r, best) == "tie":
                name += " (tie with best)"
            macs = f"{r.macs_after_mean:,.0f}" if r.macs_after_mean is not None else "–"
            kept = f"{100 * r.kept_fraction_mean:.2f}"
            if r.budget is not None and r.point != f"budget={r.budget:g}" and r.point != "default":
                kept += f" ({r.point})"  # a setting placed at this budget, not run at it
            lines.append(f"| {name} | {acc} | {kept} | {r.params_after_mean:,.0f} | {macs} | {r.seeds} |")
        lines.append("")
    unplaced = [r for r in frontier if r.budget is None and not r.unpruned]
    if unplaced:
        lines += ["## Settings that landed on no budget", "",
                  f"Their kept fraction is more than {PLACEMENT_TOLERANCE}x away from every budget of the sweep.", "",
                  "| method | setting | test accuracy (%) | kept (%) | seeds |", "|---|---|---|---|---|"]  # fmt: skip
        for r in sorted(unplaced, key=lambda r: r.kept_fraction_mean):
            lines.append(f"| {r.method} | {r.point} | {_fmt(r.test_accuracy_mean, r.test_accuracy_std)} | "
                         f"{100 * r.kept_fraction_mean:.2f} | {r.seeds} |")  # fmt: skip
        lines.append("")
    lines += _verdict(frontier, budgets)
    if failed:
        lines += ["## Failed runs", "", "These runs stopped with an error; they are not in the tables or plots.", ""]
        lines += [f"- `{r['run_id']}`: {r['results'].get('error', '?')}" for r in failed] + [""]
    lines += diverged_lines(runs)
    lines += compaction_lines(runs)
    lines += _at_equal_parameters(frontier)
    lines += environment_lines(runs)
    lines += ["![test error against players kept](frontier_kept.png)", "",
              "![test error against parameters](frontier_params.png)", "",
              "![test error against MACs](frontier_macs.png)", ""]  # fmt: skip
    return "\n".join(lines)


def diverged_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The finished runs whose training loss was no better than a uniform guess in some epoch (their
    ``warnings``): they are in the tables, but a reader should know their networks diverged or did
    not learn."""
    flagged = [r for r in runs if _finished(r) and r["results"].get("warnings")]
    if not flagged:
        return []
    lines = ["## Runs that diverged", "",
             "In these runs the training loss was, in some epoch, no better than a uniform guess (above it or "
             f"within {CHANCE_MARGIN:.0%} of it: the network had diverged or not learned; the loss stayed finite, so "
             "the run went on); their results are in the tables above.", ""]  # fmt: skip
    for r in flagged:
        # Stores written before results carried ``diverged_epochs`` have only the messages, which
        # begin with the same "epoch N (phase)" label.
        epochs = r["results"].get("diverged_epochs")
        labels = [f"epoch {e['epoch']} ({e['phase']})" for e in epochs] if epochs is not None else [
            w.split(":")[0] for w in r["results"]["warnings"]]  # fmt: skip
        lines.append(f"- `{r['run_id']}`: {len(labels)} epoch(s): {', '.join(labels)}")
    return lines + [""]


def compaction_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The finished runs whose compaction cost more accuracy than their tolerance (results.json's
    ``compaction_flagged``): their prune decision removed players the network used."""
    flagged = [r for r in runs if _finished(r) and r["results"].get("compaction_flagged")]
    if not flagged:
        return []
    lines = ["## Runs whose compaction cost accuracy", "",
             "In these runs the compacted model, before fine-tuning, scored more than the run's "
             "`compaction_tolerance` below the gated model: the prune decision removed players the network "
             "used. Their results are in the tables above.", ""]  # fmt: skip
    for r in flagged:
        res = r["results"]
        lines.append(f"- `{r['run_id']}`: {100 * res['test_accuracy_before_compaction']:.2f}% gated, "
                     f"{100 * res['test_accuracy_after_compaction']:.2f}% compacted")  # fmt: skip
    return lines + [""]


def environment_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Where the finished runs ran (torch, CPU threads, device), and a warning when they differ:
    another thread count sums in another order, and the same seed and settings can then keep other
    players (measured: 0 to 0.5 points on Fashion-MNIST), so methods compared side by side should
    share one environment."""
    by_env: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if not _finished(r):
            continue
        env = r["results"].get("environment")
        key = (str(env["torch"]), str(env["threads"]), str(env["device"])) if env else (UNRECORDED,) * 3
        by_env[key].append(r)
    if not by_env:
        return []
    lines = ["## Environment", ""]
    if len(by_env) == 1:
        (torch_v, threads, device), rs = next(iter(by_env.items()))
        if torch_v == UNRECORDED:
            return lines + [f"The {len(rs)} runs do not record their environment (stored before equiprune did).", ""]
        return lines + [f"All {len(rs)} runs: torch {torch_v}, {threads} CPU thread(s), device {device}.", ""]
    lines += ["**The runs ran in different environments.** Another CPU thread count or torch version sums in "
              "another order, and the same seed and settings can then keep other players and land elsewhere "
              "(measured: 0 to 0.5 points on Fashion-MNIST). Pin `threads` in the sweep's `[base]` to compare "
              "methods on equal terms; runs stored before equiprune recorded it show as not recorded.", "",
              "| torch | CPU threads | device | runs | labels |", "|---|---|---|---|---|"]  # fmt: skip
    for (torch_v, threads, device), rs in sorted(by_env.items(), key=lambda kv: -len(kv[1])):
        labels = ", ".join(sorted({r["label"] for r in rs}))
        lines.append(f"| {torch_v} | {threads} | {device} | {len(rs)} | {labels} |")
    return lines + [""]


def _verdict(frontier: list[FrontierRow], budgets: list[float]) -> list[str]:
    """Each candidate label against every other method at each budget, at the others' own kept fraction.

    A candidate without a budget (the equilibrium pruner's cost settings) lands near a budget, not on
    it (4.3% kept where the baselines keep 4.95%, or 25% placed at 20%), and on a steep frontier that
    gap alone is worth tenths of a point either way. So a label's accuracy, and its standard
    deviation for the tie rule, are interpolated (linearly in log kept fraction) between its two
    settings that bracket the others' kept fraction; only where none bracket it is its setting
    nearest the budget judged as it is, with what it kept beside it. Judging the frontier rather
    than the best of the settings near a budget keeps the luckiest setting from speaking for the
    method."""
    labels = sorted({r.method for r in frontier if r.role == "candidate"})
    if not labels:
        return []
    lines = ["## Candidates against each baseline", "",
             f"Each candidate is judged against every other method at each budget; {TIE_RULE}. A candidate "
             "is judged at the others' kept fraction, interpolated linearly in log kept fraction between its two "
             "settings that bracket it (a chord under a concave frontier: where they lie far apart it "
             "understates); where none bracket it, its setting nearest the budget is judged as it is.", ""]  # fmt: skip
    candidates_of = {label: [r for r in frontier if r.method == label] for label in labels}
    for b in budgets:
        others = sorted((r for r in frontier if r.budget == b and r.role != "candidate" and not r.unpruned),
                        key=lambda r: r.method)  # fmt: skip
        at = statistics.fmean(r.kept_fraction_mean for r in others) if others else b
        for label in labels:
            c = _candidate_at(candidates_of[label], at, b)
            if c is None:
                lines.append(f"- budget {100 * b:g}%, {label}: no setting landed near this budget")
            elif others:
                head = f"- budget {100 * b:g}%, {label} ({c.point}, kept {100 * c.kept_fraction_mean:.2f}%)"
                lines.append(f"{head}: {_fmt(c.test_accuracy_mean, c.test_accuracy_std)}%; {_against(c, others)}")
    return lines + [""]


def _candidate_at(rows: list[FrontierRow], at: float, budget: float) -> FrontierRow | None:
    """A candidate label's frontier at kept fraction ``at``: interpolated between the two settings
    that bracket it, else its setting placed at ``budget`` nearest to ``at``; None if it has neither."""
    kept = lambda r: r.kept_fraction_mean  # noqa: E731
    found = bracket(rows, at, kept)
    if found is not None:
        lo, hi, _ = found
        acc, std = along(found, lambda r: r.test_accuracy_mean), along(found, lambda r: r.test_accuracy_std)
        point = f"interpolated between {lo.point} and {hi.point}"
        return replace(lo, point=point, budget=budget, kept_fraction_mean=at, kept_fraction_std=0.0,
                       test_accuracy_mean=acc, test_accuracy_std=std)  # fmt: skip
    near = [r for r in rows if r.budget == budget]
    return min(near, key=lambda r: abs(math.log(kept(r) / at))) if near else None


def _against(candidate: FrontierRow, others: list[FrontierRow]) -> str:
    """'method +0.12 (tie), …': the candidate's accuracy minus each other's, judged by the tie rule."""
    parts = []
    for r in others:
        diff = 100 * (candidate.test_accuracy_mean - r.test_accuracy_mean)
        word = {"tie": "tie", "win": "win", "loss": "LOSS"}[_verdict_of(candidate, r)]
        parts.append(f"{r.method} {diff:+.2f} ({word})".replace("-0.00", "+0.00"))
    return ", ".join(parts)


def bracket(rows: list, x: float, x_of) -> tuple[Any, Any, float] | None:
    """The two rows whose ``x_of`` bracket ``x``, and x's position between them in log(x), or None.
    Rows may be anything ``x_of`` reads (frontier rows, (MACs, accuracy) pairs)."""
    pts = sorted(rows, key=x_of)
    for lo, hi in zip(pts, pts[1:]):
        x0, x1 = x_of(lo), x_of(hi)
        if x0 <= x <= x1:
            return lo, hi, ((math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 0.0)
    return None


def along(bracketed: tuple[Any, Any, float], y_of) -> float:
    """``y_of`` at the bracketed point: linear between the two rows."""
    lo, hi, t = bracketed
    return y_of(lo) + t * (y_of(hi) - y_of(lo))


def interpolate_accuracy(rows: list[FrontierRow], params: float) -> float | None:
    """A method's mean accuracy at ``params`` parameters, linear in log(parameters) between its two
    neighbouring points; None outside the range it covers."""
    found = bracket(rows, params, lambda r: r.params_after_mean)
    return None if found is None else along(found, lambda r: r.test_accuracy_mean)


def _at_equal_parameters(frontier: list[FrontierRow]) -> list[str]:
    """Each candidate against every other method at the same parameter count (interpolated): players
    differ in size (a first-layer neuron owns far more weights than a second-layer one), so equal
    players kept is not equal model size."""
    candidates = sorted((r for r in frontier if r.role == "candidate"), key=lambda r: r.params_after_mean)
    if not candidates:
        return []
    others: dict[str, list[FrontierRow]] = defaultdict(list)
    for r in frontier:
        if r.role != "candidate" and not r.unpruned:
            others[r.method].append(r)
    lines = ["## At equal parameters", "",
             "Each candidate's accuracy minus each method's, interpolated (linearly in log parameters) "
             "to the same parameter count; – where the method has no points on both sides.", "",
             "| candidate setting | parameters | accuracy (%) | " + " | ".join(sorted(others)) + " |",
             "|---|---|---|" + "---|" * len(others)]  # fmt: skip
    for c in candidates:
        cells = []
        for name in sorted(others):
            acc = interpolate_accuracy(others[name], c.params_after_mean)
            cells.append("–" if acc is None else f"{100 * (c.test_accuracy_mean - acc):+.2f}")
        head = f"| {c.method} {c.point} | {c.params_after_mean:,.0f} | {100 * c.test_accuracy_mean:.2f} | "
        lines.append(head + " | ".join(cells) + " |")
    return lines + [""]


def plot_frontier(out: Path, frontier: list[FrontierRow]) -> None:
    by_method: dict[str, list[FrontierRow]] = defaultdict(list)
    for r in frontier:
        by_method[r.method].append(r)
    axes = {
        "frontier_kept.png": ("fraction of players kept", lambda r: r.kept_fraction_mean),
        "frontier_params.png": ("parameters of the compacted model", lambda r: r.params_after_mean),
        "frontier_macs.png": ("MACs of the compacted model (one example)", lambda r: r.macs_after_mean),
    }
    for fname, (xlabel, x_of) in axes.items():
        fig, ax = subplots(figsize=(7, 4.5))
        for method, rows in sorted(by_method.items()):
            rows = sorted((r for r in rows if x_of(r) is not None), key=x_of)
            if not rows:
                continue
            xs = [x_of(r) for r in rows]
            ys = [100 * (1 - r.test_accuracy_mean) for r in rows]
            es = [100 * r.test_accuracy_std for r in rows]
            style = dict(marker="*", markersize=12, linewidth=2.2) if rows[0].role == "candidate" else dict(marker="o")
            if rows[0].unpruned:
                style = dict(marker="s", linestyle="none", color="black")
            ax.errorbar(xs, ys, yerr=es, label=method, capsize=3, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")  # error on a log scale: differences of tenths of a point stay visible
        ax.set_xlabel(xlabel + " (log scale)")
        ax.set_ylabel("test error (%, log scale; lower is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        save_png(fig, out / fname)


def write_report(out: str | Path, title: str | None = None, budgets: list[float] | None = None) -> Path:
    """Write ``frontier.json``, ``report.md`` and the plots for the sweep in ``out``."""
    out = Path(out)
    store_path = out / "results.sqlite"
    if not store_path.is_file():
        raise ConfigError(f"{out} holds no sweep results ({store_path} is missing); run `equiprune sweep` first")
    with ResultStore(store_path) as store:
        rows = store.rows()
    if not rows:
        raise ConfigError(f"{store_path} holds no run yet")
    plan, roles = out / "sweep.json", {}
    if plan.is_file():
        meta = json.loads(plan.read_text(encoding="utf-8"))
        title, budgets = title or f"Sweep report: {meta['name']}", budgets or meta["budgets"]
        planned = set(meta["runs"])
        roles = meta.get("roles", {})  # sweeps written before roles: each method's default role
        rows = [r for r in rows if r["run_id"] in planned]  # runs of an earlier plan are not reported
    frontier = frontier_rows(rows, budgets, roles)
    budgets = sorted({r.budget for r in frontier if r.budget is not None})
    io.write_json(out / "frontier.json", [r.as_dict() for r in frontier])
    plot_frontier(out, frontier)
    failed = [r for r in rows if not _finished(r)]
    text = render_markdown(title or f"Sweep report: {out.name}", frontier, budgets, failed, rows)
    io.write_text(out / "report.md", text)
    return out / "report.md"

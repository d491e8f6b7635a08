"""Reproduce a paper's table: run its configurations over seeds and summarise beside its figures.

``game-mnist`` runs the four Table 2 configurations of "Pruning as a Game" and equiprune's own best
configuration, plus the reference every pruning result must face: a dense MLP of the widths that
the best configuration kept, trained from scratch for the same number of epochs. Finished runs are
reused and interrupted ones resumed, so the command can simply be started again.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equiprune import io
from equiprune.config import MethodConfig, RunConfig, load_config, shipped_config
from equiprune.errors import ConfigError
from equiprune.experiments.comparison import REPRODUCTION_RULE, TIE_RULE, judge, mean_std, reproduces
from equiprune.experiments.executors import check_jobs, run_lanes
from equiprune.experiments.loop import run
from equiprune.experiments.rundir import RunDir
from equiprune.progress import bar, logger

#: What the paper reports for each preset (MNIST, 784-512-256-10, 20 epochs).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "very-high-beta": {"test_accuracy": 0.9664, "kept_fraction": 1.0},
    "extreme-beta": {"test_accuracy": 0.9115, "kept_fraction": 0.0482},
    "l1-sparsity-strong": {"test_accuracy": 0.8957, "kept_fraction": 0.0169},
    "l1-l2-combined": {"test_accuracy": 0.9154, "kept_fraction": 0.0195},
}


@dataclass(frozen=True)
class Suite:
    package_dir: str  # under equiprune/configs/
    configs: tuple[str, ...]  # file stems, also the row names
    best: str  # the configuration whose kept widths the dense reference copies
    targets: dict[str, float]


SUITES = {
    "game-mnist": Suite(
        package_dir="game_mnist",
        configs=("very-high-beta", "extreme-beta", "l1-sparsity-strong", "l1-l2-combined", "equiprune-best"),
        best="equiprune-best",
        targets={"max_kept_fraction": 0.02, "min_test_accuracy": 0.935, "max_undecided_fraction": 0.05},
    )
}

DENSE_REFERENCE = "dense-kept-widths"


def bundled_config(suite: str, name: str) -> RunConfig:
    """A configuration shipped with equiprune (``equiprune/configs/<suite>/<name>.toml``)."""
    return load_config(shipped_config(SUITES[suite].package_dir, f"{name}.toml"))


def run_or_reuse(cfg: RunConfig, out: Path, quiet: bool) -> dict[str, Any]:
    """The results of ``cfg`` in ``out``: read if finished, resumed if interrupted, else run."""
    rd = RunDir(out)
    if rd.is_finished():
        return rd.read_results()
    return run(cfg, out, resume=rd.checkpoint.is_file(), quiet=quiet)


def dense_reference(best: RunConfig, kept: dict[str, int], seed: int) -> RunConfig:
    """A dense model of the kept widths, trained from scratch with the best run's whole budget.

    It trains with the recipe the best configuration fine-tunes its small network with (SGD with
    momentum and a cosine schedule suit tiny dense networks best), so the reference is as strong
    as the pruned model's own training, not weaker."""
    widths = list(kept.values())  # results list the layers in model order
    t = best.train
    return dataclasses.replace(
        best,
        seed=seed,
        model=dataclasses.replace(best.model, hidden=widths),
        train=dataclasses.replace(
            t,
            finetune_epochs=0,
            optimizer=t.finetune_optimizer or t.optimizer,
            lr=t.finetune_lr if t.finetune_lr is not None else t.lr,
            finetune_optimizer=None,
            finetune_lr=None,
        ),
        method=MethodConfig(name="dense"),
    )


def _row(name: str, cfg: RunConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    acc_mean, acc_std = mean_std([r["test_accuracy"] for r in results])
    kept_mean, kept_std = mean_std([r["kept_fraction"] for r in results])
    settings = dataclasses.asdict(cfg.method.settings)  # the game's, or the dense reference's (none of these)
    row = {
        "config": name,
        "method": cfg.method.name,
        **{key: settings.get(key) for key in ("alpha", "beta", "gamma", "eta", "lr_s", "update", "anchored")},
        "test_accuracy_mean": acc_mean,
        "test_accuracy_std": acc_std,
        "kept_fraction_mean": kept_mean,
        "kept_fraction_std": kept_std,
        "kept": [r["kept"] for r in results],
        "params_after_mean": statistics.fmean(r["params_after"] for r in results),
        "seeds": [r["seed"] for r in results],
        "seconds_mean": statistics.fmean(r["seconds"] for r in results),
    }
    row["compaction_flagged_seeds"] = sum(bool(r.get("compaction_flagged")) for r in results)
    gated = [
        r["test_accuracy_before_compaction"] for r in results if r.get("test_accuracy_before_compaction") is not None
    ]
    row["gated_test_accuracy_mean"] = statistics.fmean(gated) if gated else None
    row["decisions"] = _decisions(cfg, results)
    for key in ("undecided_fraction", "undecided_among_survivors"):
        values = [r[key] for r in results if r.get(key) is not None]
        row[f"{key}_mean"] = statistics.fmean(values) if values else None
    if name in PAPER_TABLE2:
        row["paper_test_accuracy"] = PAPER_TABLE2[name]["test_accuracy"]
        row["paper_kept_fraction"] = PAPER_TABLE2[name]["kept_fraction"]
    return row


def _decisions(cfg: RunConfig, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each prune decision's figures over the seeds: the one played (after fine-tuning, if any)
    and those reported beside it (``other_decisions``, compacted before fine-tuning)."""
    played = getattr(cfg.method.settings, "decision", None)
    if played is None:
        return {}
    out = {played: {"played": True, "test_accuracy": [r["test_accuracy"] for r in results],
                    "kept_fraction": [r["kept_fraction"] for r in results]}}  # fmt: skip
    for name in results[0].get("other_decisions", {}):
        figures = [r["other_decisions"][name] for r in results]
        out[name] = {"played": False, "test_accuracy": [f["test_accuracy_after_compaction"] for f in figures],
                     "kept_fraction": [f["kept_fraction"] for f in figures]}  # fmt: skip
    for figures in out.values():
        for key in ("test_accuracy", "kept_fraction"):
            figures[f"{key}_mean"], figures[f"{key}_std"] = mean_std(figures.pop(key))
    return out


@dataclass
class Summary:
    rows: list[dict[str, Any]]
    markdown: str
    json_path: Path
    md_path: Path


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _markdown(suite: Suite, rows: list[dict[str, Any]], seeds: int) -> str:
    lines = [
        f"# {SUITE_TITLES.get(suite.package_dir, suite.package_dir)}",
        "",
        f"Mean ± standard deviation over {seeds} seed(s); the paper reports single runs.",
        "",
        "| configuration | α | β | γ | η | lr_s | update | test accuracy | neurons kept | undecided (0.05–0.95) "
        "| undecided among survivors | paper: accuracy | paper: kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    for r in rows:
        update = "–" if r["update"] is None else r["update"] + (", anchored" if r["anchored"] else "")
        lines.append(
            f"| {r['config']} | {fmt(r['alpha'])} | {fmt(r['beta'])} | {fmt(r['gamma'])} | {fmt(r['eta'])} "
            f"| {fmt(r['lr_s'])} | {update} | {_pct(r['test_accuracy_mean'])} ± {_pct(r['test_accuracy_std'])} "
            f"| {_pct(r['kept_fraction_mean'])} | {_pct(r['undecided_fraction_mean'], 1)} "
            f"| {_pct(r.get('undecided_among_survivors_mean'), 1)} "
            f"| {_pct(r.get('paper_test_accuracy'))} | {_pct(r.get('paper_kept_fraction'))} |"
        )
    lines += ["", "Undecided: participations strictly inside (0.05, 0.95) at the end of pruning, over all players "
              "and among the players kept. In an anchored game (`update` newton, anchored) the network plays "
              "every survivor at full strength; its participations are the players' strategies, which decide "
              "who stays, not a scale of what the network computes."]  # fmt: skip
    flagged = [r for r in rows if r.get("compaction_flagged_seeds")]
    if flagged:
        lines += ["", "Compaction cost more than `train.compaction_tolerance` (1 point by default) of test "
                  "accuracy: the prune decision removed players the network used (each run's results.json "
                  "has the figures):", ""]  # fmt: skip
        lines += [f"- `{r['config']}`: on {r['compaction_flagged_seeds']} of {len(r['seeds'])} seeds" for r in flagged]
    lines += _decision_lines(rows)
    best = next(r for r in rows if r["config"] == suite.best)
    t = suite.targets
    checks = [
        ("neurons kept", best["kept_fraction_mean"] <= t["max_kept_fraction"],
         f"{_pct(best['kept_fraction_mean'])} ≤ {_pct(t['max_kept_fraction'], 1)}"),
        ("test accuracy", best["test_accuracy_mean"] >= t["min_test_accuracy"],
         f"{_pct(best['test_accuracy_mean'])} ≥ {_pct(t['min_test_accuracy'], 1)}"),
        ("equilibrium", (best["undecided_fraction_mean"] or 0) <= t["max_undecided_fraction"],
         f"{_pct(best['undecided_fraction_mean'], 1)} of participations in (0.05, 0.95) "
         f"≤ {_pct(t['max_undecided_fraction'], 0)}"),
    ]  # fmt: skip
    lines += ["", f"Targets for `{suite.best}`:", ""]
    lines += [f"- {name}: {'met' if ok else 'NOT met'} ({text})" for name, ok, text in checks]
    dense = next((r for r in rows if r["config"] == DENSE_REFERENCE), None)
    if dense:
        diff = best["test_accuracy_mean"] - dense["test_accuracy_mean"]
        verdict = judge(best["test_accuracy_mean"], best["test_accuracy_std"],
                        dense["test_accuracy_mean"], dense["test_accuracy_std"])  # fmt: skip
        words = {"win": "beats", "tie": "ties with", "loss": "falls short of"}[verdict]
        lines.append(
            f"- against a dense model of the kept widths trained from scratch: `{suite.best}` {words} it "
            f"({_pct(best['test_accuracy_mean'])} vs {_pct(dense['test_accuracy_mean'])}, "
            f"difference {100 * diff:+.2f} points; {TIE_RULE})"
        )
    return "\n".join(lines) + "\n"


def _decision_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's rows under both prune decisions, beside the paper's figures, and which hold."""
    paper_rows = [r for r in rows if "paper_test_accuracy" in r and len(r["decisions"]) > 1]
    if not paper_rows:
        return []
    lines = ["", "## The paper's rows under both prune decisions", "",
             "The paper's rule removes a player whose participation s_i < ε; equiprune's (`decision = "
             "\"contribution\"`) removes one whose s_i·‖what it reads‖·‖what reads it‖ is below 1% of its "
             "layer's largest. Both are taken from the same trained networks. Gated: the trained network "
             "before anything is removed.", "",
             "| configuration | gated | paper's rule: accuracy | kept | contribution: accuracy | kept "
             "| paper: accuracy | kept |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    held: dict[str, list[str]] = {"participation": [], "contribution": []}
    for r in paper_rows:
        cells = []
        for name in ("participation", "contribution"):
            d = r["decisions"][name]
            cells.append(
                f"{_pct(d['test_accuracy_mean'])} ± {_pct(d['test_accuracy_std'])} | {_pct(d['kept_fraction_mean'])}"
            )
            if reproduces(
                d["test_accuracy_mean"], d["kept_fraction_mean"], r["paper_test_accuracy"], r["paper_kept_fraction"]
            ):
                held[name].append(f"`{r['config']}`")
        lines.append(f"| {r['config']} | {_pct(r['gated_test_accuracy_mean'])} | {cells[0]} | {cells[1]} "
                     f"| {_pct(r['paper_test_accuracy'])} | {_pct(r['paper_kept_fraction'])} |")  # fmt: skip
    words = lambda names: ", ".join(names) if names else "none"  # noqa: E731
    lines += ["", f"Rows that hold ({REPRODUCTION_RULE}): with the paper's rule, {words(held['participation'])}; "
              f"with equiprune's decision, {words(held['contribution'])}, of {len(paper_rows)}."]  # fmt: skip
    return lines


SUITE_TITLES = {"game_mnist": "Pruning as a Game (arXiv 2512.22106), Table 2 on MNIST, reproduced"}


def _run_task(task: tuple[RunConfig, Path]) -> dict[str, Any]:
    return run_or_reuse(task[0], task[1], quiet=True)


def _run_all(tasks: list[tuple[str, RunConfig, Path]], quiet: bool, jobs: int) -> list[dict[str, Any]]:
    """Each ``(title, config, run directory)``'s results, in order; ``jobs`` at once."""
    if jobs == 1:
        results = []
        for title, cfg, path in tasks:
            if not quiet:
                logger.info(f"== {title}")
            results.append(run_or_reuse(cfg, path, quiet))
        return results
    by_path: dict[Path, dict[str, Any]] = {}
    titles = {path: title for title, _, path in tasks}
    runs_bar = bar(len(tasks), f"runs, {jobs} at once", "run", enabled=not quiet)

    def ended(task: tuple[RunConfig, Path], results: dict[str, Any]) -> None:
        by_path[task[1]] = results
        runs_bar.update(1)
        if not quiet:
            logger.info(f"== {titles[task[1]]}: test accuracy {100 * results['test_accuracy']:.2f}%")

    with runs_bar:
        run_lanes(_run_task, [[(cfg, path)] for _, cfg, path in tasks], jobs, ended)
    return [by_path[path] for _, _, path in tasks]


def reproduce(suite_name: str, out, seeds: int = 3, quiet: bool = False, jobs: int = 1) -> Summary:
    """Run the suite's configurations (``seeds`` each) and the dense reference of the best one's
    kept widths into ``out``, ``jobs`` runs at once, and write ``summary.json`` / ``summary.md``.
    Finished runs are read back, interrupted ones resumed."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    check_jobs(jobs)
    suite = SUITES[suite_name]
    out = Path(out)
    bases = {name: bundled_config(suite_name, name) for name in suite.configs}
    tasks = [(f"{name}, seed {seed}", dataclasses.replace(base, seed=seed), out / name / f"seed{seed}")
             for name, base in bases.items() for seed in range(seeds)]  # fmt: skip
    done = _run_all(tasks, quiet, jobs)
    rows, best_results = [], []
    for i, (name, base) in enumerate(bases.items()):
        results = done[i * seeds : (i + 1) * seeds]
        rows.append(_row(name, base, results))
        if name == suite.best:
            best_cfg, best_results = base, results
    refs = [dense_reference(best_cfg, r["kept"], r["seed"]) for r in best_results]
    dense_results = _run_all(
        [(f"{DENSE_REFERENCE} {cfg.model.hidden}, seed {cfg.seed}", cfg, out / DENSE_REFERENCE / f"seed{cfg.seed}")
         for cfg in refs],
        quiet,
        jobs,
    )  # fmt: skip
    if dense_results:
        dense_row = _row(DENSE_REFERENCE, dense_reference(best_cfg, best_results[0]["kept"], 0), dense_results)
        # Its widths are the best configuration's kept ones: report them as a fraction of the 768.
        best_row = next(r for r in rows if r["config"] == suite.best)
        dense_row["kept_fraction_mean"] = best_row["kept_fraction_mean"]
        dense_row["kept_fraction_std"] = best_row["kept_fraction_std"]
        rows.append(dense_row)
    md = _markdown(suite, rows, seeds)
    json_path = io.write_json(out / "summary.json", rows)
    md_path = io.write_text(out / "summary.md", md)
    return Summary(rows, md, json_path, md_path)

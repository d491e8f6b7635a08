"""``equiprune lottery``: a lottery-ticket study. Each ticket-finding method (``imp``, ``concave-mask``)
searches its tickets in one run per seed, and every round's ticket is then retrained from the rewind
point with its mask fixed, beside the protocol's two sanity baselines: the same mask from a fresh
initialisation (``reinit``) and a random mask with the same per-layer counts (``random``). Every
method's tickets get the same retraining, so the study compares masks, not training budgets.

A study file is TOML::

    name = "lenet300-mnist-lottery"
    seeds = [0, 1, 2]
    ticket_epochs = 6                         # the retraining of every ticket
    variants = ["ticket", "reinit", "random"] # what to retrain per round (default: all three)
    rounds = []                               # which rounds' tickets (default: every round)

    [base]              # a run configuration without seed and [method]; train.epochs is the search's
    data = { dataset = "mnist" }

    [[methods]]         # one entry per method; keys besides name, label, train are its settings
    name = "concave-mask"
    label = "log"
    regularizer = "log"
    fractions = [0.5, 0.2, 0.1, 0.05, 0.02]
    budget = 0.02

Layout: ``DIR/<label>/seed<k>/search`` (the method's run: ``tickets.pt``, ``masks.png``) and
``DIR/<label>/seed<k>/round-<r>/<variant>`` (ticket retrainings), each an ordinary run directory;
``DIR/lottery.json`` (every ticket), ``DIR/lottery.md`` (mean ± std over seeds, and the runs whose
training loss was no better than a uniform guess in some epoch) and
``DIR/lottery.png`` (accuracy against weights remaining, log axis). Started again, the study skips
finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equiprune import io
from equiprune.config import RunConfig, read_toml_file, run_config_from_dict
from equiprune.errors import ConfigError
from equiprune.experiments.executors import check_jobs, run_lanes
from equiprune.experiments.loop import run
from equiprune.experiments.lottery_plots import plot_tickets
from equiprune.experiments.rundir import RunDir, refuse_file
from equiprune.experiments.sweep import read_base, read_seeds
from equiprune.experiments.sweep_report import diverged_lines
from equiprune.progress import bar
from equiprune.schema import unknown_key

STUDY_KEYS = ["name", "seeds", "ticket_epochs", "variants", "rounds", "base", "methods"]
VARIANTS = {"ticket": {"init": "rewind", "mask": "ticket"}, "reinit": {"init": "reinit", "mask": "ticket"},
            "random": {"init": "rewind", "mask": "random"}}  # fmt: skip
FINDERS = ("imp", "concave-mask")


@dataclass
class Study:
    name: str
    seeds: list[int]
    ticket_epochs: int
    variants: list[str]
    rounds: list[int]
    base: dict[str, Any]
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> method table (+ "train")


def load_study(path: str | Path) -> Study:
    return read_toml_file(path, "lottery study file", parse_study)


def parse_study(data: dict[str, Any]) -> Study:
    for key in data:
        if key not in STUDY_KEYS:
            raise unknown_key(key, STUDY_KEYS, "lottery study")
    seeds = read_seeds(data)
    epochs = data.get("ticket_epochs", 10)
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"ticket_epochs: expected a whole number of epochs >= 1, got {epochs!r}")
    variants = data.get("variants", list(VARIANTS))
    if not isinstance(variants, list) or not variants or not set(variants) <= set(VARIANTS):
        raise ConfigError(f"variants: expected a non-empty list from {list(VARIANTS)}, got {variants!r}")
    rounds = data.get("rounds", [])
    if not isinstance(rounds, list) or not all(isinstance(r, int) and r >= 1 for r in rounds):
        raise ConfigError(f"rounds: expected a list of round numbers >= 1 (empty: every round), got {rounds!r}")
    base = read_base(data, "study")
    study = Study(str(data.get("name", "lottery")), seeds, epochs, variants, rounds, base)
    entries = data.get("methods")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("methods: expected at least one [[methods]] entry (imp or concave-mask)")
    for i, entry in enumerate(entries):
        label = _add_search(study, entry, i)
        for seed in seeds:  # every run's configuration is built, and so checked, before any starts
            cfg = search_config(study, label, seed)
            for r in study.rounds:
                if r > cfg.method.settings.rounds:
                    raise ConfigError(f"rounds: method {label!r} has {cfg.method.settings.rounds} rounds; got {r}")
    return study


def _add_search(study: Study, entry: Any, i: int) -> str:
    if not isinstance(entry, dict) or entry.get("name") not in FINDERS:
        raise ConfigError(f"methods[{i}]: expected a table whose name is one of {list(FINDERS)} (ticket-finding "
                          f"methods), got {entry!r}")  # fmt: skip
    label = entry.get("label", entry["name"])
    if not isinstance(label, str) or not label or "/" in label or label in study.searches:
        raise ConfigError(f"methods[{i}]: label: expected a new non-empty name without '/', got {label!r}")
    study.searches[label] = {k: v for k, v in entry.items() if k != "label"}
    return label


def _config(study: Study, seed: int, method: dict[str, Any], train: dict[str, Any]) -> RunConfig:
    data = copy.deepcopy(study.base)
    data["seed"] = seed
    data["train"] = {**data.get("train", {}), **train, "finetune_epochs": 0}
    data["method"] = method
    return run_config_from_dict(data)


def search_config(study: Study, label: str, seed: int) -> RunConfig:
    """The method's search run: its rounds split ``train.epochs``; no fine-tuning (the study retrains)."""
    entry = dict(study.searches[label])
    train = entry.pop("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"methods ({label}): train: expected a table of overrides of base.train")
    return _config(study, seed, entry, train)


def ticket_config(study: Study, search_dir: Path, seed: int, round_: int, variant: str) -> RunConfig:
    method = {"name": "ticket", "source": str(search_dir.resolve()), "round": round_, **VARIANTS[variant]}
    return _config(study, seed, method, {"epochs": study.ticket_epochs})


def _run_or_resume(cfg: RunConfig, path: Path) -> dict[str, Any]:
    rd = RunDir(path)
    if rd.is_finished():
        rd.prepare(cfg, resume=True)  # refuses a directory of another configuration
        return rd.read_results()
    return run(cfg, path, resume=rd.checkpoint.is_file(), quiet=True)


def _lane(item: tuple[str, int], study: Study, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One method and seed: its search, then every chosen round's retrainings; the tickets' rows,
    and the runs with an epoch whose loss was no better than a uniform guess (``flagged``)."""
    label, seed = item
    where = out / label / f"seed{seed}"
    cfg = search_config(study, label, seed)
    flagged = []

    def note(results: dict[str, Any], path: Path) -> dict[str, Any]:
        if results.get("warnings"):
            flagged.append({"run_id": path.relative_to(out).as_posix(), "results": {
                "warnings": results["warnings"], "diverged_epochs": results.get("diverged_epochs")}})  # fmt: skip
        return results

    note(_run_or_resume(cfg, where / "search"), where / "search")
    fractions = [cfg.method.settings.fractions[r - 1] if cfg.method.settings.fractions else None
                 for r in range(1, cfg.method.settings.rounds + 1)]  # fmt: skip
    rows = []
    for r in study.rounds or range(1, cfg.method.settings.rounds + 1):
        for variant in study.variants:
            path = where / f"round-{r}" / variant
            results = note(_run_or_resume(ticket_config(study, where / "search", seed, r, variant), path), path)
            rows.append({"label": label, "method": cfg.method.name, "seed": seed, "round": r, "variant": variant,
                         "target_fraction": fractions[r - 1], "kept_fraction": results["kept_fraction"],
                         "test_accuracy": results["test_accuracy"], "params_after": results["params_after"],
                         "nonzero_params_after": results["nonzero_params_after"]})  # fmt: skip
    return rows, flagged


def run_study(study: Study, out: str | Path, jobs: int = 1, quiet: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) every search and retraining, one lane per method and seed, ``jobs`` at once;
    writes and returns the rows of ``lottery.json``."""
    check_jobs(jobs)
    out = Path(out)
    refuse_file(out, "a lottery study's directory")
    items = [(label, seed) for seed in study.seeds for label in study.searches]
    rows: list[dict[str, Any]] = []
    flagged: list[dict[str, Any]] = []
    with io.exclusive(out / ".lottery.lock", f"an `equiprune lottery` on {out}"):
        with bar(len(items), f"lottery {study.name}", "search", enabled=not quiet) as progress:

            def ended(item, lane):
                rows.extend(lane[0])
                flagged.extend(lane[1])
                progress.update(1)

            run_lanes(functools.partial(_lane, study=study, out=out), [[i] for i in items], jobs, ended)
        rows.sort(key=lambda r: (r["label"], r["seed"], r["round"], r["variant"]))
        flagged.sort(key=lambda r: r["run_id"])
        write_report(study, rows, out, flagged)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (label, round, variant)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["round"], r["variant"]), []).append(r)
    out = []
    for (label, round_, variant), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        out.append({"label": label, "round": round_, "variant": variant, "seeds": len(rs),
                    "kept_fraction": statistics.fmean(r["kept_fraction"] for r in rs),
                    "accuracy_mean": statistics.fmean(acc), "accuracy_std": spread})  # fmt: skip
    return out


def _search_lines(study: Study) -> list[str]:
    """Each label's method and the settings the study file gives it (the rest are the method's
    defaults): what a reader needs to compare two labels, such as two regularizers' λ."""
    lines = ["Searches (settings from the study file; the rest are each method's defaults):", ""]
    for label, entry in study.searches.items():
        given = ", ".join(f"{k} = {json.dumps(v)}" for k, v in entry.items() if k != "name")  # TOML-like
        lines.append(f"- `{label}`: {entry['name']}" + (f"; {given}" if given else ""))
    return lines


def write_report(study: Study, rows: list[dict[str, Any]], out: Path, flagged: list[dict[str, Any]] = ()) -> None:
    """``lottery.json``, ``lottery.md`` and ``lottery.png``; ``flagged``: the runs (``run_id``,
    ``results``' warnings) with an epoch no better than a uniform guess, listed below the table: a
    search that did not train chose its tickets from masks that moved under λ alone."""
    summary = summarise(rows)
    diverged = [{"run": r["run_id"], "warnings": r["results"]["warnings"]} for r in flagged]
    io.write_json(out / "lottery.json", {"name": study.name, "rows": rows, "summary": summary, "diverged": diverged})
    lines = [f"# Lottery study {study.name}", "",
             f"Every ticket retrained {study.ticket_epochs} epochs from its rewind point (ticket), from a fresh "
             "initialisation (reinit) or as a random mask with the same per-layer counts (random); test accuracy "
             f"in %, mean ± std over {len(study.seeds)} seed(s). Mask values per round: "
             "`<label>/seed<k>/search/masks.png`.",
             "", *_search_lines(study),
             "", "| method | round | weights left | " + " | ".join(study.variants) + " |",
             "|---|---:|---:|" + "---:|" * len(study.variants)]  # fmt: skip
    cells = {(s["label"], s["round"], s["variant"]): s for s in summary}
    for label, round_ in sorted({(s["label"], s["round"]) for s in summary}):
        here = [cells.get((label, round_, v)) for v in study.variants]
        kept = next(s["kept_fraction"] for s in here if s)
        acc = [f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}" if s else "" for s in here]
        lines.append(f"| {label} | {round_} | {100 * kept:.2f}% | " + " | ".join(acc) + " |")
    flagged_lines = diverged_lines(list(flagged))
    lines += ["", *flagged_lines[:-1]] if flagged_lines else []
    io.write_text(out / "lottery.md", "\n".join(lines) + "\n")
    plot_tickets(out / "lottery.png", summary)

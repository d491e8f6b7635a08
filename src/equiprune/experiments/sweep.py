"""Sweeps: methods × budgets (or cost settings) × seeds on one model and data, into one store.

A sweep file is TOML::

    name = "mnist-mlp-neurons"
    seeds = [0, 1, 2]
    budgets = [0.01, 0.02, 0.05, 0.1, 0.2]   # fractions of players kept

    [base]            # a run configuration as for `equiprune run`, without seed and [method]
    data = { dataset = "mnist" }
    train = { epochs = 20, finetune_epochs = 8 }

    [[methods]]       # one entry per method; keys besides these are the method's settings
    name = "taylor"   # the registered method
    label = "taylor"  # optional: its name in the report (default: name)
    train = { ... }   # optional: overrides of base.train for this method
    points = [ { gamma = 0.1 }, ... ]   # optional: settings to sweep instead of the budgets
    role = "baseline" # optional: "candidate" (judged against every baseline), "baseline" or
                      # "reference" (shown, never judged); default: the method's own (game: candidate)

A method with a ``budget`` setting runs once per budget; one without (the equilibrium pruner)
runs once per entry of ``points``; any other once. Every run is validated before the first one
starts. Each finished run lands in ``DIR/results.sqlite``; started again, the sweep skips finished
runs, resumes an interrupted one from its checkpoint, and counts nothing twice.

Runs go to this machine's process pool (``--jobs``), or as cluster jobs through submitit
(``experiments.cluster``: ``--executor slurm``, or ``local`` to try it here). Jobs only train into
their run directories; this process gathers their results into the store. A job claims its run's
directory (a lock beside it) for as long as it works there, so a job left running by a killed
sweep and the job a second call submits for the same run never train it both: the second waits,
then finds the run finished or resumes it from its checkpoint.
"""

from __future__ import annotations

import copy
import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equiprune import io
from equiprune.config import RunConfig, load_config, read_toml_file, run_config_from_dict
from equiprune.errors import ConfigError, PruningError, TrainingDiverged
from equiprune.experiments.cluster import ClusterSettings, submit_lanes, submitit_module
from equiprune.experiments.executors import check_jobs, run_lanes
from equiprune.experiments.loop import run
from equiprune.experiments.rundir import RunDir, refuse_file
from equiprune.experiments.setup import shared_training_digest
from equiprune.experiments.store import ResultStore
from equiprune.methods import METHODS
from equiprune.progress import bar, logger
from equiprune.schema import unknown_key

SWEEP_KEYS = ["name", "seeds", "budgets", "base", "methods"]
ENTRY_KEYS = {"name", "label", "train", "points", "preset", "exclude", "players", "role"}
ROLES = ("candidate", "baseline", "reference")


@dataclass
class PlannedRun:
    run_id: str  # "<label>/<point>/seed<seed>", also the run directory under DIR/runs
    label: str
    method: str
    point: str  # "budget=0.02", a point's settings ("gamma=0.35"), or "default"
    budget: float | None
    seed: int
    config: RunConfig

    @property
    def config_hash(self) -> str:
        return self.config.identity()


@dataclass
class Sweep:
    name: str
    budgets: list[float]
    runs: list[PlannedRun] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # label -> its part in the report (see ROLES)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file: every run's configuration is built (and so checked) here."""
    return read_toml_file(path, "sweep file", parse_sweep)


def parse_sweep(data: dict[str, Any]) -> Sweep:
    for key in data:
        if key not in SWEEP_KEYS:
            raise unknown_key(key, SWEEP_KEYS, "sweep")
    seeds = read_seeds(data)
    budgets = data.get("budgets", [])
    if not isinstance(budgets, list) or not all(isinstance(b, (int, float)) and 0 < b <= 1 for b in budgets):
        raise ConfigError(f"budgets: expected a list of fractions in (0, 1], got {budgets!r}")
    base = read_base(data, "sweep")
    entries = data.get("methods")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("methods: expected at least one [[methods]] entry")
    sweep = Sweep(name=str(data.get("name", "sweep")), budgets=[float(b) for b in budgets])
    labels = set()
    for i, entry in enumerate(entries):
        label = entry.get("label", entry.get("name")) if isinstance(entry, dict) else None
        where = f"methods[{i}]" + (f" ({label})" if label else "")
        try:
            runs = _expand(entry, base, seeds, sweep.budgets)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if label in labels:
            raise ConfigError(f"{where}: the label {label!r} is used twice; give one entry a distinct label")
        labels.add(label)
        sweep.runs += runs
        role = entry.get("role", METHODS.get(entry["name"]).default_role)
        if role not in ROLES:
            raise ConfigError(f"{where}: role: got {role!r}, expected one of {list(ROLES)}")
        sweep.roles[label] = role
    sweep.runs.sort(key=lambda r: r.seed)  # whole seeds first: a partial sweep is a usable one
    return sweep


def read_seeds(data: dict[str, Any]) -> list[int]:
    """A plan file's ``seeds`` (default ``[0]``), checked."""
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds: expected a non-empty list of integers >= 0, got {seeds!r}")
    return seeds


def read_base(data: dict[str, Any], who: str) -> dict[str, Any]:
    """A plan file's ``[base]``: a run configuration without the seed and method that ``who`` sets."""
    base = data.get("base", {})
    if not isinstance(base, dict) or "method" in base or "seed" in base:
        raise ConfigError(f"base: expected a run configuration table without 'seed' and 'method' (the {who} sets them)")
    return base


def _expand(entry: Any, base: dict[str, Any], seeds: list[int], budgets: list[float]) -> list[PlannedRun]:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError("expected a table with at least a 'name' (the method)")
    name = entry["name"]
    method_cls = METHODS.get(name, "name")
    label = entry.get("label", name)
    if not isinstance(label, str) or not label or "/" in label:
        raise ConfigError(f"label: expected a non-empty name without '/', got {label!r}")
    settings = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    fixed = {k: entry[k] for k in ("preset", "exclude", "players") if k in entry}
    if "points" in entry:
        points = entry["points"]
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
            raise ConfigError("points: expected a non-empty list of settings tables")
        variants = [(",".join(f"{k}={v}" for k, v in p.items()) or f"p{j}", None, p) for j, p in enumerate(points)]
        if len({tag for tag, _, _ in variants}) != len(variants):
            raise ConfigError("points: two points have the same settings")
    elif method_cls.budgeted and "budget" not in settings and method_cls.price_setting not in settings:
        if not budgets:
            raise ConfigError(f"method {name!r} takes a budget, but the sweep lists no budgets")
        variants = [(f"budget={b:g}", b, {"budget": b}) for b in budgets]
    else:
        variants = [("default", settings.get("budget"), {})]
    if "train" in entry and not isinstance(entry["train"], dict):
        raise ConfigError("train: expected a table of overrides of base.train")
    runs = []
    for tag, budget, point in variants:
        for seed in seeds:
            cfg_data = copy.deepcopy(base)
            cfg_data["seed"] = seed
            if "train" in entry:
                cfg_data["train"] = {**cfg_data.get("train", {}), **entry["train"]}
            cfg_data["method"] = {"name": name, **fixed, **settings, **point}
            cfg = run_config_from_dict(cfg_data)
            runs.append(PlannedRun(f"{label}/{tag}/seed{seed}", label, name, tag, budget, seed, cfg))
    return runs


def _same_run(out: Path, planned: PlannedRun) -> bool:
    """Whether the stored run's own config, read by this version of equiprune, is the planned one.

    A stored hash can differ though the run is the same: a newer version added a setting (which
    the stored config then takes at its default, as the run did), or hashed configurations
    another way (0.1 hashed the TOML text). Such a run need not be repeated."""
    path = RunDir(out / "runs" / planned.run_id).config
    try:
        return path.is_file() and load_config(path).identity() == planned.config_hash
    except ConfigError:  # a setting since removed or renamed: not provably the same run
        return False


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    quiet: bool = False,
    rerun: tuple[str, ...] = (),
    jobs: int = 1,
    only: tuple[str, ...] = (),
    cluster: ClusterSettings | None = None,
) -> dict[str, int]:
    """Run every planned run not yet in the store; returns counts of runs done and skipped.

    ``rerun``: labels whose stored runs (rows and run directories) are discarded first, to run a
    method again after changing its settings in the sweep file.
    ``only``: run the pending runs of these labels alone (``left`` counts the others' pending
    runs, which a later call runs). The plan, and so the report, stays the whole sweep: after
    adding seeds to a sweep file, ``only`` spends them on the comparisons in question.
    ``jobs``: runs at once, each in its own process (``parallel.run_lanes``); runs that share a
    training phase stay in one lane, in order (:func:`lanes`).
    ``cluster``: submit the lanes as jobs instead (one job per lane; ``jobs`` is then unused)."""
    check_jobs(jobs)
    if cluster is not None:
        submitit_module()  # missing: say so before any work
    out = Path(out)
    refuse_file(out, "a sweep's directory")
    # A second sweep on the same directory would train the same runs again and then fail to store them.
    with io.exclusive(out / ".sweep.lock", f"an `equiprune sweep` on {out}"):
        return _run_sweep(sweep, out, quiet, rerun, jobs, only, cluster)


def _run_sweep(sweep: Sweep, out: Path, quiet: bool, rerun: tuple[str, ...], jobs: int, only: tuple[str, ...],
               cluster: ClusterSettings | None):  # fmt: skip
    done = {"ran": 0, "resumed": 0, "skipped": 0, "failed": 0}
    if cluster is not None:  # runs finished by the jobs of an earlier call
        done["gathered"] = 0
    labels = {r.label for r in sweep.runs}
    for option, given in (("--rerun", rerun), ("--only", only)):
        for label in given:
            if label not in labels:
                raise ConfigError(f"{option} {label!r}: the sweep has no method labelled so; labels: {sorted(labels)}")
    with ResultStore(out / "results.sqlite") as store:
        for label in rerun:
            store.forget(label)
            shutil.rmtree(out / "runs" / label, ignore_errors=True)
        for planned in sweep.runs:  # refuse a changed plan before any work
            stored = store.config_hash(planned.run_id)
            if stored is not None and stored != planned.config_hash and not _same_run(out, planned):
                raise ConfigError(
                    f"{out} holds run {planned.run_id} with another configuration; to run method "
                    f"{planned.label!r} again with its new settings pass --rerun {planned.label}, "
                    "else choose another --out"
                )
        io.write_json(out / "sweep.json", {"name": sweep.name, "budgets": sweep.budgets, "roles": sweep.roles,
                                           "runs": [r.run_id for r in sweep.runs]})  # fmt: skip
        pending = [r for r in sweep.runs if store.config_hash(r.run_id) is None]
    done["skipped"] = len(sweep.runs) - len(pending)
    if only:
        selected = [r for r in pending if r.label in only]
        done["left"] = len(pending) - len(selected)
        pending = selected
    total = done["skipped"] + len(pending)
    runs_bar = bar(total, f"sweep {sweep.name}", "run", enabled=not quiet, initial=done["skipped"])

    def ended(planned: PlannedRun, how: tuple[str, ...]) -> None:
        for key in how:
            done[key] += 1
        runs_bar.set_postfix_str(planned.run_id)
        runs_bar.update(1)

    with runs_bar:
        if cluster is None:
            run_lanes(functools.partial(_run_one, out=out), lanes(pending), jobs, ended)
        else:
            _submit(pending, out, cluster, ended)
    return done


def _submit(pending: list[PlannedRun], out: Path, cluster: ClusterSettings, ended) -> None:
    """The pending runs as cluster jobs; runs a job of an earlier call finished are stored at once."""
    to_run = []
    for planned in pending:
        if RunDir(out / "runs" / planned.run_id).is_finished():
            _, status, results = _execute(planned, out)
            _store(planned, out, status, results)
            ended(planned, ("gathered",))
        else:
            to_run.append(planned)

    def gathered(planned: PlannedRun, outcome) -> None:
        how, status, results = outcome
        _store(planned, out, status, results)
        ended(planned, how or ("gathered",))  # (): a job of an earlier call had finished it

    submit_lanes(functools.partial(_execute_claimed, out=out), lanes(to_run), cluster, out / "submitit", gathered)


def _run_one(planned: PlannedRun, out: Path) -> tuple[str, ...]:
    """Run (or resume) one planned run and add its row to the store; returns what to count:
    ("ran",) or ("resumed",), with "failed" added when the run stopped with a clear error, or ()
    when it had finished but was killed before its row was written."""
    how, status, results = _execute(planned, out)
    _store(planned, out, status, results)
    return how


def _execute_claimed(planned: PlannedRun, out: Path) -> tuple[tuple[str, ...], str, dict[str, Any]]:
    """:func:`_execute` while holding the run's claim (a cluster job): a job still at work on the
    run, left by an earlier call, is waited for instead of trained beside."""
    claim = out / "runs" / f"{planned.run_id}.claim"
    with io.exclusive(claim, f"run {planned.run_id}", wait=True):
        return _execute(planned, out)


def _execute(planned: PlannedRun, out: Path) -> tuple[tuple[str, ...], str, dict[str, Any]]:
    """Run, resume or read one planned run: (what to count, its status, its results)."""
    rd = RunDir(out / "runs" / planned.run_id)
    status, how = "finished", ()
    if rd.is_finished():
        rd.prepare(planned.config, resume=True)  # refuses a directory of another configuration
        results = rd.read_results()
    else:
        resume = rd.checkpoint.is_file()
        how = ("resumed",) if resume else ("ran",)
        try:
            results = run(planned.config, rd.path, resume=resume, quiet=True, shared=out / "shared")
        except (PruningError, TrainingDiverged) as exc:  # an outcome of this setting, not a bug
            how += ("failed",)
            logger.warning(f"{planned.run_id}: failed: {exc}")
            status, results = "failed", {"error": str(exc)}
    return how, status, results


def _store(planned: PlannedRun, out: Path, status: str, results: dict[str, Any]) -> None:
    with ResultStore(out / "results.sqlite") as store:
        store.add(planned.run_id, label=planned.label, method=planned.method, point=planned.point,
                  budget=planned.budget, seed=planned.seed, config_hash=planned.config_hash,
                  results=results, status=status)  # fmt: skip


def lanes(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """The runs grouped for parallel execution, in plan order: runs that share a training phase
    (``setup.shared_training_digest``) form one lane that runs in order, so that the first trains
    that phase and the others reuse it; every other run is a lane of its own."""
    grouped: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in runs:
        digest = shared_training_digest(r.config)
        grouped.setdefault(("shared", digest) if digest else ("own", r.run_id), []).append(r)
    return list(grouped.values())

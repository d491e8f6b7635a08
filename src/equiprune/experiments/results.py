"""What a finished run reports: :class:`RunResults`, written as ``results.json``.

Runs written before ``schema_version`` existed (equiprune 0.1) named some figures differently;
:meth:`RunResults.from_dict` reads those names here, once, so that nothing else needs to know them:

| 0.1 name                | now             |
|-------------------------|-----------------|
| `neurons_kept_fraction` | `kept_fraction` |
| `neurons_kept`          | `kept`          |
| `neurons_total`         | `total`         |
| (absent)                | `kept_by_kind`: derived from `players` and the per-layer counts |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The version of the results.json layout that this equiprune writes.
SCHEMA_VERSION = 2

#: 0.1's names of figures that now have other ones.
LEGACY_NAMES = {"neurons_kept_fraction": "kept_fraction", "neurons_kept": "kept", "neurons_total": "total"}


@dataclass
class RunResults:
    """The figures of one finished run. Fractions are in [0, 1]; ``kept`` and ``total`` count the
    players of each layer (player group) and ``kept_by_kind`` sums them per kind of player."""

    method: str  # the registered method
    seed: int  # the run's seed
    dataset: str  # the dataset's name
    epochs: int  # every epoch of the run, fine-tuning included
    test_accuracy: float  # of the compacted (and fine-tuned) model
    test_loss: float  # mean cross-entropy of the compacted model on the test split
    test_accuracy_before_compaction: float | None  # of the trained model with its gates, before compaction
    kept_fraction: float  # players kept over players before pruning
    players: str  # the kind(s) of player pruned: "neuron", "filter+neuron", "weight", ...
    kept: dict[str, int]
    total: dict[str, int]
    kept_by_kind: dict[str, dict[str, int]]  # {"neuron": {"kept": 17, "total": 768}, ...}
    params_before: int  # parameters of the configured model
    params_after: int  # parameters of the compacted model
    macs_before: int  # multiply-accumulates of one example's forward pass, configured model
    macs_after: int  # the same for the compacted model
    seconds: float  # wall time of the run's epochs
    test_accuracy_after_compaction: float | None = None  # of the compacted model before fine-tuning
    compaction_flagged: bool = False  # compaction cost more than train.compaction_tolerance (see warnings)
    #: the prune decisions the method did not play, on the same trained model, before fine-tuning:
    #: {decision: {"kept_fraction", "kept", "test_accuracy_after_compaction"}} (the game's two rules)
    other_decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    undecided_fraction: float | None = None  # participations strictly inside (0.05, 0.95) at the end
    undecided_among_survivors: float | None = None  # the same among the players kept
    budget: float | None = None  # a budgeted method's fraction of players to keep
    #: a budgeted game: {"unit", "budget", "kept", "decided", "removed_by_fit", "restored_by_fit", "price"}:
    #: the game decided ``decided`` players, the fit to the budget removed or restored the rest
    budget_fit: dict[str, Any] | None = None
    nonzero_params_after: int | None = None  # unstructured results keep zeros
    shared_training: bool = False  # the training phase was reused from an identical run of a sweep
    warnings: list[str] = field(default_factory=list)  # per epoch no better than a uniform guess
    diverged_epochs: list[dict[str, Any]] = field(default_factory=list)  # {"epoch": N, "phase": ...}
    environment: dict[str, Any] = field(default_factory=dict)  # torch, threads, device, processes (ranks), precision
    schema_version: int = SCHEMA_VERSION  # 2; runs of equiprune 0.1 read as 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        """Results as written by this or an earlier equiprune (0.1's names read here, once)."""
        data = {LEGACY_NAMES.get(k, k): v for k, v in data.items()}
        if "kept_by_kind" not in data:
            kind = data.get("players", "unknown")  # 0.1 wrote the kinds already sorted and joined
            data["kept_by_kind"] = {kind: {"kept": sum(data["kept"].values()), "total": sum(data["total"].values())}}
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("schema_version", 1)
        return cls(**values)


def read_results(data: dict[str, Any]) -> dict[str, Any]:
    """A results dict of any version in the current layout (for the sweep store's rows)."""
    if "error" in data:  # a failed run's row: nothing to translate
        return data
    return RunResults.from_dict(data).to_dict()

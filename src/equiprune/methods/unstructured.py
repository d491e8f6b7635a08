"""Unstructured baselines: single weights are the players.

Every method here keeps exactly the budget's count of weights (``round(budget × N)`` of the
prunable weights, Linear and Conv layers, biases not counted) and differs in *when* and *by what*
it chooses:

- at initialisation, before any training: ``snip`` (|g ⊙ θ|), ``grasp`` (θ ⊙ Hg, gradient flow
  preservation) and ``synflow`` (data-free iterative synaptic flow, 100 rounds by default);
- at the end of training, then fine-tuned: ``weight-magnitude`` (|θ|; ``allocation`` global or
  layer-wise; one-shot or ``iterative``) and ``weight-random``;
- during training: ``gmp`` (gradual magnitude pruning, Zhu & Gupta 2017: sparsity follows
  s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³) between fractions ``start`` and ``end`` of the phase,
  pruning every ``every`` steps) and ``imp`` (iterative magnitude pruning with weight rewinding,
  the lottery-ticket procedure of :mod:`equiprune.methods.tickets`: ``rounds`` train–prune–rewind
  cycles within the phase, the optimizer and schedule restarted each round; the final ticket trains
  during the fine-tuning epochs).

A pruned weight is zeroed after every optimizer step and never revived. Compaction
(:func:`equiprune.core.weight_players.compact_unstructured`) removes the neurons the masks cut off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.core.compact import PruneResult
from equiprune.core.selection import Allocation, alive_metrics, cubic_fraction, geometric_fraction, top_k_among_alive
from equiprune.core.weight_players import WeightMasks, compact_unstructured
from equiprune.errors import ConfigError
from equiprune.methods.base import (
    METHODS,
    Calibration,
    Method,
    check_selection,
    require_at_least,
    require_calibration,
)
from equiprune.methods.tickets import TicketRounds, check_rounds


@dataclass(frozen=True)
class UnstructuredSettings:
    """``budget``: fraction of the prunable weights kept; ``allocation``: one global ranking (the
    default) or the same fraction per layer; ``calibration_batches``: batches a data-driven score
    averages over."""

    budget: float = 0.1
    allocation: Allocation = "global"
    calibration_batches: int = 8

    def __post_init__(self):
        check_selection(self)
        require_at_least(self, 1, "calibration_batches")


class UnstructuredPruner(Method):
    """Base: holds the weight masks, keeps pruned weights at zero, selects by :meth:`scores`."""

    player_kinds = ("weight",)
    settings_type = UnstructuredSettings
    #: when the budget is applied: "init" (before_run), "end" (finish) or "during" (subclass)
    when: str = "end"
    budgeted = True

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self._step = 0
        self._calibration: Calibration | None = None

    def scores(self, model: nn.Module, calibration: Calibration | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> nn.Module:
        self.masks = WeightMasks(model, self.exclude)
        return model

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        self._calibration = calibration
        self._total_steps = steps_per_epoch * epochs
        if self.when == "init" and self._step == 0:
            self.prune_to(trained, self.settings.budget)

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return "dense" if cls.when == "end" else None

    def after_step(self, trained: nn.Module) -> None:
        self._step += 1
        self.masks.apply()

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        self._calibration = calibration or self._calibration
        if self.when != "init":  # "during" schedules also land exactly on the budget here
            self.prune_to(trained, self.settings.budget)
        return compact_unstructured(trained, self.masks)

    def prune_to(self, model: nn.Module, fraction: float) -> None:
        """Keep ``fraction`` of all prunable weights, chosen by score among those still alive."""
        scores = self.scores(model, self._calibration)
        self.masks.set(top_k_among_alive(scores, self.masks.masks, fraction, self.settings.allocation))

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        return alive_metrics(self.masks.kept(), self.masks.sizes())

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self.masks.load_state_dict(state["masks"])


class _ByMagnitude(UnstructuredPruner):
    """Scores every weight by |θ|."""

    def scores(self, model, calibration=None):
        return {name: w.detach().abs() for name, w in self.masks.weights().items()}


# --- at the end of training ---------------------------------------------------------------------


@dataclass(frozen=True)
class MagnitudeSettings(UnstructuredSettings):
    schedule: Literal["one-shot", "iterative"] = "one-shot"  # prune once at the end, or in rounds during training
    rounds: int = 4  # with schedule = "iterative": geometric rounds down to the budget

    def __post_init__(self):
        super().__post_init__()
        require_at_least(self, 1, "rounds")


@METHODS.register("weight-magnitude")
class WeightMagnitude(_ByMagnitude):
    """Keep the largest |θ|: one global ranking, or the same fraction per layer (``allocation``).
    ``schedule = "iterative"`` prunes in ``rounds`` geometric steps during training."""

    name = "weight-magnitude"
    settings_type = MagnitudeSettings

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return "dense" if settings.schedule == "one-shot" else None

    def after_step(self, trained: nn.Module) -> None:
        super().after_step(trained)
        rounds = self.settings.rounds if self.settings.schedule == "iterative" else 1
        for r in range(1, rounds):
            if self._step == round(self._total_steps * r / rounds):
                self.prune_to(trained, geometric_fraction(self.settings.budget, r, rounds))


@METHODS.register("weight-random")
class WeightRandom(UnstructuredPruner):
    """Keep a uniformly random set of weights (torch's global RNG, which the run seeds)."""

    name = "weight-random"

    def scores(self, model, calibration=None):
        return {name: torch.rand_like(w, dtype=torch.float32) for name, w in self.masks.weights().items()}


# --- at initialisation --------------------------------------------------------------------------


@METHODS.register("snip")
class Snip(UnstructuredPruner):
    """SNIP (Lee et al., 2019): connection sensitivity |∂L/∂θ ⊙ θ| at initialisation."""

    name = "snip"
    when = "init"

    def scores(self, model, calibration=None):
        weights = self.masks.weights()
        calibration = require_calibration(calibration, "method 'snip' scores weights on training batches")
        saliency = calibration.mean_saliency(model, list(weights.values()), self.settings.calibration_batches)
        return dict(zip(weights, saliency))


@dataclass(frozen=True)
class GraspSettings(UnstructuredSettings):
    temperature: float = 200.0  # logits are divided by it, as in the paper's code

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature: must be > 0, got {self.temperature!r}")


@METHODS.register("grasp")
class Grasp(UnstructuredPruner):
    """GraSP (Wang et al., 2020): keep the weights whose removal least reduces gradient flow,
    i.e. drop the largest −θ ⊙ Hg; the score kept here is θ ⊙ Hg (larger is kept)."""

    name = "grasp"
    when = "init"
    settings_type = GraspSettings

    def scores(self, model, calibration=None):
        weights = list(self.masks.weights().values())
        calibration = require_calibration(calibration, "method 'grasp' scores weights on training batches")
        batches = list(calibration.batches(self.settings.calibration_batches))
        t = self.settings.temperature
        with torch.enable_grad():
            g = [torch.zeros_like(w) for w in weights]  # the gradient, summed over batches, held fixed
            for x, y in batches:
                for acc, gi in zip(g, torch.autograd.grad(F.cross_entropy(model(x) / t, y), weights)):
                    acc += gi
            hg = [torch.zeros_like(w) for w in weights]
            for x, y in batches:
                grads = torch.autograd.grad(F.cross_entropy(model(x) / t, y), weights, create_graph=True)
                z = sum((gi * gf).sum() for gi, gf in zip(grads, g))
                for acc, h in zip(hg, torch.autograd.grad(z, weights)):
                    acc += h
        return {name: w.detach() * h for name, w, h in zip(self.masks.weights(), weights, hg)}


@dataclass(frozen=True)
class SynflowSettings(UnstructuredSettings):
    iterations: int = 100  # rounds of scoring and pruning on the way to the budget (SynFlow's n)

    def __post_init__(self):
        super().__post_init__()
        require_at_least(self, 1, "iterations")


@METHODS.register("synflow")
class Synflow(UnstructuredPruner):
    """SynFlow (Tanaka et al., 2020): data-free; ``iterations`` rounds, each keeping
    budget^(k/iterations) of the weights by |θ ⊙ ∂R/∂θ|, R = 1ᵀ(Π|θ_l|)1 on an all-ones input."""

    name = "synflow"
    when = "init"
    settings_type = SynflowSettings

    def prune_to(self, model: nn.Module, fraction: float) -> None:
        probe = copy.deepcopy(model).double().eval()  # |θ| and float64: R grows with depth
        probe_masks = WeightMasks(probe, self.exclude)
        with torch.no_grad():
            for p in probe.parameters():
                p.abs_()
        calibration = require_calibration(
            self._calibration, "method 'synflow' reads the input shape from a training batch"
        )
        x = torch.ones(1, *calibration.input_shape, dtype=torch.float64)
        n = self.settings.iterations
        for k in range(1, n + 1):
            probe_masks.set(self.masks.masks)
            weights = list(probe_masks.weights().values())
            with torch.enable_grad():
                grads = torch.autograd.grad(probe(x).sum(), weights)
            scores = {name: (w.detach() * g).abs() for name, w, g in zip(probe_masks.weights(), weights, grads)}
            self.masks.set(top_k_among_alive(scores, self.masks.masks, geometric_fraction(fraction, k, n),
                                             self.settings.allocation))  # fmt: skip


# --- during training ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GmpSettings(UnstructuredSettings):
    start: float = 0.1  # fraction of the training phase where pruning begins
    end: float = 0.75  # ... and where it reaches the budget
    every: int = 100  # steps between prunings

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.start < self.end <= 1:
            raise ConfigError(f"method.start/end: need 0 <= start < end <= 1, got {self.start!r}, {self.end!r}")
        require_at_least(self, 1, "every")


@METHODS.register("gmp")
class GradualMagnitude(_ByMagnitude):
    """Gradual magnitude pruning with the cubic sparsity schedule of Zhu & Gupta (2017)."""

    name = "gmp"
    when = "during"
    settings_type = GmpSettings

    def keep_fraction(self, step: int) -> float:
        """The cubic schedule over [start, end] of the run's steps (see ``selection.cubic_fraction``)."""
        t0, t1 = self.settings.start * self._total_steps, self.settings.end * self._total_steps
        return cubic_fraction(self.settings.budget, step, t0, t1)

    def after_step(self, trained: nn.Module) -> None:
        super().after_step(trained)
        t0 = self.settings.start * self._total_steps
        if self._step >= t0 and (self._step - round(t0)) % self.settings.every == 0:
            self.prune_to(trained, self.keep_fraction(self._step))


@dataclass(frozen=True)
class ImpSettings(UnstructuredSettings):
    rounds: int = 4  # train, prune, rewind cycles within the training phase (the last at its end)
    rewind_step: int = 0  # survivors rewind to their weights after this many steps (0: the initialisation)
    rewind_epoch: int = 0  # ... or after this many epochs (give one of the two)
    fractions: list[float] | None = None  # each round's kept fraction (the last = budget); unset: geometric

    def __post_init__(self):
        super().__post_init__()
        check_rounds(self)


@METHODS.register("imp")
class IterativeMagnitudeRewind(_ByMagnitude):
    """Lottery tickets: train, prune the smallest weights, rewind the rest, repeat."""

    name = "imp"
    when = "during"
    settings_type = ImpSettings

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self.rounds = TicketRounds(settings)

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        super().before_run(trained, steps_per_epoch, epochs, calibration)
        self.rounds.start(trained, steps_per_epoch, epochs)

    @torch.no_grad()
    def _prune_and_rewind(self, model: nn.Module, fraction: float) -> None:
        self.prune_to(model, fraction)
        self.rounds.rewind(model, self.masks.masks)
        self.masks.apply()

    def after_step(self, trained: nn.Module) -> None:
        super().after_step(trained)
        self.rounds.after_step(trained, self._step)

    def before_step(self, trained: nn.Module) -> None:
        r = self.rounds.take_ended()
        if r is not None:  # the next round trains with a fresh optimizer and schedule
            self._prune_and_rewind(trained, self.rounds.fraction(r))

    def optimizer_restart(self) -> int | None:
        return self.rounds.take_restart()

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        return {**super().epoch_metrics(trained), "round": self.rounds.current(self._step)}  # as concave-mask's

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        # The final ticket: the budget's mask on the rewound weights; the fine-tuning epochs train it.
        self._prune_and_rewind(trained, self.settings.budget)
        return compact_unstructured(trained, self.masks)

    def tickets(self) -> dict[str, Any]:
        return self.rounds.tickets(method=self.name)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.rounds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rounds.load_state_dict(state)

"""Continuous sparsification: weights reparametrised so that training itself drives them to zero.

- ``spred`` (Ziyin & Wang, 2023): every selected weight becomes x = m ⊙ w with a constant weight
  decay ``decay`` on m and w. At balance (|m| = |w|) ``decay``/2·(m² + w²) = ``decay``·|x|: an L1
  penalty on x, reached through an implicit bias that starts out as L2 (see ``l1_position``).
- ``pilot`` (Jacobs & Burkholz, ICLR 2025, "Mask in the Mirror"): the same reparametrisation,
  started so that m ⊙ w = x and m² − w² = ``beta``, with the decay α moved per epoch: multiplied by
  ``delta`` while the training accuracy did not drop, ‖m ⊙ w‖₁ ≥ K (``l1_floor`` × its value at
  the start) and the epoch lies in the first half of the phase, else divided by ``delta``.
- ``str`` and ``cs`` (:mod:`equiprune.methods.soft_sparsifiers`).

Sparsity emerges in these methods instead of being set, so every one ends the same way: the
reparametrised model is folded into plain weights (x), the ``budget`` is met by magnitude of x
(weights: |x|; neurons and filters: the norm of a player's effective incoming weights), and
results.json's ``budget_fit`` says how many weights (or players) the method had left alive
(``decided``: |x| above ``zero_tol``) and how many the cut removed (``removed_by_fit``) or kept
although the method had zeroed them (``restored_by_fit``).

Players: single weights (``players = "weight"``, the default), or with ``players = "neuron"`` /
``"filter"`` one factor m per output row of a player's producer layer (x_row = m·w_row), so that
the implicit bias is a group lasso over neurons or filters. A method's ``decay`` replaces
``train.weight_decay`` on the tensors it reparametrises.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult, compact
from equiprune.core.players import attach, find_players
from equiprune.core.reparam import Product, balanced_factors, fold, l1_position, raw_weight, reparametrise
from equiprune.core.selection import Allocation, top_k_masks
from equiprune.core.weight_players import WeightMasks, compact_unstructured
from equiprune.errors import ConfigError, PruningError, TrainingDiverged
from equiprune.methods.base import METHODS, Calibration, Method, check_selection
from equiprune.methods.structured import l2_scores

#: A weight decay beyond this zeroes every weight within a few steps: PILoT's schedule stops there.
DECAY_OVERFLOW = 1.0


@dataclass(frozen=True)
class ContinuousSettings:
    """``budget``: fraction of the weights (or players) kept after the final cut by magnitude;
    ``allocation``: one global ranking or the same fraction per layer; ``zero_tol``: |x| at or
    below which a weight counts as zeroed by the method (its emergent sparsity)."""

    budget: float = 0.1
    allocation: Allocation = "global"
    zero_tol: float = 1e-4

    def __post_init__(self):
        check_selection(self)
        if not 0 < self.zero_tol < float("inf"):
            raise ConfigError(f"method.zero_tol: must be a finite number > 0, got {self.zero_tol!r}")


def require_decay(value: float, name: str = "decay") -> None:
    if not 0 <= value < float("inf"):
        raise ConfigError(f"method.{name}: a weight decay must be a finite number >= 0, got {value!r}")


class ContinuousSparsifier(Method):
    """Base: reparametrise in ``prepare`` (:meth:`make` per layer), fold and cut to the budget in
    ``finish``. Subclasses give :meth:`make`, :meth:`decay` (with :attr:`decayed_factor`), any
    further :meth:`penalty`, and their per-epoch metrics."""

    settings_type = ContinuousSettings
    player_kinds = ("weight", "neuron", "filter")
    budgeted = True
    #: the parametrisation's tensor that the weight decay acts on besides the raw weights ("m", "s")
    decayed_factor: ClassVar[str | None] = None

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        raise NotImplementedError

    def decay(self) -> float:
        """The weight decay α on the raw weights and the decayed factor, now."""
        return self.settings.decay

    # --- reparametrising ------------------------------------------------------------------------

    def _kind(self) -> str:
        return self.players or "weight"

    def _layer_names(self, model: nn.Module) -> tuple[str, ...]:
        """The layers to reparametrise: every prunable one (weights), else the producers of the
        configured kind's players, one factor per output row."""
        if self._kind() == "weight":
            return tuple(WeightMasks(model, self.exclude).layers)
        groups = find_players(model, self.exclude, (self._kind(),))
        if not groups:
            raise PruningError(f"method {self.name!r}: the model has no {self._kind()} players to reparametrise")
        for g in groups:
            if g.followers:
                raise PruningError(
                    f"method {self.name!r}: layer {g.producers[0][0]!r} is followed by {g.followers[0].name!r} "
                    "(BatchNorm), which undoes a factor on its rows; prune it with players = 'weight'"
                )
        return tuple(name for g in groups for name, _ in g.producers)

    def prepare(self, model: nn.Module) -> nn.Module:
        rows = self._kind() != "weight"
        self.reparams = reparametrise(model, self._layer_names(model), lambda w: self.make(w, rows))
        self._layers = {name: model.get_submodule(name) for name in self.reparams}
        for tensor in self.decayed_tensors():
            tensor.register_hook(functools.partial(self._with_decay, tensor))
        return model

    def decayed_tensors(self) -> list[torch.Tensor]:
        """The raw weights, and each parametrisation's :attr:`decayed_factor`."""
        tensors = [raw_weight(layer) for layer in self._layers.values()]
        if self.decayed_factor is not None:
            tensors += [getattr(p, self.decayed_factor) for p in self.reparams.values()]
        return tensors

    def _with_decay(self, tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` plus α·``tensor``: the gradient of the penalty α/2·‖tensor‖², added as the
        tensor's gradient is computed rather than built into the loss (a penalty over every weight
        cost as much as the rest of a small network's step). α is read at every step (PILoT's
        schedule)."""
        alpha = self.decay()
        return grad.add(tensor.detach(), alpha=alpha) if alpha else grad

    def weight_parameters(self, trained: nn.Module) -> list[Any]:
        """Two parameter groups: the method's own tensors (no optimizer decay: the method's
        ``decay`` is theirs) and every other parameter (``train.weight_decay``)."""
        own = [p for name, layer in self._layers.items()
               for p in (raw_weight(layer), *self.reparams[name].parameters())]  # fmt: skip
        ids = {id(p) for p in own}
        rest = [p for p in trained.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": own, "weight_decay": 0.0}]

    def unwrap(self, trained: nn.Module) -> nn.Module:
        return fold(trained)

    def pruned_kinds(self, trained: nn.Module) -> str:
        return self._kind()

    # --- measuring ------------------------------------------------------------------------------

    def effective(self) -> dict[str, torch.Tensor]:
        """Layer name -> the effective weight x, detached."""
        return {name: layer.weight.detach() for name, layer in self._layers.items()}

    def emergent_sparsity(self) -> float:
        """The share of weights (for neurons and filters: of rows) the method has brought to
        |x| <= ``zero_tol`` (a row by its norm)."""
        xs = list(self.effective().values())
        if self._kind() != "weight":
            xs = [x.flatten(1).norm(dim=1) for x in xs]
        zero = sum(int((x.abs() <= self.settings.zero_tol).sum()) for x in xs)
        return zero / sum(x.numel() for x in xs)

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        return {"emergent_sparsity": self.emergent_sparsity()}

    # --- the end: fold, cut to the budget, compact ----------------------------------------------

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        plain = fold(trained)
        if self._kind() == "weight":
            return self._cut_weights(plain)
        return self._cut_players(plain)

    def _keep(self, scores: dict[str, torch.Tensor], unit: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The budget's keep-masks by ``scores`` (|x|, or players' norms of x), and the ``budget_fit``
        record of what the cut did to what the method had left alive (above ``zero_tol``)."""
        keep = top_k_masks(scores, self.settings.budget, self.settings.allocation)
        alive = sum(int((s > self.settings.zero_tol).sum()) for s in scores.values())
        kept = sum(int(k.sum()) for k in keep.values())
        fit = {"unit": unit, "budget": self.settings.budget, "kept": kept, "decided": alive,
               "removed_by_fit": max(0, alive - kept), "restored_by_fit": max(0, kept - alive)}  # fmt: skip
        return keep, fit

    def _cut_weights(self, plain: nn.Module) -> PruneResult:
        masks = WeightMasks(plain, self.exclude)
        keep, fit = self._keep({name: w.detach().abs() for name, w in masks.weights().items()}, "weight")
        masks.set(keep)
        result = compact_unstructured(plain, masks)
        result.budget_fit = fit
        return result

    def _cut_players(self, plain: nn.Module) -> PruneResult:
        gated = attach(plain, self.exclude, (self._kind(),))
        keep, fit = self._keep(l2_scores(gated.groups), self._kind())
        result = compact(gated, keep)
        result.budget_fit = fit
        return result


# --- spred and PILoT: x = m ⊙ w ----------------------------------------------------------------


@dataclass(frozen=True)
class SpredSettings(ContinuousSettings):
    """``decay``: the weight decay on m and w (at balance |m| = |w|, the L1 strength on x)."""

    decay: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        require_decay(self.decay)


@METHODS.register("spred")
class Spred(ContinuousSparsifier):
    """x = m ⊙ w, m starting at 1, with a constant weight decay on m and w."""

    name = "spred"
    settings_type = SpredSettings
    divergence_hint = "method.decay"
    decayed_factor = "m"

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        shape = (weight.shape[0],) + (1,) * (weight.dim() - 1) if rows else weight.shape
        return Product(torch.ones(shape, dtype=weight.dtype, device=weight.device))

    def invariants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, |x|) per weight (per row for players): c = m² − w² is what gradient flow conserves."""
        cs, xs = [], []
        for name, layer in self._layers.items():
            m, w = self.reparams[name].m.detach(), raw_weight(layer).detach()
            if m.numel() == w.numel():
                cs.append((m * m - w * w).flatten())
                xs.append((m * w).abs().flatten())
            else:  # one factor per row: the row's norm plays |w|
                norms = w.flatten(1).norm(dim=1)
                cs.append(m.flatten() ** 2 - norms**2)
                xs.append(m.flatten().abs() * norms)
        return torch.cat(cs), torch.cat(xs)

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        c, x = self.invariants()
        return {**super().epoch_metrics(trained), "l1_position": l1_position(c, x), "decay": self.decay(),
                "l1_norm": float(x.sum())}  # fmt: skip


@dataclass(frozen=True)
class PilotSettings(ContinuousSettings):
    """``alpha_init``: the decay α at the start; ``delta`` > 1: its per-epoch factor; ``beta`` > 0:
    m² − w² at the start (1 in the paper); ``l1_floor``: K as a fraction of ‖m ⊙ w‖₁ at the start
    (α only grows while ‖m ⊙ w‖₁ ≥ K)."""

    alpha_init: float = 1e-3
    delta: float = 1.5
    beta: float = 1.0
    l1_floor: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        require_decay(self.alpha_init, "alpha_init")
        if not 1 < self.delta < float("inf"):
            raise ConfigError(f"method.delta: the schedule's factor must be > 1, got {self.delta!r}")
        if not 0 < self.beta < float("inf"):
            raise ConfigError(f"method.beta: m0² - w0² must be a finite number > 0, got {self.beta!r}")
        if not 0 <= self.l1_floor <= 1:
            raise ConfigError(f"method.l1_floor: K as a fraction of the starting ||m*w||_1 must lie in [0, 1], "
                              f"got {self.l1_floor!r}")  # fmt: skip


@METHODS.register("pilot")
class Pilot(Spred):
    """PILoT: spred started at m² − w² = β, its decay scheduled per epoch (see the module doc)."""

    name = "pilot"
    settings_type = PilotSettings
    divergence_hint = "method.alpha_init or method.delta"

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self._alpha = settings.alpha_init
        self._epochs_done = 0
        self._last_accuracy: float | None = None
        self._floor: float | None = None

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        x = weight.flatten(1).norm(dim=1).reshape(-1, *(1,) * (weight.dim() - 1)) if rows else weight
        m, _ = balanced_factors(x, self.settings.beta)
        return Product(m)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        with torch.no_grad():  # the effective weight stays the initialisation: w = x / m
            for name, layer in self._layers.items():
                w = raw_weight(layer)
                w.div_(self.reparams[name].m)
        return model

    def decay(self) -> float:
        return self._alpha

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        self._phase_epochs = epochs
        if self._floor is None:
            self._floor = self.settings.l1_floor * float(self.invariants()[1].sum())

    def after_epoch(self, trained: nn.Module, row: dict[str, Any]) -> None:
        self._epochs_done += 1
        accuracy = row["train_accuracy"]
        grow = (
            (self._last_accuracy is None or accuracy >= self._last_accuracy)
            and float(self.invariants()[1].sum()) >= self._floor
            and self._epochs_done <= self._phase_epochs / 2
        )
        alpha = self._alpha * self.settings.delta if grow else self._alpha / self.settings.delta
        if not alpha <= DECAY_OVERFLOW:
            raise TrainingDiverged(
                f"method 'pilot': the schedule drove the weight decay α to {alpha:.3g} after epoch "
                f"{self._epochs_done} (above {DECAY_OVERFLOW}, where every weight collapses to zero); "
                "lower method.delta or method.alpha_init"
            )
        self._alpha, self._last_accuracy = alpha, accuracy

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "epochs_done": self._epochs_done, "last_accuracy": self._last_accuracy,
                "floor": self._floor}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._alpha, self._epochs_done = state["alpha"], state["epochs_done"]
        self._last_accuracy, self._floor = state["last_accuracy"], state["floor"]

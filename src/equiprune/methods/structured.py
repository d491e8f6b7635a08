"""The classic structured baselines: score every player, keep the best for a budget.

Players are gated exactly as for the equilibrium pruner (a gate multiplies each neuron's output),
but here the gates are masks: 1 while a player lives, 0 once it is pruned. A pruner ranks the
live players by its score and keeps exactly the budget's count (see :mod:`equiprune.core.selection`):

- ``schedule = "one-shot"``: the network trains dense; at the end of the training phase the
  players are scored once and the budget applied; the loop then compacts and fine-tunes.
- ``schedule = "iterative"``: ``rounds`` prunings spread evenly over the training phase, each
  keeping a geometrically shrinking fraction (budget^(r/rounds) after round r), the network
  training on between rounds; the last round, at the end, lands on the budget exactly.

Scores: ``magnitude-l1`` / ``magnitude-l2`` (norm of the player's incoming weights and bias: a
neuron's row, a filter's kernels, summed over the layers a residual sum couples; BatchNorm scales
are not counted, as in L1-norm filter pruning, Li et al. 2017),
``random``, ``taylor`` (first-order Taylor estimate of the loss change on removal,
|s_i·∂L/∂s_i| = |Σ_batch activation × gradient|, averaged over calibration batches) and
``slimming`` (network slimming: the gates train with the weights under an L1 penalty λ·Σ|s_i|,
and |s_i| is the score; the surviving gates fold into the compacted weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult, compact
from equiprune.core.players import GatedModel
from equiprune.core.selection import (
    Allocation,
    alive_metrics,
    geometric_fraction,
    kept_total,
    round_widths,
    top_k_among_alive,
)
from equiprune.errors import ConfigError
from equiprune.methods.base import (
    METHODS,
    Calibration,
    Method,
    check_selection,
    require_at_least,
    require_calibration,
)
from equiprune.methods.game_math import squared_norms


@dataclass(frozen=True)
class StructuredSettings:
    """``budget``: fraction of players kept, in (0, 1]; ``schedule``: one-shot or iterative;
    ``rounds``: prunings of an iterative schedule; ``allocation``: per layer or one global ranking;
    ``calibration_batches``: training batches a data-driven score averages over; ``round_to``: keep a
    multiple of this many players in every group, the nearest to the budget's count (widths the CPU's
    kernels run at full rate; the budget is then met only approximately; 1: exactly)."""

    budget: float = 0.1
    schedule: Literal["one-shot", "iterative"] = "one-shot"  # prune once at the end, or in rounds during training
    rounds: int = 4  # with schedule = "iterative": geometric rounds down to the budget
    allocation: Allocation = "layerwise"
    calibration_batches: int = 16
    round_to: int = 1  # keep a multiple of this many players per group (8: hardware-friendly widths)

    def __post_init__(self):
        check_selection(self)
        require_at_least(self, 1, "rounds", "calibration_batches", "round_to")


class StructuredPruner(Method):
    """Base of the score-and-keep baselines; a subclass defines :meth:`scores`."""

    settings_type = StructuredSettings
    budgeted = True

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self._step = 0
        self._round_steps: list[int] = []  # steps after which an iterative round prunes
        self._rounds_done = 0
        self._masks: dict[str, torch.Tensor] | None = None  # the live players; None while all live
        self._calibration: Calibration | None = None

    def scores(self, trained: GatedModel, calibration: Calibration | None) -> dict[str, torch.Tensor]:
        """Higher is more important; one score per player of every group."""
        raise NotImplementedError

    # --- the hooks ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> GatedModel:
        return self.attach(model)

    def unwrap(self, trained: GatedModel) -> nn.Module:
        return trained.model

    def pruned_kinds(self, trained: GatedModel) -> str:
        return self.players or "+".join(sorted({g.kind for g in trained.groups}))

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        self._calibration = calibration
        total = steps_per_epoch * epochs
        rounds = self.settings.rounds if self.settings.schedule == "iterative" else 1
        # Rounds 1..R−1 fall inside the phase; round R is the final selection in finish().
        self._round_steps = [round(total * r / rounds) for r in range(1, rounds)]

    def weight_parameters(self, trained: GatedModel) -> list[nn.Parameter]:
        return trained.weight_parameters()  # the gates are masks here, never trained

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return "dense" if settings.schedule == "one-shot" else None

    @torch.no_grad()
    def after_step(self, trained: GatedModel) -> None:
        self._step += 1
        if self._rounds_done < len(self._round_steps) and self._step >= self._round_steps[self._rounds_done]:
            self._rounds_done += 1
            fraction = geometric_fraction(self.settings.budget, self._rounds_done, self.settings.rounds)
            self._apply(trained, self._select(trained, fraction))

    def finish(self, trained: GatedModel, calibration: Calibration | None = None) -> PruneResult:
        self._calibration = calibration or self._calibration
        return compact(trained, self._select(trained, self.settings.budget))

    def epoch_metrics(self, trained: GatedModel) -> dict[str, Any]:
        alive = {name: int(m.sum()) for name, m in self._alive(trained).items()}
        return alive_metrics(alive, {g.name: g.size for g in trained.groups})

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "rounds_done": self._rounds_done, "masks": self._masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step, self._rounds_done, self._masks = state["step"], state["rounds_done"], state["masks"]

    # --- selection ------------------------------------------------------------------------------

    def _select(self, trained: GatedModel, fraction: float) -> dict[str, torch.Tensor]:
        """Keep-masks for ``fraction`` of all players, chosen among the live ones by score."""
        sizes = {g.name: g.size for g in trained.groups}
        alive = self._alive(trained)
        want = kept_total(fraction, sizes)
        if want > sum(int(a.sum()) for a in alive.values()):  # never revive a pruned player
            return alive
        scores = self.scores(trained, self._calibration)
        masks = top_k_among_alive(scores, alive, fraction, self.settings.allocation)
        return round_widths(masks, scores, alive, self.settings.round_to) if self.settings.round_to > 1 else masks

    def _alive(self, trained: GatedModel) -> dict[str, torch.Tensor]:
        if self._masks is None:
            return {
                g.name: torch.ones(g.size, dtype=torch.bool, device=s.device)
                for g, s in zip(trained.groups, trained.gates)
            }
        return self._masks

    @torch.no_grad()
    def _apply(self, trained: GatedModel, masks: dict[str, torch.Tensor]) -> None:
        """Prune: zero the gates of the players ``masks`` drops, and remember who lives."""
        self._masks = masks
        for group, s in zip(trained.groups, trained.gates):
            s.mul_(masks[group.name].to(s.dtype))


def l2_scores(groups) -> dict[str, torch.Tensor]:
    """The L2 norm of every player's incoming weights and bias (BatchNorm scales not counted)."""
    return {g.name: squared_norms([b.detach() for b in g.blocks(followers=False)]).sqrt() for g in groups}


@METHODS.register("magnitude-l1")
class MagnitudeL1(StructuredPruner):
    """Keep the players whose incoming weights and bias have the largest L1 norm."""

    name = "magnitude-l1"

    def scores(self, trained, calibration=None):
        return {g.name: sum(b.detach().abs().sum(1) for b in g.blocks(followers=False)) for g in trained.groups}


@METHODS.register("magnitude-l2")
class MagnitudeL2(StructuredPruner):
    """Keep the players whose incoming weights and bias have the largest L2 norm."""

    name = "magnitude-l2"

    def scores(self, trained, calibration=None):
        return l2_scores(trained.groups)


@METHODS.register("random")
class RandomPruner(StructuredPruner):
    """Keep a uniformly random set of players (drawn from torch's global RNG, which the run seeds)."""

    name = "random"

    def scores(self, trained, calibration=None):
        return {g.name: torch.rand(g.size, device=s.device) for g, s in zip(trained.groups, trained.gates)}


@METHODS.register("taylor")
class TaylorPruner(StructuredPruner):
    """Keep the players whose removal the first-order Taylor expansion says costs the most loss."""

    name = "taylor"

    def scores(self, trained, calibration=None):
        calibration = require_calibration(calibration, "method 'taylor' scores players on training batches")
        saliency = calibration.mean_saliency(trained, list(trained.gates), self.settings.calibration_batches)
        return {grp.name: s for grp, s in zip(trained.groups, saliency)}


@dataclass(frozen=True)
class SlimmingSettings(StructuredSettings):
    """Adds ``l1``: the weight λ of the L1 penalty λ·Σ|s_i| on the gates while they train."""

    l1: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.l1 < float("inf"):  # finite, unlike require_at_least
            raise ConfigError(f"method.l1: must be a finite number >= 0, got {self.l1!r}")


@METHODS.register("slimming")
class NetworkSlimming(StructuredPruner):
    """Network slimming (Liu et al., 2017) with neuron gates in place of BatchNorm scales."""

    name = "slimming"
    settings_type = SlimmingSettings

    def weight_parameters(self, trained: GatedModel) -> list[nn.Parameter]:
        return trained.weight_parameters() + list(trained.gates)

    def penalty(self, trained: GatedModel) -> torch.Tensor:
        return self.settings.l1 * sum(s.abs().sum() for s in trained.gates)

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return f"slimming(l1={settings.l1!r})" if settings.schedule == "one-shot" else None

    @torch.no_grad()
    def after_step(self, trained: GatedModel) -> None:
        # The optimizer moves every gate; a pruned player's gate must stay at zero.
        if self._masks is not None:
            self._apply(trained, self._masks)
        super().after_step(trained)

    def scores(self, trained, calibration=None):
        return {g.name: s.detach().abs() for g, s in zip(trained.groups, trained.gates)}

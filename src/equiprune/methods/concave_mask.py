"""``concave-mask``: lottery tickets from a relaxed mask under a concave regularizer (Tartaglione et al.,
"Playing the lottery with concave regularizers", arXiv 2501.11135).

Every prunable weight θ computes as m ⊙ θ with a mask m ∈ [0, 1] learned jointly with θ (with
``players = "neuron"``, ``"filter"`` or ``"head"``, one mask per player gates its output, the gates of
:class:`~equiprune.core.players.GatedModel`): the loss
is L(m ⊙ θ) + λ·Σ R(m) with R a regularizer of :mod:`equiprune.core.mask_regularizers` (``log``,
``l1``, ``lp``, ``scad``, ``mcp``), and m takes projected gradient steps (clipped to [0, 1] after
every step). The masks start at ``mask_init`` (the paper's 0.5).

The training phase runs the ticket protocol of :mod:`equiprune.methods.tickets`: at the end of each
round the mask decides who stays, either the ``percentage`` way (the round's kept fraction, by m
among the survivors) or the ``threshold`` way (every survivor with m < ``threshold``; the budget then
only caps what the last round keeps, reported in ``budget_fit``), then the survivors rewind to the
rewind point and the masks restart at ``mask_init``. The phase ends with the final ticket: the last
round's mask on the rewound weights, the mask itself dropped (m = 1 on the survivors), which the
fine-tuning epochs train. The mask values per layer at the end of every round are kept in
``tickets.pt`` (histograms) and drawn in the run's ``masks.png``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult, compact, note_emptied_layer
from equiprune.core.mask_regularizers import regularizer
from equiprune.core.reparam import Product, fold, raw_weight
from equiprune.core.selection import Allocation, alive_metrics, top_k_among_alive
from equiprune.core.weight_players import WeightMasks, compact_unstructured
from equiprune.errors import ConfigError
from equiprune.methods.base import METHODS, Calibration, check_selection
from equiprune.methods.continuous import ContinuousSparsifier
from equiprune.methods.structured import l2_scores
from equiprune.methods.tickets import TicketRounds, check_rounds

HISTOGRAM_BINS = 20  # of mask values in [0, 1], per layer and round
MASK_LEVELS = 2**24  # a float32 mask's resolution in [0, 1]: masks equal at it rank by the tie-break


@dataclass(frozen=True)
class ConcaveMaskSettings:
    """The mask's regularizer and step, how a round decides, and the ticket protocol (``methods.tickets``)."""

    budget: float = 0.1  # fraction of the weights (or players) kept at the end
    allocation: Allocation = "global"  # one ranking of all masks, or the same fraction per layer
    regularizer: str = "log"  # R(m): log, l1, lp, scad, mcp (core.mask_regularizers), or one registered there
    lam: float = 1e-4  # λ, the weight of Σ R(m) (every R has slope 1 at m = 0)
    epsilon: float = 0.1  # R's scale: log's ε, lp's smoothing, the knee of scad and mcp
    p: float = 0.5  # lp's exponent, in (0, 1)
    a: float = 3.7  # the shape of scad (> 2) and mcp (> 1)
    mask_init: float = 0.5  # every mask's start (the paper's 0.5), again after each rewind
    mask_step: float = 20.0  # the masks' gradient is multiplied by it: under SGD their step is mask_step x train.lr
    selection: Literal["percentage", "threshold"] = "percentage"  # a round keeps its fraction, or every m >= threshold
    threshold: float = 0.01  # α: with selection = "threshold", masks below it are pruned
    rounds: int = 4  # train, prune, rewind cycles within the training phase (the last at its end)
    rewind_step: int = 0  # survivors rewind to their weights after this many steps (0: the initialisation)
    rewind_epoch: int = 0  # ... or after this many epochs (give one of the two)
    fractions: list[float] | None = None  # each round's kept fraction (the last = budget); unset: geometric

    def __post_init__(self):
        check_selection(self)
        check_rounds(self)
        if not 0 <= self.lam < float("inf"):
            raise ConfigError(f"method.lam: λ must be a finite number >= 0, got {self.lam!r}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"method.threshold: α must lie in (0, 1), got {self.threshold!r}")
        if not 0 < self.mask_init <= 1:
            raise ConfigError(f"method.mask_init: must lie in (0, 1], got {self.mask_init!r}")
        if not 0 < self.mask_step < float("inf"):
            raise ConfigError(f"method.mask_step: must be a finite number > 0, got {self.mask_step!r}")
        regularizer(self)  # its own parameters' ranges


@METHODS.register("concave-mask")
class ConcaveMask(ContinuousSparsifier):
    """A mask m ∈ [0, 1] per weight (or row) learned under λ·R(m), pruned by threshold or percentage,
    survivors rewound; ``rounds`` times."""

    name = "concave-mask"
    settings_type = ConcaveMaskSettings
    divergence_hint = "method.mask_step or method.lam"

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self.regularizer = regularizer(settings)
        self._step = 0
        self.rounds = TicketRounds(settings)
        self.alive: dict[str, torch.Tensor] = {}
        self.histograms: list[dict[str, list[int]]] = []
        self.budget_fit: dict[str, Any] | None = None

    # --- the mask ---------------------------------------------------------------------------------

    player_kinds = ("weight", "neuron", "filter", "head")

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        return Product(torch.full_like(weight, self.settings.mask_init))

    def decay(self) -> float:
        return 0.0

    def decayed_tensors(self) -> list[torch.Tensor]:
        return []  # θ keeps train.weight_decay; the masks have λ·R instead

    def prepare(self, model: nn.Module) -> nn.Module:
        if self._kind() == "weight":  # m ⊙ θ per weight
            trained = super().prepare(model)
            self._masks = {name: p.m for name, p in self.reparams.items()}
        else:  # one gate per player, read where its output is consumed (so BatchNorm followers are fine)
            trained = self._gated = self.attach(model)
            self._masks = {g.name: s for g, s in zip(trained.groups, trained.gates)}
        with torch.no_grad():
            for name, m in self._masks.items():
                m.fill_(self.settings.mask_init)
                self.alive[name] = torch.ones_like(m, dtype=torch.bool)
                m.register_hook(functools.partial(self._with_regularizer, m))
        return trained

    def unwrap(self, trained: nn.Module) -> nn.Module:
        return fold(trained) if self._kind() == "weight" else trained.model

    def _with_regularizer(self, m: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(``grad`` + λ·R'(m))·``mask_step``: the regularizer's gradient added as m's gradient is
        computed (cheaper than a loss term over every mask), then the masks' step scale."""
        s = self.settings
        return (grad + s.lam * self.regularizer.slope(m.detach()) if s.lam else grad) * s.mask_step

    def masks(self) -> dict[str, torch.Tensor]:
        """Layer (weights) or player group (structured) -> its mask tensor."""
        return self._masks

    def weight_parameters(self, trained: nn.Module) -> list[Any]:
        """The masks apart (no weight decay: λ·R is theirs), every other parameter as usual."""
        masks = list(self.masks().values())
        ids = {id(m) for m in masks}
        return [
            {"params": [p for p in trained.parameters() if id(p) not in ids]},
            {"params": masks, "weight_decay": 0.0},
        ]

    def penalty_value(self) -> float:
        """λ·Σ R(m) over the surviving masks."""
        with torch.no_grad():
            return self.settings.lam * sum(float(self.regularizer.value(m[self.alive[n]]).sum())
                                           for n, m in self.masks().items())  # fmt: skip

    # --- the protocol -----------------------------------------------------------------------------

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        self.rounds.start(trained, steps_per_epoch, epochs)

    @torch.no_grad()
    def after_step(self, trained: nn.Module) -> None:
        self._step += 1
        for name, m in self.masks().items():
            m.clamp_(0, 1).mul_(self.alive[name])  # the projection, and the pruned stay pruned
        self.rounds.after_step(trained, self._step)

    def before_step(self, trained: nn.Module) -> None:
        r = self.rounds.take_ended()
        if r is not None:
            self._end_round(trained, r)

    def optimizer_restart(self) -> int | None:
        return self.rounds.take_restart()

    @torch.no_grad()
    def _end_round(self, trained: nn.Module, r: int, last: bool = False) -> list[str]:
        """Choose round ``r``'s survivors by the masks, keep its ticket and histograms, and rewind."""
        masks = {name: m.detach() for name, m in self.masks().items()}
        self.histograms.append({name: torch.histc(m[self.alive[name]].float(), HISTOGRAM_BINS, 0, 1).int().tolist()
                                for name, m in masks.items()})  # fmt: skip
        notes: list[str] = []
        if self.settings.selection == "percentage":
            keep = top_k_among_alive(self._ranking(masks), self.alive, self.rounds.fraction(r),
                                     self.settings.allocation)  # fmt: skip
        else:
            keep = self._by_threshold(masks, notes)
            if last:
                keep = self._cap(masks, keep)
        self.alive = {name: keep[name].reshape(m.shape) for name, m in masks.items()}
        # tickets are weight masks (the ticket method retrains them); a structured one is its compacted model
        self.rounds.rewind(trained, self.alive if self._kind() == "weight" else None)
        for name, m in self.masks().items():
            m.copy_(self.alive[name] * self.settings.mask_init)
        return notes

    def _ranking(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The masks as ranking scores: by m, and among equal masks (many saturate at 0 or 1) by the size
        of what they gate, |θ| or a player's weight norm, rather than by position in the layer (ℓ1's
        masks collapse to 0 together, and index order then chose its tickets)."""
        if self._kind() == "weight":
            sizes = {name: raw_weight(layer).detach().abs() for name, layer in self._layers.items()}
        else:
            sizes = l2_scores(self._gated.groups)
        top = max(float(t.max()) for t in sizes.values()) or 1.0
        return {name: torch.floor(m.double() * MASK_LEVELS) + sizes[name].double() / (2 * top)
                for name, m in masks.items()}  # fmt: skip

    def _by_threshold(self, masks: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
        alpha = self.settings.threshold
        keep = {}
        for name, m in masks.items():
            keep[name] = self.alive[name] & (m >= alpha)
            if not bool(keep[name].any()):  # keep the network connected: the layer's largest mask stays
                ranked = torch.where(self.alive[name], m, -1.0)
                keep[name].view(-1)[int(torch.argmax(ranked))] = True
                note_emptied_layer(
                    name,
                    "mask",
                    float(m.max()),
                    f"threshold={alpha}",
                    m.numel(),
                    self._kind(),
                    notes,
                    "lower method.lam or method.threshold, or exclude this layer",
                )
        return keep

    def _cap(self, masks: dict[str, torch.Tensor], decided: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The threshold's survivors, cut by m to the budget where more survive; ``budget_fit`` says so."""
        alive = sum(int(k.sum()) for k in decided.values())
        total = sum(k.numel() for k in decided.values())
        keep = decided
        if alive > round(self.settings.budget * total):
            keep = top_k_among_alive(self._ranking(masks), decided, self.settings.budget, self.settings.allocation)
        kept = sum(int(k.sum()) for k in keep.values())
        self.budget_fit = {"unit": self._kind(), "budget": self.settings.budget, "kept": kept, "decided": alive,
                           "removed_by_fit": alive - kept, "restored_by_fit": 0}  # fmt: skip
        return keep

    # --- the end ----------------------------------------------------------------------------------

    @torch.no_grad()
    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        notes = self._end_round(trained, self.settings.rounds, last=True)
        for name, m in self.masks().items():
            m.copy_(self.alive[name])  # the ticket computes with θ on its survivors, the mask dropped
        if self._kind() == "weight":
            plain = fold(trained)
            masks = WeightMasks(plain, self.exclude)
            masks.set(self.alive)
            result = compact_unstructured(plain, masks)
        else:
            result = compact(trained, self.alive)
        result.notes, result.budget_fit = notes, self.budget_fit
        return result

    def tickets(self) -> dict[str, Any] | None:
        """Every round's mask and the rewind weights, for ``tickets.pt`` (weights only)."""
        if self._kind() != "weight":
            return None
        return self.rounds.tickets(histograms=self.histograms, method=self.name)

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        masks = self.masks()
        alive = {name: int(self.alive[name].sum()) for name in masks}
        sizes = {name: self.alive[name].numel() for name in masks}
        survivors = torch.cat([m.detach()[self.alive[n]].flatten() for n, m in masks.items()])
        return {**alive_metrics(alive, sizes), "mask_mean": float(survivors.mean()),
                "mask_below_threshold": float((survivors < self.settings.threshold).float().mean()),
                "mask_penalty": self.penalty_value(), "round": self.rounds.current(self._step)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "alive": self.alive, "histograms": self.histograms, "budget_fit": self.budget_fit,
                **self.rounds.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step, self.alive, self.histograms = state["step"], state["alive"], state["histograms"]
        self.budget_fit = state["budget_fit"]
        self.rounds.load_state_dict(state)

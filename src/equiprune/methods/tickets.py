"""The lottery-ticket protocol shared by ``imp`` and ``concave-mask``, and ``ticket``, which retrains a ticket.

A ticket is a weight mask plus the weights its survivors start from. Both ticket-finding methods
split their training phase into ``rounds`` equal rounds; each round trains, prunes (by |θ|, or by
the learned mask) to the round's kept fraction, rewinds the survivors to the rewind point and
restarts the optimizer and its schedule. The rewind point is the initialisation, or the weights
after ``rewind_step`` steps or ``rewind_epoch`` epochs of the first round. The kept fraction after
round r is ``fractions[r-1]`` when given, else budget^(r/rounds) (each round removes the same share).

Every round's mask is kept, and the run directory's ``tickets.pt`` holds them with the rewind
weights, so any round's ticket can be retrained apart: ``ticket`` does that (``source`` a run
directory), with the protocol's sanity baselines as settings: ``init = "reinit"`` trains the same
mask from a fresh initialisation, ``mask = "random"`` a random mask with the same per-layer counts.
``equiprune lottery`` (:mod:`equiprune.experiments.lottery`) runs the whole study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult
from equiprune.core.selection import geometric_fraction
from equiprune.core.weight_players import WeightMasks, compact_unstructured
from equiprune.errors import ConfigError
from equiprune.methods.base import METHODS, Calibration, Method, require_at_least

TICKETS_FILE = "tickets.pt"


def check_rounds(settings: Any) -> None:
    """The protocol's settings: ``rounds`` >= 1, one rewind point, ``fractions`` falling to the budget."""
    require_at_least(settings, 1, "rounds")
    require_at_least(settings, 0, "rewind_step", "rewind_epoch")
    if settings.rewind_step and settings.rewind_epoch:
        raise ConfigError(
            f"method.rewind_step/rewind_epoch: give one rewind point, in steps or in epochs, not both "
            f"(got {settings.rewind_step} steps and {settings.rewind_epoch} epochs)"
        )
    f = settings.fractions
    if f is None:
        return
    if len(f) != settings.rounds:
        raise ConfigError(f"method.fractions: one kept fraction per round; got {len(f)} for rounds = {settings.rounds}")
    if not all(0 < a <= 1 for a in f) or any(b >= a for a, b in zip(f, f[1:])):
        raise ConfigError(f"method.fractions: must fall strictly, each in (0, 1]; got {list(f)}")
    if abs(f[-1] - settings.budget) > 1e-12:
        raise ConfigError(f"method.fractions: the last round keeps the budget ({settings.budget}); got {f[-1]}")


class TicketRounds:
    """The rounds of a ticket-finding phase: where each ends, what it keeps, the rewind point's
    weights, every round's mask, and the optimizer restart after each rewind (a checkpoint keeps it
    all through :meth:`state_dict`)."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.masks: list[dict[str, torch.Tensor]] = []  # every round's, layer -> bool, weight-shaped
        self._restart: int | None = None
        self._ended: int | None = None  # a round that ended at the last step, not yet pruned and rewound

    def start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        """Lay the rounds over the phase's steps; at a rewind point of 0, keep the weights now."""
        self.length = max(1, steps_per_epoch * epochs // self.settings.rounds)
        self.rewind_step = self.settings.rewind_step or self.settings.rewind_epoch * steps_per_epoch
        if self.rewind_step >= self.length:
            raise ConfigError(
                f"method.rewind_step/rewind_epoch: the rewind point ({self.rewind_step} steps) is not inside the "
                f"first round ({self.length} steps); choose an earlier rewind point or fewer rounds"
            )
        if self.rewind_state is None and self.rewind_step == 0:  # a resumed run loads its own after this
            self._keep(model)

    def _keep(self, model: nn.Module) -> None:
        self.rewind_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def fraction(self, round_: int) -> float:
        """The fraction of weights kept after round ``round_`` (1-based)."""
        s = self.settings
        return s.fractions[round_ - 1] if s.fractions else geometric_fraction(s.budget, round_, s.rounds)

    def fractions(self) -> list[float]:
        return [self.fraction(r) for r in range(1, self.settings.rounds + 1)]

    def after_step(self, model: nn.Module, step: int) -> None:
        """Keep the rewind point's weights at its step, and note the round (1-based, before the last)
        that ``step`` ends, for :meth:`take_ended` (the last round ends in the method's ``finish``)."""
        if step == self.rewind_step:
            self._keep(model)
        r = step // self.length
        if step % self.length == 0 and 1 <= r < self.settings.rounds:
            self._ended = r

    def take_ended(self) -> int | None:
        """The round that ended at the last step, once, else None. The methods prune and rewind at the
        start of the next step (``Method.before_step``), not at the end of the round's last one: a
        round ends with an epoch, and the epoch's evaluation then sees the network the round trained,
        not the rewound one (which scores chance). Nothing runs in between, so the masks and weights
        are those the round ended with either way."""
        ended, self._ended = self._ended, None
        return ended

    def current(self, step: int) -> int:
        """The round whose network the model holds after ``step`` steps (1-based): a round that has
        ended but not yet been pruned and rewound is still the current one."""
        return self._ended or min(step // self.length + 1, self.settings.rounds)

    def rewind(self, model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
        """Record a round's weight ``masks`` (None: not a weight ticket), load the rewind point's
        weights into ``model``, and ask for a fresh optimizer for the next round."""
        if masks is not None:
            self.masks.append({name: m.detach().cpu().clone() for name, m in masks.items()})
        model.load_state_dict(self.rewind_state)
        self._restart = self.length

    def take_restart(self) -> int | None:
        """For ``Method.optimizer_restart``: the steps of the next round once after a rewind, else None."""
        restart, self._restart = self._restart, None
        return restart

    def tickets(self, **extra) -> dict[str, Any]:
        """What ``tickets.pt`` holds (:func:`tickets_payload`), the rewind weights under plain names."""
        return tickets_payload(self.masks, self.fractions(), plain_state(self.rewind_state), **extra)

    def state_dict(self) -> dict[str, Any]:
        return {"rewind": self.rewind_state, "round_masks": self.masks, "round_ended": self._ended}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rewind_state, self.masks = state["rewind"], state.get("round_masks", [])
        self._ended = state.get("round_ended")  # absent from checkpoints that rewound at the round's end


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's ``state`` with a reparametrised weight under its plain name and its raw tensor
    (``layer.parametrizations.weight.original`` -> ``layer.weight``; the mask's own tensors dropped):
    what a plain copy of the model loads as its weights θ."""
    out = {}
    for key, value in state.items():
        if ".parametrizations." in key:
            if not key.endswith(".parametrizations.weight.original"):
                continue
            key = key.replace(".parametrizations.weight.original", ".weight")
        out[key] = value.detach().clone()
    return out


def tickets_payload(masks: list[dict[str, torch.Tensor]], fractions: list[float], rewind: dict, **extra) -> dict:
    """What ``tickets.pt`` holds: every round's boolean masks (layer -> weight-shaped), the kept
    fraction each round aimed at, and the plain rewind weights."""
    return {"masks": [{k: v.cpu() for k, v in m.items()} for m in masks], "fractions": list(fractions),
            "rewind": {k: v.cpu() for k, v in rewind.items()}, **extra}  # fmt: skip


def load_tickets(source: str | Path) -> dict[str, Any]:
    """A run directory's (or a file's) tickets, with a clear error when there are none."""
    path = Path(source)
    if path.is_dir():
        path = path / TICKETS_FILE
    if not path.is_file():
        raise ConfigError(
            f"method.source: no tickets at {path}; give the run directory of an 'imp' or 'concave-mask' run "
            "(it writes tickets.pt when its training phase ends)"
        )
    return torch.load(path, map_location="cpu", weights_only=False)


def random_like(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random masks with each layer's count of kept weights (torch's global RNG, which the run seeds)."""
    out = {}
    for name, m in masks.items():
        order = torch.randperm(m.numel())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[order[: int(m.sum())]] = True
        out[name] = flat.reshape(m.shape)
    return out


@torch.no_grad()
def reinitialise(model: nn.Module) -> None:
    """Fresh weights for every layer that has its own initialiser, drawn from torch's global RNG
    after the ones the model was built with (so they differ from the rewind point's)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


@dataclass(frozen=True)
class TicketSettings:
    """Which ticket to retrain, and how (the sanity baselines: ``init = "reinit"``, ``mask = "random"``)."""

    source: str = ""  # the run directory of an imp or concave-mask run (its tickets.pt)
    round: int = 0  # which of its rounds' tickets, 1-based (0: the last)
    init: Literal["rewind", "reinit"] = "rewind"  # from the ticket's rewind weights, or a fresh initialisation
    mask: Literal["ticket", "random"] = "ticket"  # the ticket's mask, or a random one with the same count per layer

    def __post_init__(self):
        if not self.source:
            raise ConfigError("method.source: give the run directory whose ticket to train (an 'imp' or "
                              "'concave-mask' run)")  # fmt: skip
        require_at_least(self, 0, "round")


@METHODS.register("ticket")
class Ticket(Method):
    """Retrain a ticket of another run with its mask fixed: the lottery protocol's retraining, and
    with ``init``/``mask`` its two sanity baselines."""

    name = "ticket"
    settings_type = TicketSettings
    player_kinds = ("weight",)

    def prepare(self, model: nn.Module) -> nn.Module:
        s = self.settings
        tickets = load_tickets(s.source)
        rounds = len(tickets["masks"])
        if s.round > rounds:
            raise ConfigError(f"method.round: {s.source} holds {rounds} rounds' tickets; got round = {s.round}")
        masks = tickets["masks"][(s.round or rounds) - 1]
        self.masks = WeightMasks(model, self.exclude)
        wrong = {n: tuple(m.shape) for n, m in masks.items() if n not in self.masks.layers}
        wrong.update({n: tuple(m.shape) for n, m in masks.items()
                      if n in self.masks.layers and m.shape != self.masks.layers[n].weight.shape})  # fmt: skip
        if wrong or set(self.masks.layers) != set(masks):
            raise ConfigError(
                f"method.source: the ticket's masks {wrong or sorted(masks)} do not fit this model's layers "
                f"{ {n: tuple(m.weight.shape) for n, m in self.masks.layers.items()} }; use the source run's model"
            )
        if s.init == "rewind":
            model.load_state_dict(tickets["rewind"])
        else:
            reinitialise(model)
        self.masks.set(random_like(masks) if s.mask == "random" else masks)
        return model

    def after_step(self, trained: nn.Module) -> None:
        self.masks.apply()

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        return compact_unstructured(trained, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"])

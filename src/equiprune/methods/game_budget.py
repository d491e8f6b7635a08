"""The game at a requested size: a price for participation that the game sets itself.

With ``budget`` the L1 cost γ is not a setting but a price, a dual variable: raised while more
players participate than the target allows, lowered when fewer do. The target follows gradual
pruning's cubic schedule from everyone down to the budget over the ramp (``cost_ramp`` of the game's
steps, all of them when 0), so players leave a few at a time rather than in an avalanche, and the
price may sit on each layer's own cost weighting (``cost_weighting``) as γ did. The price is
signed: where the L2 cost alone would push out more players than the target allows, it becomes a
subsidy for participating. At the end the
decision is fitted to the budget to the player: where the equilibrium is off by a few, the
lowest-ranked survivors go or the best of the removed come back, and results.json says how many.

Sizes are counted in ``budget_unit``: players (the default), parameters or MACs of the whole model.
While the game plays, parameters and MACs are counted per player (its rows and the columns that
read it), which counts a weight between two removed players twice; the fit at the end measures
the compacted model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from equiprune.core.compact import compact
from equiprune.core.measure import count_macs, count_params, macs_per_player
from equiprune.core.players import GatedModel
from equiprune.core.selection import cubic_fraction, top_k_global
from equiprune.errors import ConfigError
from equiprune.methods.base import no_calibration


def unit_weights(gated: GatedModel, unit: str, input_shape) -> list[float]:
    """What one player of each group weighs in ``unit``, for the game's running count."""
    if unit == "players":
        return [1.0] * len(gated.groups)
    if unit == "macs":
        if input_shape is None:
            raise no_calibration("method.budget_unit = 'macs' reads the input shape from a training batch")
        return macs_per_player(gated, input_shape)
    if unit == "params":
        return [_params_per_player(g) for g in gated.groups]
    raise ConfigError(f"method.budget_unit: got {unit!r}, expected one of ['players', 'params', 'macs']")


def _params_per_player(group) -> float:
    rows = sum(float(b.shape[1]) for b in group.blocks())
    cols = sum(c.module.weight.numel() / c.width * c.repeat for c in group.consumers)
    return rows + cols


def model_size(model, unit: str, input_shape) -> float:
    """A plain model's size in ``unit`` (players are counted elsewhere)."""
    return float(count_params(model) if unit == "params" else count_macs(model, input_shape))


@dataclass
class Price:
    """γ as a dual variable of the size constraint, updated once per step of the game. It is
    signed: where the L2 cost alone prices out more players than the target allows, the price turns
    into a subsidy. It moves in the coordinate u = asinh(γ/scale), which is log-like for |γ| much
    larger than ``scale`` (so the price finds its order of magnitude, whether the utility is in loss
    units or, anchored, in the Fisher information's) and linear through 0. ``rate`` is how far u
    moves over the whole ramp at a relative gap of 1, so it means the same for any number of steps."""

    budget: float
    rate: float
    value: float
    scale: float
    start: float = 0.0  # the step the game begins
    end: float = 1.0  # the step the target reaches the budget

    def target(self, step: float) -> float:
        return cubic_fraction(self.budget, step, self.start, self.end)

    def update(self, step: float, size: float) -> float:
        """Raise the price when ``size`` (the fraction kept) is above the target, lower it below."""
        target = self.target(step)
        gap = max(-1.0, min(1.0, (size - target) / target))
        per_step = self.rate / max(self.end - self.start, 1.0)
        self.value = self.scale * math.sinh(math.asinh(self.value / self.scale) + per_step * gap)
        return self.value


def hold(strategies: list[torch.Tensor], units: torch.Tensor, target: float, epsilon: float):
    """Which players to keep in play so that the size is at least ``target``: None when the players
    at s >= epsilon already make it up, else per group the masks of the fewest best players (by s,
    across groups) that do."""
    s = torch.cat([t.detach().flatten() for t in strategies])
    w = torch.cat([torch.full((t.numel(),), float(u), dtype=torch.float64, device=s.device)
                   for t, u in zip(strategies, units.tolist())])  # fmt: skip
    # to the nearest player, as the fit counts: holding one more than it keeps would make the fit
    # remove a player the network plays (on MNIST at 2% that cost 0.7 points after fine-tuning)
    goal = target * float(w.sum()) - 0.5 * float(w.min())
    if float(w[s >= epsilon].sum()) >= goal:
        return None
    order = torch.sort(s, descending=True, stable=True).indices
    needed = int(torch.searchsorted(torch.cumsum(w[order], 0), goal)) + 1
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep[order[:needed]] = True
    return list(torch.split(keep, [t.numel() for t in strategies]))


def smallest_feasible(gated: GatedModel, unit: str, input_shape) -> float:
    """The smallest budget that keeps one player per layer, in ``unit``."""
    n = sum(g.size for g in gated.groups)
    if unit == "players":
        return len(gated.groups) / n
    one_each = {g.name: torch.arange(g.size, device=s.device) == int(torch.argmax(s))
                for g, s in zip(gated.groups, gated.gates)}  # fmt: skip
    return model_size(compact(gated, one_each).model, unit, input_shape) / model_size(gated.model, unit, input_shape)


def check_feasible(gated: GatedModel, budget: float, unit: str, input_shape) -> None:
    low = smallest_feasible(gated, unit, input_shape)
    n = sum(g.size for g in gated.groups)
    too_small = round(budget * n) < len(gated.groups) if unit == "players" else budget < low
    if too_small:
        raise ConfigError(
            f"method.budget: {budget:g} of the {unit} is less than one player per layer allows "
            f"({len(gated.groups)} layers); the smallest feasible budget is {low:.4g}"
        )


def ranks(primary: list[torch.Tensor], secondary: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every player's rank across all groups by ``primary``, ties broken by ``secondary`` (higher is
    better). The fit ranks by the game's decision, then by contribution: the survivors it removes
    are the ones contributing least, the removed it restores those contributing most (a
    contribution is relative to its layer's largest, so no layer is emptied by another's scale)."""
    p = torch.cat([t.detach().flatten().float().cpu() for t in primary])
    q = torch.cat([t.detach().flatten().float().cpu() for t in secondary])
    order = torch.sort(q, stable=True).indices
    order = order[torch.sort(p[order], stable=True).indices]
    rank = torch.empty_like(p)
    rank[order] = torch.arange(len(p), dtype=rank.dtype)
    return list(torch.split(rank, [t.numel() for t in primary]))


def fit(gated: GatedModel, decided: dict[str, torch.Tensor], rank: list[torch.Tensor], budget: float, unit: str,
        input_shape) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """Keep-masks of exactly the budget (to the player) by ``rank``, and what the fit changed
    against the game's own decision ``decided``."""
    names = [g.name for g in gated.groups]
    scores = {name: r.to(decided[name].device) for name, r in zip(names, rank)}
    n = sum(g.size for g in gated.groups)
    if unit == "players":
        k = min(n, max(len(names), round(budget * n)))
    else:  # the largest count whose compacted model fits: the size grows with every player added
        full = model_size(gated.model, unit, input_shape)
        fits = lambda k: model_size(compact(gated, top_k_global(scores, k)).model, unit, input_shape) <= budget * full  # noqa: E731
        low, high = len(names), n
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        k = low
    masks = top_k_global(scores, k)
    removed = sum(int((decided[m] & ~masks[m]).sum()) for m in names)
    restored = sum(int((masks[m] & ~decided[m]).sum()) for m in names)
    return masks, {"unit": unit, "budget": budget, "kept": k, "decided": sum(int(decided[m].sum()) for m in names),
                   "removed_by_fit": removed, "restored_by_fit": restored}  # fmt: skip

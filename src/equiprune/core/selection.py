"""Choosing which players to keep: a budget turned into exact per-layer counts, then top-k by score.

A budget is the fraction of all players to keep. It is met exactly, to the player:
``round(budget · N)`` players survive in all (at least one per layer, so the network stays
connected). ``"layerwise"`` allocation gives every layer the same fraction (largest remainders
decide the rounding); ``"global"`` ranks all players together, which only makes sense for scores
that are comparable across layers (Taylor, slimming gates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from equiprune.errors import ConfigError

Allocation = Literal["layerwise", "global"]


def kept_total(budget: float, sizes: Mapping[str, int]) -> int:
    """How many players a budget keeps: round(budget · N), at least one per layer, at most N."""
    if not 0 < budget <= 1:
        raise ConfigError(f"budget: must lie in (0, 1], got {budget!r}")
    total = sum(sizes.values())
    return min(total, max(len(sizes), round(budget * total)))


def layerwise_counts(budget: float, sizes: Mapping[str, int]) -> dict[str, int]:
    """Per-layer counts proportional to the layer sizes, summing exactly to ``kept_total``."""
    k = kept_total(budget, sizes)
    total = sum(sizes.values())
    exact = {name: k * n / total for name, n in sizes.items()}
    counts = {name: max(1, min(sizes[name], math.floor(v))) for name, v in exact.items()}
    # Hand out (or take back) the remainder one player at a time, largest fractional part first.
    order = sorted(sizes, key=lambda name: exact[name] - math.floor(exact[name]), reverse=True)
    while sum(counts.values()) != k:
        step = 1 if sum(counts.values()) < k else -1
        for name in order if step > 0 else reversed(order):
            if sum(counts.values()) == k:
                break
            if 1 <= counts[name] + step <= sizes[name]:
                counts[name] += step
    return counts


def top_k_masks(
    scores: Mapping[str, torch.Tensor], budget: float, allocation: Allocation = "layerwise"
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks with exactly ``kept_total(budget, sizes)`` players kept in all.

    Ties are broken by player index (lower kept first), so a selection is reproducible. Scores rank
    in float64, so a composite score (a level plus a tie-break below it) keeps its tie-break.
    """
    sizes = {name: int(s.numel()) for name, s in scores.items()}
    if allocation == "layerwise":
        counts = layerwise_counts(budget, sizes)
    elif allocation == "global":
        return top_k_global(scores, kept_total(budget, sizes))
    else:
        raise ConfigError(f"allocation: got {allocation!r}, expected 'layerwise' or 'global'")
    return {name: _top(scores[name], counts[name]) for name in scores}


def top_k_global(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Keep-masks of the ``k`` best players by one ranking across layers, one per layer guaranteed
    (``len(scores) <= k <= N``)."""
    counts = _global_counts(scores, k)
    return {name: _top(scores[name], counts[name]) for name in scores}


def top_k_among_alive(
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    budget: float,
    allocation: Allocation = "layerwise",
) -> dict[str, torch.Tensor]:
    """:func:`top_k_masks` where only live players compete: a pruned player (``alive`` False) ranks
    below every live one, so a selection never revives it while live players remain to keep."""
    ranked = {name: torch.where(alive[name], scores[name].detach().double(), float("-inf")) for name in scores}
    return top_k_masks(ranked, budget, allocation)


def round_widths(
    masks: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    multiple: int,
) -> dict[str, torch.Tensor]:
    """Every group's kept count moved to the nearest multiple of ``multiple`` (half-way rounds up;
    never below one multiple, never above the live players), by adding the best-scored live players
    left out or dropping the worst-scored kept ones. CPU kernels run widths such as 8, 16 or 32 at
    full vector rate and odd ones (11, 23, 45) slower; the budget is then met only approximately. A
    group with fewer live players than ``multiple`` stays as chosen."""
    rounded = {}
    for name, keep in masks.items():
        live, k = int(alive[name].sum()), int(keep.sum())
        down, up = k - k % multiple, k - k % multiple + (multiple if k % multiple else 0)
        target = up if (k % multiple) * 2 >= multiple or down == 0 else down
        if multiple <= 1 or live < multiple:
            rounded[name] = keep
            continue
        target = target if target <= live else down
        # the kept players first, then the live ones left out, then the dead; by score within each
        by_score = torch.sort(scores[name].detach().flatten().double().cpu(), descending=True, stable=True).indices
        tier = torch.where(keep.cpu(), 2, torch.where(alive[name].cpu(), 1, 0))[by_score]
        order = by_score[torch.sort(tier, descending=True, stable=True).indices]
        mask = torch.zeros(keep.numel(), dtype=torch.bool)
        mask[order[:target]] = True
        rounded[name] = mask.to(keep.device)
    return rounded


def geometric_fraction(budget: float, round_: int, rounds: int) -> float:
    """The fraction kept after round ``round_`` of ``rounds`` that shrink it geometrically to ``budget``:
    budget^(round_/rounds), so each round removes the same share of what is left."""
    return budget ** (round_ / rounds)


def cubic_fraction(budget: float, step: float, start: float, end: float) -> float:
    """The fraction kept at ``step`` under the cubic schedule of gradual pruning (Zhu & Gupta, 2017):
    1 − s_t, s_t = (1 − budget)·(1 − (1 − progress)³), progress clipped to [0, 1] over [start, end]
    (steps), so pruning is fast at first and slows as the network approaches its final size."""
    progress = min(1.0, max(0.0, (step - start) / max(end - start, 1)))
    return 1 - (1 - budget) * (1 - (1 - progress) ** 3)


def alive_metrics(kept: Mapping[str, int], total: Mapping[str, int]) -> dict[str, object]:
    """The per-epoch metrics of who is still in: ``players``, ``players_alive``, ``alive_fraction``
    and ``alive_per_layer`` (what metrics.jsonl and the dynamics plot read)."""
    players, alive = sum(total.values()), sum(kept.values())
    return {"players": players, "players_alive": alive, "alive_fraction": alive / players if players else 1.0,
            "alive_per_layer": dict(kept)}  # fmt: skip


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(score.detach().flatten().double().cpu(), descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.to(score.device)


def _global_counts(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, int]:
    """Per-layer counts from one ranking of all players, after one guaranteed player per layer.

    Vectorised (one sort over all players), since unstructured players number in the millions."""
    names = list(scores)
    rest, owner = [], []
    for i, name in enumerate(names):
        ranked = torch.sort(scores[name].detach().flatten().double().cpu(), descending=True, stable=True).values
        rest.append(ranked[1:])
        owner.append(torch.full((len(ranked) - 1,), i, dtype=torch.long))
    values, owners = torch.cat(rest), torch.cat(owner)
    chosen = owners[torch.sort(values, descending=True, stable=True).indices[: k - len(names)]]
    extra = torch.bincount(chosen, minlength=len(names))
    return {name: 1 + int(extra[i]) for i, name in enumerate(names)}

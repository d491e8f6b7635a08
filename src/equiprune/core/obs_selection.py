"""Which players to remove so that a least-squares refit can repair the most: structured Optimal
Brain Surgeon on the layer that reads them, from calibration data.

For a group whose players feed one linear layer (an MLP's down projection, an attention output
projection), removing a set of its input columns B and re-solving the layer's weights for the best
reproduction of its output costs, in squared output error over the calibration data,

    cost(B) = trace(W_B (Σ⁻¹)_BB⁻¹ W_Bᵀ),

where Σ is the Gram matrix of the layer's inputs (with a constant column for the bias) and W_B the
columns of B. Players leave one at a time, cheapest first, and after each removal W and Σ⁻¹ are
updated as if the layer had been refit (Hassibi & Stork's OBS, applied to whole players as in
Kurtic et al., 2023, "ZipLM"). Only the order is kept; :func:`equiprune.core.refit.refit_consumers`
then solves for the weights of the compacted model.

``allocation="global"`` ranks every group's removals by their running cost, so layers whose players
are cheap to lose give more of them. The costs are errors of each layer's output, so comparing
groups is meaningful when their readers write into one stream (a transformer's or a residual
network's blocks); ``"layerwise"`` removes the same fraction from every group.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from equiprune.core.players import GatedModel, PlayerGroup
from equiprune.core.refit import activation_at, with_constant
from equiprune.errors import PruningError

ALLOCATIONS = ("global", "layerwise")


def _reader(group: PlayerGroup) -> tuple[str, nn.Linear, int, int]:
    if len(group.consumers) != 1 or not isinstance(group.consumers[0].module, nn.Linear):
        kinds = [type(c.module).__name__ for c in group.consumers]
        raise PruningError(f"reconstruction selection needs one linear layer reading group {group.name!r}; "
                           f"it is read by {kinds}")  # fmt: skip
    c = group.consumers[0]
    return c.name, c.module, c.offset, c.repeat


@torch.no_grad()
def _input_gram(gated: GatedModel, name: str, batches: list[Any]) -> torch.Tensor:
    """Σ = Σ_tokens [x 1]ᵀ[x 1] of layer ``name``'s input (as the gates let it through), float64."""
    gram = None
    for batch in batches:
        x = with_constant(activation_at(gated, f"model.{name}", batch, "input"))
        part = (x.T @ x).double()
        gram = part if gram is None else gram + part
    return gram


def removal_order(weight: torch.Tensor, gram: torch.Tensor, players: torch.Tensor, ridge: float = 1e-2):
    """Greedy OBS over blocks of columns: ``players[p]`` holds player p's column indices of
    ``weight`` [outputs, inputs]; ``gram`` is Σ over those inputs (and any others, which stay).
    Returns (the players in the order they leave, each removal's cost); all but one leave."""
    inverse = torch.linalg.inv(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype))
    w = torch.cat([weight.double(), torch.zeros(len(weight), len(gram) - weight.shape[1], dtype=gram.dtype)], 1)
    alive = torch.ones(len(players), dtype=torch.bool)
    order, costs = [], []
    for _ in range(len(players) - 1):
        idx = players[alive]  # [alive players, columns each]
        blocks = inverse[idx.unsqueeze(2), idx.unsqueeze(1)]  # (Σ⁻¹)_BB for every alive B
        columns = w[:, idx].permute(1, 0, 2)  # [alive, outputs, columns]
        solved = torch.linalg.solve(blocks, columns.transpose(1, 2))  # (Σ⁻¹)_BB⁻¹ W_Bᵀ
        cost = (columns.transpose(1, 2) * solved).sum((1, 2))
        best = int(cost.argmin())
        player = int(alive.nonzero()[best])
        b = players[player]
        # the layer refit without B: W -= W_B (Σ⁻¹)_BB⁻¹ (Σ⁻¹)_B,: and Σ⁻¹ loses B (Schur complement)
        w -= solved[best].T @ inverse[b, :]
        inverse -= inverse[:, b] @ torch.linalg.solve(inverse[b][:, b], inverse[b, :])
        w[:, b] = 0
        alive[player] = False
        order.append(player)
        costs.append(float(cost[best]))
    return order, costs


def reconstruction_masks(
    gated: GatedModel,
    batches: Iterable[Any],
    budget: float,
    kind: str | None = None,
    allocation: str = "global",
    ridge: float = 1e-2,
) -> dict[str, torch.Tensor]:
    """Keep masks for every group of ``gated`` (those of ``kind`` pruned, the others whole) that
    keep ``budget`` of the pruned groups' players, chosen by :func:`removal_order` on ``batches``
    (the model's inputs: tensors, tuples or keyword mappings; no labels). Pass the result to
    :func:`equiprune.core.compact.compact`, then refit the compacted model."""
    if not 0 < budget <= 1:
        raise PruningError(f"budget must be a fraction in (0, 1] of the players to keep, got {budget}")
    if allocation not in ALLOCATIONS:
        raise PruningError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    batches = list(batches)
    if not batches:
        raise PruningError("reconstruction selection needs calibration batches; got none")
    masks = {g.name: torch.ones(g.size, dtype=torch.bool) for g in gated.groups}
    chosen = [g for g in gated.groups if kind is None or g.kind == kind]
    if not chosen:
        raise PruningError(f"no player group of kind {kind!r}; the model has {sorted({g.kind for g in gated.groups})}")
    removals = []  # (running cost, group, rank in its order, player)
    for group in chosen:
        name, layer, offset, repeat = _reader(group)
        players = offset + torch.arange(group.size * repeat).reshape(group.size, repeat)
        order, costs = removal_order(layer.weight.detach(), _input_gram(gated, name, batches), players, ridge)
        if allocation == "layerwise":
            masks[group.name][order[: group.size - max(1, round(group.size * budget))]] = False
        running = 0.0
        for rank, (player, cost) in enumerate(zip(order, costs)):
            running = max(running, cost)  # a layer's removals stay in its own order
            removals.append((running, group.name, rank, player))
    if allocation == "global":
        total = sum(g.size for g in chosen)
        for _, group_name, _, player in sorted(removals)[: total - round(total * budget)]:
            masks[group_name][player] = False
    return masks

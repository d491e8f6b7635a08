"""Compaction: remove pruned players and return a smaller plain ``nn.Module``.

A player's participation multiplies its neuron's output where the next layer reads it, so the
survivors' participations fold exactly into the consumer's input columns (``W[:, i]·s_i``), and a
removed neuron's rows and columns simply go. The compacted model computes exactly what the gated
model computes once the removed players' participations are set to zero, for any activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import PruningError
from .groups import GatedModel


@dataclass
class PruneResult:
    """A pruned model and how many players each layer kept."""

    model: nn.Module  # the smaller plain model
    kept: dict[str, int]  # player group name -> players kept
    total: dict[str, int]  # player group name -> players before pruning
    #: unstructured results only: parameter name (in ``model``) -> which entries may be non-zero;
    #: fine-tuning re-applies them after every step, so pruned weights stay pruned
    weight_masks: dict[str, torch.Tensor] | None = None

    @property
    def kept_fraction(self) -> float:
        total = sum(self.total.values())
        return sum(self.kept.values()) / total if total else 1.0


def keep_masks(gated: GatedModel, epsilon: float) -> dict[str, torch.Tensor]:
    """Which players survive (s_i >= epsilon), per group; refuses a group that loses everyone."""
    masks = {}
    for group, s in zip(gated.groups, gated.gates):
        keep = s.detach() >= epsilon
        if not bool(keep.any()):
            raise PruningError(
                f"every player of layer {group.name!r} dropped out (largest participation "
                f"{float(s.detach().max()):.3g} < epsilon={epsilon}): removing them would disconnect the "
                "network. Lower the costs (beta, gamma, eta), shorten the pruning phase, or exclude "
                "this layer."
            )
        masks[group.name] = keep
    return masks


def _slim_linear(old: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None, col_scale) -> nn.Linear:
    weight = old.weight.detach()
    bias = old.bias.detach() if old.bias is not None else None
    if cols is not None:
        weight = weight[:, cols] * col_scale[cols]
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


#: Activations with act(c·z) = c·act(z) for c > 0: a neuron's scale can move across them exactly.
POSITIVELY_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)


@torch.no_grad()
def rebalance(model: nn.Module, pairs: list[tuple[str, str]], tol: float = 1e-6, max_passes: int = 200) -> None:
    """Give every hidden neuron equal incoming and outgoing norms, without changing the function.

    A participation s_i folded into the consumer leaves the neuron lopsided: during the game the
    network compensates a small s_i with large incoming weights, so after folding the incoming row
    is large and the outgoing column small, a poor start for fine-tuning with a per-parameter
    optimizer. Across a positively homogeneous activation, scaling the incoming row (and bias) by
    k_i and the outgoing column by 1/k_i is exact; k_i = sqrt(‖out_i‖ / ‖in_i‖) makes both
    norms sqrt(‖in_i‖·‖out_i‖). ``pairs`` are (producer, consumer) Linear names, in forward order.

    Consecutive layers share weights (a consumer is the next pair's producer), so one pass unsettles
    the previous pair; passes repeat until every k_i is 1 to within ``tol`` (a few dozen suffice).
    """
    for _ in range(max_passes):
        largest_move = 0.0
        for producer_name, consumer_name in pairs:
            p, c = model.get_submodule(producer_name), model.get_submodule(consumer_name)
            rows = p.weight.square().sum(1) + (p.bias.square() if p.bias is not None else 0)
            cols = c.weight.square().sum(0)
            k = ((cols / rows.clamp_min(1e-30)) ** 0.25).where((rows > 0) & (cols > 0), torch.ones_like(rows))
            p.weight.mul_(k.unsqueeze(1))
            if p.bias is not None:
                p.bias.mul_(k)
            c.weight.div_(k.unsqueeze(0))
            largest_move = max(largest_move, float((k - 1).abs().max()))
        if largest_move < tol:
            return


@torch.no_grad()
def compact(gated: GatedModel, masks: dict[str, torch.Tensor], balance: bool = False) -> PruneResult:
    """The gated model without the players that ``masks`` (group name → bool per player) drops,
    the survivors' participations folded into the weights. ``gated`` itself is left unchanged.

    ``balance``: then :func:`rebalance` the neurons whose activations allow it exactly."""
    for group in gated.groups:
        keep = masks[group.name]
        if keep.shape != (group.size,) or keep.dtype != torch.bool:
            raise PruningError(
                f"mask of layer {group.name!r}: expected {group.size} booleans, got {keep.shape} {keep.dtype}"
            )
        if not bool(keep.any()):
            raise PruningError(
                f"the mask of layer {group.name!r} drops every player: the network would be disconnected"
            )
    model = gated.plain_copy()
    rows: dict[str, torch.Tensor] = {}
    cols: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group, s in zip(gated.groups, gated.gates):
        rows[group.name] = masks[group.name]
        cols[group.consumer_name] = (masks[group.name], s.detach())
    for name in sorted(set(rows) | set(cols)):
        col_keep, col_scale = cols.get(name, (None, None))
        new = _slim_linear(model.get_submodule(name), rows.get(name), col_keep, col_scale)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if balance:
        homogeneous = [g for g in gated.groups if all(isinstance(m, POSITIVELY_HOMOGENEOUS) for m in g.between)]
        rebalance(model, [(g.name, g.consumer_name) for g in homogeneous])
    kept = {k: int(v.sum()) for k, v in masks.items()}
    total = {g.name: g.size for g in gated.groups}
    return PruneResult(model, kept, total)

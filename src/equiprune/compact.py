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


@torch.no_grad()
def compact(gated: GatedModel, masks: dict[str, torch.Tensor]) -> PruneResult:
    """The gated model without the players that ``masks`` (group name → bool per player) drops,
    the survivors' participations folded into the weights. ``gated`` itself is left unchanged."""
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
    kept = {k: int(v.sum()) for k, v in masks.items()}
    total = {g.name: g.size for g in gated.groups}
    return PruneResult(model, kept, total)

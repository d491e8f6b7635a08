"""Compaction: remove pruned players and return a smaller plain ``nn.Module``.

A player's participation multiplies its channel where every consumer reads it, so the survivors'
participations fold exactly into the consumers' input columns (``W[:, i]·s_i``), and a removed
channel's producer rows, BatchNorm statistics and consumer columns simply go. The compacted model
computes exactly what the gated model computes once the removed players' participations are set to
zero, for any activation, across BatchNorm and residual sums.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from equiprune.core.players import GatedModel
from equiprune.errors import PruningError
from equiprune.progress import logger

#: How the warning begins when a layer's decision would remove every player (see :func:`keep_masks`).
EMPTIED_LAYER_WARNING = "every player would leave layer"
#: What that warning advises unless its caller knows better (a budgeted method, a mask method).
EMPTIED_LAYER_REMEDY = "lower the costs (beta, gamma, eta), set a budget, or exclude this layer"


@dataclass
class PruneResult:
    """A pruned model and how many players each layer kept."""

    model: nn.Module  # the smaller plain model
    kept: dict[str, int]  # player group name -> players kept
    total: dict[str, int]  # player group name -> players before pruning
    #: unstructured results only: parameter name (in ``model``) -> which entries may be non-zero;
    #: fine-tuning re-applies them after every step, so pruned weights stay pruned
    weight_masks: dict[str, torch.Tensor] | None = None
    #: player group name -> the kind of its players ("neuron", "filter", "head" or "weight")
    kinds: dict[str, str] | None = None
    #: what the decision had to overrule (a layer kept at one player), for results.json's warnings
    notes: list[str] = field(default_factory=list)
    #: a budgeted game's fit of its decision to the budget (see ``methods.game_budget.fit``)
    budget_fit: dict | None = None

    @property
    def kept_fraction(self) -> float:
        total = sum(self.total.values())
        return sum(self.kept.values()) / total if total else 1.0

    def kept_by_kind(self) -> dict[str, dict[str, int]]:
        """``{kind: {"kept": n, "total": m}}`` over the groups of each player kind."""
        out: dict[str, dict[str, int]] = {}
        for name, total in self.total.items():
            kind = (self.kinds or {}).get(name, "unknown")
            counts = out.setdefault(kind, {"kept": 0, "total": 0})
            counts["kept"] += self.kept[name]
            counts["total"] += total
        return out


def keep_masks(
    gated: GatedModel,
    threshold: float,
    scores: list[torch.Tensor] | None = None,
    rule: str = "epsilon",
    notes: list[str] | None = None,
    remedy: str | None = None,
) -> dict[str, torch.Tensor]:
    """Which players survive, per group: ``score >= threshold``, the score being the participation
    (the paper's rule, ``rule = "epsilon"``) or what ``scores`` gives (e.g. :func:`contributions`).

    A residual branch may lose everyone (the block then adds a constant). Any other group whose
    players would all go keeps its best-scoring one, since removing them all would disconnect the
    network; that is said through the logger and, when ``notes`` is a list, appended to it (the run
    keeps it in results.json's ``warnings``); ``remedy`` replaces the advice it ends with."""
    what = "participation" if scores is None else "contribution"
    scores = [s.detach() for s in gated.gates] if scores is None else scores
    masks = {}
    for group, s in zip(gated.groups, scores):
        keep = s >= threshold
        if not bool(keep.any()) and not group.bypassed:
            keep = torch.zeros_like(keep)
            keep[int(torch.argmax(s))] = True
            note_emptied_layer(group.name, what, float(s.max()), f"{rule}={threshold}", group.size, "player", notes,
                               remedy)  # fmt: skip
        masks[group.name] = keep
    return masks


def note_emptied_layer(
    layer: str,
    what: str,
    largest: float,
    rule: str,
    size: int,
    player: str,
    notes: list[str] | None,
    remedy: str | None = None,
) -> None:
    """Say (logger, and ``notes`` when a list) that a decision would have removed all ``size``
    players of ``layer`` and that it keeps its best one instead; ``remedy`` says what to change
    (default :data:`EMPTIED_LAYER_REMEDY`)."""
    message = (
        f"{EMPTIED_LAYER_WARNING} {layer!r} (largest {what} {largest:.3g} < {rule}): it keeps its best "
        f"{player}, since removing all {size} would disconnect the network; {remedy or EMPTIED_LAYER_REMEDY}"
    )
    logger.warning(message)
    if notes is not None:
        notes.append(message)


@torch.no_grad()
def contributions(gated: GatedModel) -> list[torch.Tensor]:
    """Each player's effective contribution, relative to the largest of its layer: s_i times the
    norm of what it reads (its producer rows, or its BatchNorm scale where one follows) times the
    norm of what reads it (its consumers' input columns). Moving scale between a participation and
    the weights around it (which leaves a ReLU network's function as it is) leaves it unchanged,
    unlike s_i alone: a player whose small s_i its weights make up for still counts."""
    out = []
    for group, s in zip(gated.groups, gated.gates):
        if group.followers:  # a BatchNorm normalises what the producer writes: its scale is what counts
            f = group.followers[-1]
            incoming = f.module.weight.detach()[f.offset : f.offset + group.size].abs()
        else:
            incoming = torch.sqrt(sum((b.detach() ** 2).sum(1) for b in group.blocks(followers=False)))
        outgoing = torch.sqrt(sum(_column_sq_norms(c, group.size) for c in group.consumers))
        c = s.detach().abs() * incoming * outgoing
        out.append(c / c.max().clamp_min(torch.finfo(c.dtype).tiny))
    return out


def _column_sq_norms(consumer, size: int) -> torch.Tensor:
    """Squared norms of the input columns a consumer reads from each of ``size`` players."""
    w = consumer.module.weight.detach()
    if isinstance(consumer.module, nn.Conv2d):
        cols = w[:, consumer.offset : consumer.offset + size]
        return (cols**2).sum(dim=(0, 2, 3))
    if isinstance(consumer.module, nn.Linear):
        cols = w[:, consumer.offset : consumer.offset + size * consumer.repeat]
        return (cols.reshape(w.shape[0], size, consumer.repeat) ** 2).sum(dim=(0, 2))
    raise PruningError(f"layer {consumer.name!r}: cannot measure what a {type(consumer.module).__name__} reads")


@dataclass
class _Cut:
    """What one layer keeps: output channels (``rows``), input features (``cols``) and their scale."""

    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    scale: torch.Tensor | None = None


def _full(current: torch.Tensor | None, width: int, fill: bool | float, like: torch.Tensor) -> torch.Tensor:
    """``current``, or a new vector of ``width`` × ``fill`` (what a layer keeps by default: all)."""
    return current if current is not None else torch.full((width,), fill, dtype=like.dtype, device=like.device)


def _slim(old: nn.Module, cut: _Cut) -> nn.Module:
    """A copy of ``old`` (Linear, Conv2d or BatchNorm) with only the kept rows and columns."""
    new = copy.deepcopy(old)
    if isinstance(old, nn.modules.batchnorm._BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(old, name)
            if t is not None:
                value = t.detach()[cut.rows]
                setattr(new, name, nn.Parameter(value) if isinstance(t, nn.Parameter) else value)
        new.num_features = int(cut.rows.sum())
        return new
    weight = old.weight.detach()
    bias = old.bias.detach() if old.bias is not None else None
    if cut.cols is not None:
        scale = cut.scale[cut.cols]
        weight = weight[:, cut.cols] * scale.view(1, -1, *([1] * (weight.dim() - 2)))
    if cut.rows is not None:
        weight = weight[cut.rows]
        bias = bias[cut.rows] if bias is not None else None
    new.weight = nn.Parameter(weight.clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.clone())
    if isinstance(old, nn.Linear):
        new.out_features, new.in_features = weight.shape[0], weight.shape[1]
    else:
        new.out_channels, new.in_channels = weight.shape[0], weight.shape[1]
    return new


#: Modules with f(c·z) = c·f(z) for c > 0: a channel's scale can move across them exactly.
POSITIVELY_HOMOGENEOUS = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)  # fmt: skip


def _rebalanceable(group) -> bool:
    """One producer and nothing else scaling the channels (no BatchNorm, which would undo a scale),
    positively homogeneous modules only in between, and consumers that read this group alone."""
    return (
        len(group.producers) == 1
        and group.row_pattern == (1, 1)
        and not group.followers
        and all(isinstance(m, POSITIVELY_HOMOGENEOUS) for m in group.between)
        and all(c.offset == 0 for c in group.consumers)
    )


@torch.no_grad()
def rebalance(
    model: nn.Module, pairs: list[tuple[str, list[tuple[str, int]]]], tol: float = 1e-6, max_passes: int = 200
) -> None:
    """Give every channel equal incoming and outgoing norms, without changing the function.

    A participation s_i folded into the consumers leaves the channel lopsided: during the game the
    network compensates a small s_i with large incoming weights, so after folding the incoming row
    is large and the outgoing columns small, a poor start for fine-tuning with a per-parameter
    optimizer. Across positively homogeneous modules, scaling the incoming row (and bias) by k_i
    and the outgoing columns by 1/k_i is exact; k_i = sqrt(‖out_i‖ / ‖in_i‖) makes both norms
    sqrt(‖in_i‖·‖out_i‖). ``pairs``: (producer, [(consumer, repeat), ...]) names, in forward order;
    a consumer reading each channel at ``repeat`` consecutive inputs (after a flatten) has all of
    them scaled.

    Consecutive layers share weights (a consumer is the next pair's producer), so one pass unsettles
    the previous pair; passes repeat until every k_i is 1 to within ``tol`` (a few dozen suffice).
    """
    for _ in range(max_passes):
        largest_move = 0.0
        for producer_name, consumers in pairs:
            p = model.get_submodule(producer_name)
            n = p.weight.shape[0]
            rows = p.weight.reshape(n, -1).square().sum(1) + (p.bias.square() if p.bias is not None else 0)
            cols = torch.zeros_like(rows)
            for name, repeat in consumers:
                w = model.get_submodule(name).weight
                cols += w.transpose(0, 1).reshape(n, -1).square().sum(1) if repeat == 1 else (
                    w.reshape(w.shape[0], n, repeat, -1).square().sum((0, 2, 3))
                )  # fmt: skip
            k = ((cols / rows.clamp_min(1e-30)) ** 0.25).where((rows > 0) & (cols > 0), torch.ones_like(rows))
            p.weight.mul_(k.view(-1, *([1] * (p.weight.dim() - 1))))
            if p.bias is not None:
                p.bias.mul_(k)
            for name, repeat in consumers:
                w = model.get_submodule(name).weight
                shape = (1, -1, *([1] * (w.dim() - 2)))
                w.div_((k.repeat_interleave(repeat) if repeat > 1 else k).view(shape))
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
        if not bool(keep.any()) and not group.bypassed:
            raise PruningError(
                f"the mask of layer {group.name!r} drops every player: the network would be disconnected"
            )
    model = gated.plain_copy()
    cuts: dict[str, _Cut] = {}
    for group, s in zip(gated.groups, gated.gates):
        keep, s = masks[group.name], s.detach()
        if not bool(keep.any()):
            # A residual branch that lost every channel: one silent channel stays (layers cannot have
            # width 0), its consumer columns zero, so the branch adds what its layers make of nothing.
            keep, s = torch.arange(group.size, device=keep.device) == 0, torch.zeros_like(s)
        for name, producer in group.producers:
            cuts.setdefault(name, _Cut()).rows = group.producer_rows(keep, producer)
        for f in group.followers:
            cut = cuts.setdefault(f.name, _Cut())
            cut.rows = _full(cut.rows, f.module.num_features, True, keep)
            cut.rows[f.offset : f.offset + group.size] = keep
        for c in group.consumers:
            cut = cuts.setdefault(c.name, _Cut())
            cut.cols, cut.scale = _full(cut.cols, c.width, True, keep), _full(cut.scale, c.width, 1.0, s)
            span = slice(c.offset, c.offset + group.size * c.repeat)
            cut.cols[span] = keep.repeat_interleave(c.repeat)
            cut.scale[span] = s.repeat_interleave(c.repeat)
    for name, cut in cuts.items():
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name) if parent_name else model, child, _slim(model.get_submodule(name), cut)
        )
    for group in gated.groups:
        for name, attribute in group.resize:
            setattr(model.get_submodule(name), attribute, max(1, int(masks[group.name].sum())))  # 1: silent
    if balance:
        pairs = [
            (g.producers[0][0], [(c.name, c.repeat) for c in g.consumers]) for g in gated.groups if _rebalanceable(g)
        ]
        rebalance(model, pairs)
    kept = {k: int(v.sum()) for k, v in masks.items()}
    total = {g.name: g.size for g in gated.groups}
    return PruneResult(model, kept, total, kinds={g.name: g.kind for g in gated.groups})

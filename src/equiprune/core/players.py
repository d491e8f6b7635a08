"""Players: the parameter groups of a model whose participation can be gated, and the gates.

A :class:`PlayerGroup` is a set of ``n`` players: the channels of one channel space (see
:mod:`equiprune.core.tracing`), i.e. the output neurons of a Linear layer or the filters of a Conv2d,
together with everything that must shrink with them: the BatchNorm statistics that follow them,
the other producers a residual sum couples them to, and the input columns of the layers that read
them. Each player owns a slice of those parameters; :meth:`PlayerGroup.blocks` returns them as
``(n, d_k)`` row views, so the game can compute norms, inner products and competition for all
players of a group in a few tensor operations, whatever the granularity.

The gate multiplies a player's channel where every consumer reads it (a forward pre-hook on the
consumer), so the network computes ``s_i·act(w_i·x + b_i)``. For ReLU this is the paper's "the
network uses s_i·θ_i"; unlike gating the pre-activation, it keeps ∂L/∂s_i = ⟨∂L/∂h_i, act(z_i)⟩
informative at s_i = 0 (a dropped player can come back), and folding s_i into the consumers' input
columns at the end is exact for every activation and across residual sums.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from equiprune.core.channel_spaces import Consumer, Follower, input_width
from equiprune.core.tracing import ELEMENTWISE, channel_spaces, check_exclude
from equiprune.errors import PruningError

#: The kinds of player equiprune can prune: hidden neurons of Linear layers, filters (output
#: channels) of Conv2d layers, attention heads (of ``equiprune.layers.MultiHeadSelfAttention``), and
#: single weights (unstructured pruning, see ``equiprune.core.weight_players``).
PLAYER_KINDS = ("neuron", "filter", "head", "weight")
STRUCTURED_KINDS = ("neuron", "filter", "head")

__all__ = ["ELEMENTWISE", "PLAYER_KINDS", "GatedModel", "PlayerGroup", "attach", "find_players"]


@dataclass
class PlayerGroup:
    """``size`` players: the channels that ``producers`` write (one row each), ``followers`` keep
    statistics of and ``consumers`` read (input columns). ``between``: the element-wise modules
    the channels pass through (the activation)."""

    name: str
    size: int
    producers: list[tuple[str, nn.Module]]
    consumers: list[Consumer]
    followers: list[Follower] = field(default_factory=list)
    between: list[nn.Module] = field(default_factory=list)
    #: a player's rows in each producer: ``repeat`` consecutive rows in each of ``tile`` blocks
    #: (an attention head: head_dim rows of the query, of the key and of the value projection). A
    #: producer with more rows gives each player proportionally more (grouped-query attention: a
    #: key/value head's group of query heads); :meth:`rows_per_player` says how many.
    row_pattern: tuple[int, int] = (1, 1)
    #: (module name, attribute) pairs that count this group's players (an attention layer's heads)
    resize: list[tuple[str, str]] = field(default_factory=list)
    kind: str = ""
    #: the signal has a path around this group (a residual branch): it may lose every player
    bypassed: bool = False

    def __post_init__(self):
        if not self.kind:
            self.kind = "filter" if isinstance(self.producers[0][1], nn.Conv2d) else "neuron"

    def rows_per_player(self, producer: nn.Module) -> int:
        """How many consecutive rows of each of ``tile`` blocks of ``producer`` one player owns."""
        return producer.weight.shape[0] // (self.size * self.row_pattern[1])

    def producer_rows(self, keep: torch.Tensor, producer: nn.Module) -> torch.Tensor:
        """Which rows of ``producer`` survive when ``keep`` says which players do."""
        repeat, tile = self.rows_per_player(producer), self.row_pattern[1]
        return keep.repeat_interleave(repeat).repeat(tile) if (repeat, tile) != (1, 1) else keep

    # The single producer and consumer of a plain Linear → activation → Linear group (an MLP's).
    @property
    def producer(self) -> nn.Module:
        return self.producers[0][1]

    @property
    def consumer(self) -> nn.Module:
        return self.consumers[0].module

    @property
    def consumer_name(self) -> str:
        return self.consumers[0].name

    @property
    def simple(self) -> bool:
        """One Linear producer read by one Linear consumer, nothing else: an MLP's hidden layer."""
        return (
            len(self.producers) == 1
            and isinstance(self.producer, nn.Linear)
            and not self.followers
            and len(self.consumers) == 1
            and isinstance(self.consumer, nn.Linear)
            and self.consumers[0].repeat == 1
            and self.consumer.in_features == self.size
        )

    def rows(self, followers: bool = True, grads: bool = False) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The players' parameters as ``(weight (n, d), bias (n,) or None)`` views: one pair per
        producer, then (with ``followers``) one per affine BatchNorm. ``grads``: their gradients
        instead, zeros where none exists."""

        def get(p: torch.Tensor | None) -> torch.Tensor | None:
            return grad_or_zeros(p) if p is not None and grads else p

        out = []
        for _, m in self.producers:
            repeat, tile = self.rows_per_player(m), self.row_pattern[1]
            if tile == 1 and repeat == 1:  # a Linear's weight is its rows already; a filter's flattens
                weight = get(m.weight)
                out.append((weight if weight.dim() == 2 else weight.view(self.size, -1), get(m.bias)))
                continue
            weight = get(m.weight).view(tile, self.size, -1)
            bias = get(m.bias).view(tile, self.size, -1) if m.bias is not None else None
            for t in range(tile):  # views: the query, key and value rows of every head
                out.append((weight[t], None))
                if bias is not None:
                    out.append((bias[t], None))
        if followers:
            for f in self.followers:
                if f.module.affine:
                    sl = slice(f.offset, f.offset + self.size)
                    out.append((get(f.module.weight)[sl].unsqueeze(1), get(f.module.bias)[sl]))
        return out

    def blocks(self, followers: bool = True, grads: bool = False) -> list[torch.Tensor]:
        """The players' parameters (or their gradients) as ``(n, d_k)`` row views (no copies)."""
        out = []
        for weight, bias in self.rows(followers, grads):
            out += [weight] if bias is None else [weight, bias.unsqueeze(1)]
        return out

    def grad_blocks(self) -> list[torch.Tensor]:
        """The gradients of :meth:`blocks`, aligned with them."""
        return self.blocks(grads=True)


def grad_or_zeros(p: torch.Tensor) -> torch.Tensor:
    """``p.grad``, or zeros shaped like ``p`` where backward left none (a player no loss reached)."""
    return p.grad if p.grad is not None else torch.zeros_like(p)


def find_players(
    model: nn.Module, exclude: Iterable[str] = (), kinds: Sequence[str] = STRUCTURED_KINDS
) -> list[PlayerGroup]:
    """One :class:`PlayerGroup` per prunable channel space of ``model`` (see :mod:`equiprune.core.tracing`).

    Spaces that reach the model's output or input (logits, image channels) have no players. A
    space a layer in ``exclude`` (or a layer inside a module it names: a whole block) produces is
    left ungated. A space that meets an operation the analysis cannot follow is an error naming
    the operation and the layers to exclude.
    """
    exclude = check_exclude(model, exclude)
    groups, blocked = [], []
    for space in channel_spaces(model):
        owners = set(space.producer_names) | {name for name, _ in space.resize}  # an attention layer, by name
        if space.fixed or any(owner == e or owner.startswith(e + ".") for owner in owners for e in exclude):
            continue
        if space.blocked:
            blocked.append(f"{', '.join(map(repr, space.producer_names))}: {space.blocked[0]}")
            continue
        if not space.consumers:  # computed but never read: nothing to gate
            continue
        name = space.resize[0][0] if space.kind == "head" else space.producer_names[0]
        group = PlayerGroup(
            name, space.size, space.producers, space.consumers, space.followers, space.between,
            space.row_pattern, space.resize, space.kind or "", space.bypassed,
        )  # fmt: skip
        if group.kind in kinds:
            groups.append(group)
    if blocked:
        raise PruningError(
            "cannot keep these layers' channels consistent when pruning them: "
            + "; ".join(blocked)
            + ". Exclude them (method.exclude = [...] in the config, or exclude=... in Python), "
            "or rewrite the operation with supported ones."
        )
    if not groups:
        raise PruningError(
            f"the model has no hidden layer with {' or '.join(kinds)} players: only a Linear or Conv2d layer "
            "whose output feeds another such layer (not the model's output) can be pruned"
        )
    return groups


class _GateHook:
    """Forward pre-hook multiplying a consumer's input channels by the participations that reach it.

    ``segments``: ``(offset, gate, repeat)`` per player group the consumer reads, sorted by offset;
    inputs no group covers pass unscaled."""

    def __init__(self, width: int, segments: list[tuple[int, torch.Tensor, int]], channels_first: bool):
        self.width, self.segments, self.channels_first = width, segments, channels_first
        # The common case (an MLP's, a plain CNN's): one group covering every input, once each.
        only = segments[0] if len(segments) == 1 else None
        self.whole = only[1] if only and only[0] == 0 and only[2] == 1 and only[1].numel() == width else None
        self.recorder: PerExampleGateGrads | None = None  # set while per-example gate gradients are wanted

    def scale(self) -> torch.Tensor:
        parts, pos = [], 0
        for offset, gate, repeat in self.segments:
            if offset > pos:
                parts.append(gate.new_ones(offset - pos))
            parts.append(gate if repeat == 1 else gate.repeat_interleave(repeat))
            pos = offset + gate.numel() * repeat
        if pos < self.width:
            parts.append(parts[-1].new_ones(self.width - pos))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __call__(self, module, args):
        scale = self.whole if self.whole is not None else self.scale()
        if self.channels_first:  # (N, C, H, W)
            scale = scale.view(-1, 1, 1)
        out = args[0] * scale
        if self.recorder is not None and self.recorder.active and out.requires_grad:
            x, recorder = args[0].detach(), self.recorder
            out.register_hook(lambda grad: recorder.add(x, grad, self.segments, self.channels_first))
        return (out, *args[1:])


class PerExampleGateGrads:
    """Each example's own gradient with respect to every gate, G[n, i] = ∂(mean loss)/∂s_i from
    example n alone (so ``G.sum(0)`` is the gate's ``.grad``), collected during backward from the
    gated inputs and their gradients: x·∂L/∂(s·x), summed over positions and over every consumer
    that reads the player."""

    def __init__(self, gates: Sequence[torch.Tensor]):
        self.gates = list(gates)
        self.index = {id(g): i for i, g in enumerate(self.gates)}
        self.grads: list[torch.Tensor | None] = [None] * len(self.gates)
        self.active = True  # off while nothing will read them (the equilibrium pruner's dense start)

    def clear(self) -> None:
        self.grads = [None] * len(self.grads)

    def add(self, x: torch.Tensor, grad: torch.Tensor, segments, channels_first: bool) -> None:
        p = x * grad
        n = p.shape[0]
        if p.dim() > 2:  # sum each example's positions: (N, C, H, W) or tokens (N, ..., C)
            p = p.flatten(2).sum(2) if channels_first else p.reshape(n, -1, p.shape[-1]).sum(1)
        for offset, gate, repeat in segments:
            block = p[:, offset : offset + gate.numel() * repeat]
            if repeat > 1:
                block = block.reshape(n, gate.numel(), repeat).sum(2)
            i = self.index[id(gate)]
            self.grads[i] = block if self.grads[i] is None else self.grads[i] + block

    def fisher(self) -> list[torch.Tensor]:
        """The empirical Fisher of each gate, mean over examples of (∂ℓ_n/∂s_i)², where ℓ_n is
        example n's loss (= batch size × its share of the mean loss); zeros for a gate that no
        backward pass reached since the last :meth:`clear`. Under torch.distributed it is averaged
        over ranks, so that participations stay identical on every rank."""
        out = [
            torch.zeros_like(s.detach()) if g is None else g.shape[0] * (g * g).sum(0)
            for s, g in zip(self.gates, self.grads)
        ]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for f in out:
                torch.distributed.all_reduce(f)
                f /= torch.distributed.get_world_size()
        return out


class GatedModel(nn.Module):
    """``model`` with a participation gate ``s ∈ [0,1]^n`` on every player group.

    The gates are parameters of this module (so ``state_dict``, ``.to(device)`` and DDP gradient
    all-reduce cover them), but they are not trained by the weight optimizer: use
    :meth:`weight_parameters` for that, and let a method update the gates.
    """

    def __init__(self, model: nn.Module, groups: Sequence[PlayerGroup]):
        super().__init__()
        self.model = model
        self.groups = list(groups)
        p = next(model.parameters())
        self.gates = nn.ParameterList(
            nn.Parameter(torch.ones(g.size, dtype=p.dtype, device=p.device)) for g in self.groups
        )
        self._handles = []
        self._hooks: list[_GateHook] = []
        self._recorder: PerExampleGateGrads | None = None
        self._attach_hooks()

    def _attach_hooks(self) -> None:
        reads: dict[str, tuple[nn.Module, list]] = {}
        for g, s in zip(self.groups, self.gates):
            for c in g.consumers:
                reads.setdefault(c.name, (c.module, []))[1].append((c.offset, s, c.repeat))
        for module, segments in reads.values():
            conv = isinstance(module, nn.Conv2d)
            hook = _GateHook(input_width(module), sorted(segments, key=lambda seg: seg[0]), channels_first=conv)
            hook.recorder = self._recorder
            self._handles.append(module.register_forward_pre_hook(hook))
            self._hooks.append(hook)

    def _detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._hooks = [], []

    def record_per_example(self, on: bool) -> PerExampleGateGrads | None:
        """Start (or stop) collecting per-example gate gradients in every backward pass."""
        self._recorder = PerExampleGateGrads(list(self.gates)) if on else None
        for h in self._hooks:
            h.recorder = self._recorder
        return self._recorder

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def participations(self) -> dict[str, torch.Tensor]:
        return {g.name: s.detach() for g, s in zip(self.groups, self.gates)}

    def plain_copy(self) -> nn.Module:
        """A deep copy of the underlying model without the gate hooks."""
        self._detach_hooks()
        try:
            return copy.deepcopy(self.model)
        finally:
            self._attach_hooks()


def attach(model: nn.Module, exclude: Iterable[str] = (), kinds: Sequence[str] = STRUCTURED_KINDS) -> GatedModel:
    """Gate every player of ``model`` (hidden neurons and filters); all participations start at 1."""
    return GatedModel(model, find_players(model, exclude, kinds))

"""Players: the parameter groups of a model whose participation can be gated, and the gates.

A :class:`PlayerGroup` is a set of ``n`` players that share one *gate site*: a module whose output
is multiplied, channel by channel, by the participations ``s`` (one per player). Each player owns a
slice of some parameters; :meth:`PlayerGroup.blocks` returns them as ``(n, d_k)`` row views, so the
game can compute norms, inner products and competition for all players of a group in a few tensor
operations, whatever the granularity (neurons today; filters, heads and single weights reuse the
same interface).

For a neuron of a ``Linear`` layer the gate multiplies the neuron's output as the next layer sees
it (a forward pre-hook on the consumer), so the network computes ``s_i·act(w_i·x + b_i)``. For
ReLU this is the paper's "the network uses s_i·θ_i"; unlike gating the pre-activation, it keeps
∂L/∂s_i = ⟨∂L/∂h_i, act(z_i)⟩ informative at s_i = 0 (a dropped player can come back), and folding
s_i into the consumer's input columns at the end is exact for every activation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .errors import PruningError

#: The kinds of player equiprune can prune today (filters and heads are planned): hidden neurons,
#: and single weights (unstructured pruning, see ``equiprune.masks``).
PLAYER_KINDS = ("neuron", "weight")

#: Modules that act element by element: a neuron's value passes through them unchanged in position,
#: so a Linear's output neurons stay aligned with the next Linear's inputs.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Dropout, nn.AlphaDropout, nn.Identity,
)  # fmt: skip


@dataclass
class PlayerGroup:
    """The output neurons of ``producer`` (a Linear), consumed by the inputs of ``consumer``.

    ``between`` holds the element-wise modules applied in between (the activation, dropout).
    """

    name: str
    producer: nn.Linear
    consumer: nn.Linear
    consumer_name: str
    between: list[nn.Module] = field(default_factory=list)
    kind: str = "neuron"

    @property
    def size(self) -> int:
        return self.producer.out_features

    @property
    def gate_site(self) -> nn.Module:
        """The module whose input (channel by channel) the participations multiply."""
        return self.consumer

    def rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The players' parameters as one ``(n, d)`` weight view and an optional ``(n,)`` bias."""
        return self.producer.weight, self.producer.bias

    def blocks(self) -> list[torch.Tensor]:
        """The players' parameters as ``(n, d_k)`` row views (no copies)."""
        weight, bias = self.rows()
        return [weight] if bias is None else [weight, bias.unsqueeze(1)]

    def grad_blocks(self) -> list[torch.Tensor]:
        """The gradients of :meth:`blocks`, aligned with them (zeros where no gradient exists)."""
        grads = []
        for p in [self.producer.weight, self.producer.bias]:
            if p is None:
                continue
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads.append(g if g.dim() == 2 else g.unsqueeze(1))
        return grads


def _leaves_in_order(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf modules of nested ``nn.Sequential`` containers, in execution order."""
    if not isinstance(model, nn.Sequential):
        raise PruningError(
            f"cannot discover neuron players in {prefix or 'the model'} ({type(model).__name__}): "
            "automatic discovery currently follows nn.Sequential chains of Linear layers and "
            "element-wise modules. Wrap the layers in nn.Sequential, or build the PlayerGroups yourself."
        )
    out = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out += _leaves_in_order(child, full)
        else:
            out.append((full, child))
    return out


def neuron_players(model: nn.Module, exclude: Iterable[str] = ()) -> list[PlayerGroup]:
    """One :class:`PlayerGroup` per hidden Linear layer of a Sequential model.

    A Linear followed (through element-wise modules only) by another Linear has players; the last
    Linear (the classifier) has none. ``exclude`` names Linear layers to leave ungated.
    """
    exclude = set(exclude)
    leaves = _leaves_in_order(model)
    names = {n for n, _ in leaves}
    unknown = exclude - names
    if unknown:
        raise PruningError(f"exclude names no layer of the model: {sorted(unknown)}; layers: {sorted(names)}")
    groups: list[PlayerGroup] = []
    pending: tuple[str, nn.Linear] | None = None
    between: list[nn.Module] = []
    for name, mod in leaves:
        if isinstance(mod, nn.Linear):
            if pending is not None and pending[0] not in exclude:
                groups.append(PlayerGroup(pending[0], pending[1], mod, name, between))
            pending, between = (name, mod), []
        elif isinstance(mod, ELEMENTWISE) or (isinstance(mod, nn.Flatten) and pending is None):
            if pending is not None:
                between.append(mod)
        else:
            raise PruningError(
                f"layer {name!r} ({type(mod).__name__}) sits where neuron players are traced and is "
                "neither Linear nor element-wise; neuron players cannot be kept aligned across it. "
                "Exclude the Linear layers around it by name, or restructure the model."
            )
    if not groups:
        raise PruningError("the model has no hidden Linear layer with neurons to gate")
    return groups


class _GateHook:
    """Forward pre-hook multiplying a Linear module's input features by a participation vector."""

    def __init__(self, gate: torch.Tensor):
        self.gate = gate

    def __call__(self, module, args):
        return (args[0] * self.gate, *args[1:])


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
        self._attach_hooks()

    def _attach_hooks(self) -> None:
        for g, s in zip(self.groups, self.gates):
            self._handles.append(g.gate_site.register_forward_pre_hook(_GateHook(s)))

    def _detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def forward(self, x):
        return self.model(x)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def participations(self) -> dict[str, torch.Tensor]:
        return {g.name: s.detach() for g, s in zip(self.groups, self.gates)}

    def plain_copy(self) -> nn.Module:
        """A deep copy of the underlying model without the gate hooks."""
        import copy

        self._detach_hooks()
        try:
            return copy.deepcopy(self.model)
        finally:
            self._attach_hooks()


def attach(model: nn.Module, exclude: Iterable[str] = ()) -> GatedModel:
    """Gate every neuron of ``model``'s hidden Linear layers; all participations start at 1."""
    return GatedModel(model, neuron_players(model, exclude))

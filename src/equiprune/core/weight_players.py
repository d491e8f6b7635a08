"""Single weights as players: boolean masks over a model's weight matrices, and their compaction.

Unstructured pruning zeroes individual weights; a dense layer does not get smaller by that alone.
Compaction therefore (1) zeroes the pruned weights for good and (2) removes every hidden neuron
that the masks have cut off: a neuron with no outgoing weight left contributes nothing, and one
with no incoming weight left outputs the constant act(bias), which folds exactly into the next
layer's bias. What remains is a plain, smaller ``nn.Module`` whose outputs equal the masked
model's; its remaining zeros are counted by ``measure.nonzero_params``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from equiprune.core.compact import PruneResult, compact, note_emptied_layer
from equiprune.core.players import GatedModel, find_players
from equiprune.errors import PruningError

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_parameters(
    model: nn.Module, include_biases: bool = False, exclude: Iterable[str] = ()
) -> list[nn.Parameter]:
    """The weights of every Linear and Conv layer (not in ``exclude``), each followed by its bias
    when ``include_biases``: what magnitude pruning ranks, in ``named_modules`` order."""
    exclude = set(exclude)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE) and name not in exclude:
            out.append(m.weight)
            if include_biases and m.bias is not None:
                out.append(m.bias)
    return out


class WeightMasks:
    """One boolean mask per prunable weight (Linear and Conv layers, biases excluded)."""

    def __init__(self, model: nn.Module, exclude: Iterable[str] = ()):
        exclude = set(exclude)
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE) and name not in exclude}
        unknown = exclude - {name for name, _ in model.named_modules()}
        if unknown:
            raise PruningError(f"exclude names no layer of the model: {sorted(unknown)}")
        if not self.layers:
            raise PruningError("the model has no Linear or Conv layer whose weights could be pruned")
        self.masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in self.layers.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: m.weight for name, m in self.layers.items()}

    def sizes(self) -> dict[str, int]:
        return {name: mask.numel() for name, mask in self.masks.items()}

    def kept(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.masks.items()}

    def set(self, masks: dict[str, torch.Tensor]) -> None:
        """Adopt new masks (flat or shaped) and zero the weights they drop."""
        self.masks = {name: masks[name].reshape(m.weight.shape).to(m.weight.device) for name, m in self.layers.items()}
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (after every optimizer step: the optimizer moves them all)."""
        for name, m in self.layers.items():
            m.weight.mul_(self.masks[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: mask.cpu() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.set(state)


@torch.no_grad()
def compact_unstructured(model: nn.Module, masks: WeightMasks) -> PruneResult:
    """The masked model without the hidden neurons the masks cut off (see the module doc).

    ``kept``/``total`` count weights per layer, the players of unstructured pruning."""
    masks.apply()
    small = copy.deepcopy(model)
    try:  # hidden Linear → activation → Linear layers; other layers keep their shape, zeros and all
        groups = [g for g in find_players(small) if g.simple]
    except PruningError:
        groups = []
    keep = {}
    for g in groups:
        w_in, w_out = g.producer.weight, g.consumer.weight
        no_input = ~(w_in != 0).any(dim=1)
        no_output = ~(w_out != 0).any(dim=0)
        if no_input.any():
            # Such a neuron outputs act(b_i) whatever the input: fold it into the consumer's bias.
            b = g.producer.bias if g.producer.bias is not None else torch.zeros(g.size, device=w_in.device)
            constant = b * no_input
            for m in g.between:
                constant = m.eval()(constant)
            constant = constant * no_input  # only the removed, input-less neurons
            if g.consumer.bias is None:
                raise PruningError(f"layer {g.consumer_name!r} has no bias to take the constant of the removed neurons")
            g.consumer.bias += w_out @ constant
        alive = ~(no_input | no_output)
        if not alive.any():
            alive[0] = True  # keep the network connected: one neuron that may carry nothing
        keep[g.name] = alive
    if groups:
        small = compact(GatedModel(small, groups), keep).model
    total, kept = masks.sizes(), masks.kept()
    weight_masks = {f"{name}.weight": m.weight != 0 for name, m in small.named_modules() if isinstance(m, PRUNABLE)}
    return PruneResult(small, kept, total, weight_masks, kinds=dict.fromkeys(total, "weight"))


class _Scale(nn.Module):
    """The parametrisation W ↦ W ⊙ S: a weight as its players' participations see it."""

    def __init__(self, gate: nn.Parameter):
        super().__init__()
        self.gate = gate

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gate


class WeightGatedModel(nn.Module):
    """``model`` with a participation s ∈ [0,1] for every prunable weight (Linear and Conv layers):
    the network computes with W ⊙ S. The gates, one tensor per layer shaped like its weight, are
    parameters of this module but not given to the weight optimizer; ``weights()`` are the raw W,
    aligned with ``gates``, so every per-player quantity is one element-wise tensor operation."""

    def __init__(self, model: nn.Module, exclude: Iterable[str] = ()):
        super().__init__()
        self.exclude = tuple(exclude)
        layers = WeightMasks(model, self.exclude).layers  # validates exclude, refuses a model without layers
        self.model, self.names = model, list(layers)
        self.gates = nn.ParameterList(nn.Parameter(torch.ones_like(m.weight)) for m in layers.values())
        for m, gate in zip(layers.values(), self.gates):
            parametrize.register_parametrization(m, "weight", _Scale(gate), unsafe=True)

    def forward(self, x):
        return self.model(x)

    def layers(self) -> list[nn.Module]:
        return [self.model.get_submodule(name) for name in self.names]

    def weights(self) -> list[torch.Tensor]:
        """The raw weights W (not W ⊙ S)."""
        return [m.parametrizations.weight.original for m in self.layers()]

    def weight_parameters(self) -> list[nn.Parameter]:
        gates = {id(g) for g in self.gates}
        return [p for p in self.model.parameters() if id(p) not in gates]

    def plain_copy(self) -> nn.Module:
        """A deep copy of the model with raw weights W and no parametrisation.

        Parametrised modules share a generated class, so the copy cannot drop its own
        parametrisations without breaking the original's: take them off, copy, put them back
        (the same Parameter objects, so an optimizer holding them is unaffected)."""
        for m in self.layers():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        try:
            return copy.deepcopy(self.model)
        finally:
            for m, gate in zip(self.layers(), self.gates):
                parametrize.register_parametrization(m, "weight", _Scale(gate), unsafe=True)

    @torch.no_grad()
    def compact(self, epsilon: float) -> PruneResult:
        """Players with s < ``epsilon`` removed, the survivors' participations folded into W, and
        the neurons the removals cut off taken out (:func:`compact_unstructured`). A layer whose
        every weight would go keeps its largest-participation one (said in the result's notes)."""
        keep, notes = {}, []
        for name, gate in zip(self.names, self.gates):
            keep[name] = gate >= epsilon
            if not bool(keep[name].any()):
                keep[name].view(-1)[int(torch.argmax(gate))] = True
                note_emptied_layer(name, "participation", float(gate.max()), f"epsilon={epsilon}", gate.numel(),
                                   "weight", notes)  # fmt: skip
        plain = self.plain_copy()
        for name, gate in zip(self.names, self.gates):
            plain.get_submodule(name).weight.mul_(gate)
        masks = WeightMasks(plain, self.exclude)
        masks.set(keep)
        result = compact_unstructured(plain, masks)
        result.notes = notes
        return result

"""What a model costs: parameters and multiply-accumulates (MACs) of one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from equiprune.layers import MultiHeadSelfAttention


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero: the size of an unstructured result."""
    return sum(int((p != 0).sum()) for p in model.parameters())


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of one forward pass on a single example of ``input_shape``, per module name: Linear and
    Conv layers, and the two attention products QKᵀ and AV of ``MultiHeadSelfAttention`` (under the
    attention module's own name). Element-wise work is not counted. Found by running the model once
    with counting hooks; a module called twice counts twice."""
    macs: dict[str, int] = {}

    def counter(name: str, module: nn.Module):
        def hook(mod, args, out) -> None:
            if isinstance(mod, nn.Linear):
                n = mod.in_features * out.numel()
            elif isinstance(mod, MultiHeadSelfAttention):
                batch, tokens = args[0].shape[0], args[0].shape[1]
                n = batch * 2 * mod.heads * tokens * tokens * mod.head_dim  # QKᵀ, then AV
            else:
                n = (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod()) * out.numel()
            macs[name] = macs.get(name, 0) + n

        return module.register_forward_hook(hook)

    counted = (nn.Linear, nn.modules.conv._ConvNd, MultiHeadSelfAttention)
    handles = [counter(name, m) for name, m in model.named_modules() if isinstance(m, counted)]
    try:
        p = next(model.parameters())
        was_training = model.training
        model.eval()
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return macs


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on a single example (see :func:`layer_macs`)."""
    return sum(layer_macs(model, input_shape).values())


def macs_per_player(gated, input_shape: Sequence[int]) -> list[float]:
    """For each player group of a ``GatedModel``, the MACs one of its players accounts for: its share
    of every producer's rows, every consumer's input columns and (a head) its attention products."""
    macs = layer_macs(gated.model, input_shape)
    out = []
    for g in gated.groups:
        total = sum(macs.get(name, 0) / g.size for name, _ in g.producers)  # each player: 1/size of the rows
        for c in g.consumers:
            total += macs.get(c.name, 0) * c.repeat / c.width
        total += sum(macs.get(name, 0) / g.size for name, _ in g.resize)
        out.append(total)
    return out

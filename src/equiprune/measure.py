"""What a model costs: parameters and multiply-accumulates (MACs) of one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero: the size of an unstructured result."""
    return sum(int((p != 0).sum()) for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on a single example of ``input_shape`` (Linear and Conv layers, and
    the two attention products QKᵀ and AV of ``MultiHeadSelfAttention``; element-wise work is not
    counted), found by running the model once with counting hooks."""
    from .layers import MultiHeadSelfAttention

    total = 0

    def linear(module: nn.Linear, args, out) -> None:
        nonlocal total
        total += module.in_features * out.numel()

    def conv(module: nn.modules.conv._ConvNd, args, out) -> None:
        nonlocal total
        per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        total += per_output * out.numel()

    def attention(module: MultiHeadSelfAttention, args, out) -> None:
        nonlocal total
        batch, tokens = args[0].shape[0], args[0].shape[1]
        total += batch * 2 * module.heads * tokens * tokens * module.head_dim  # QKᵀ, then AV

    handles = []
    for m in model.modules():
        if isinstance(m, MultiHeadSelfAttention):
            handles.append(m.register_forward_hook(attention))
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv))
    try:
        p = next(model.parameters())
        was_training = model.training
        model.eval()
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total

"""Least-squares refit of the layers that read pruned channels, towards the unpruned model.

Removing heads or neurons removes inputs of the layer that reads them (an attention output
projection, an MLP's down projection, the next convolution's 1×1 equivalent). What the removed
inputs contributed is often largely predictable from the kept ones. A refit solves, on calibration
data, for the weight and bias of every such layer that best reproduce the unpruned model's output of
that layer from the pruned model's own inputs to it (ridge regression, in float64):

    min_{W, b} Σ_tokens ‖W x_pruned + b − y_dense‖² + λ ‖W‖²

Layers are refit in module order, each on inputs that already pass through the layers refit before
it, so errors do not pile up along the depth. This is the layer-wise reconstruction of post-training
pruning (Kwon et al., 2022, "A fast post-training pruning framework for transformers") without the
mask search: the method decides what to remove, the refit only repairs what reads it.

It needs no labels: the dense model is the teacher. Padding positions are left out when a batch is
a mapping with an ``attention_mask`` (as a Hugging Face tokenizer returns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn

from equiprune.errors import PruningError


def narrowed_linears(pruned: nn.Module, dense: nn.Module) -> list[str]:
    """Names of the linear layers of ``pruned`` that read fewer inputs than ``dense``'s layer of the
    same name: the readers of removed channels, in module order."""
    dense_modules = dict(dense.named_modules())
    names = []
    for name, module in pruned.named_modules():
        reference = dense_modules.get(name)
        if isinstance(module, nn.Linear) and isinstance(reference, nn.Linear):
            if module.in_features < reference.in_features and module.out_features == reference.out_features:
                names.append(name)
    return names


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def _positions(batch: Any, activation: torch.Tensor) -> torch.Tensor:
    """The activation's rows that are real tokens: [positions, features]."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is not None and activation.dim() == 3 and tuple(mask.shape) == tuple(activation.shape[:2]):
        return activation[mask.bool()]
    return activation.reshape(-1, activation.shape[-1])


def with_constant(x: torch.Tensor) -> torch.Tensor:
    """[x 1]: the rows of ``x`` with a constant input for the bias."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


class _Reached(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def activation_at(model: nn.Module, name: str, batch: Any, side: str) -> torch.Tensor:
    """The input (``side="input"``) or output of ``model``'s layer ``name`` on ``batch``; the forward
    pass stops there, which halves the cost of a refit on average."""
    captured = {}

    def hook(_module, args, output):
        captured["value"] = (args[0] if side == "input" else output).detach()
        raise _Reached

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        _call(model, batch)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "value" not in captured:
        raise PruningError(f"refit of {name}: the forward pass on a calibration batch never reached it")
    return _positions(batch, captured["value"])


@torch.no_grad()
def refit_layer(pruned: nn.Module, dense: nn.Module, name: str, batches: Iterable[Any], ridge: float) -> float:
    """Refit one linear layer of ``pruned`` (see the module doc); the relative squared error of its
    output against the dense layer's after the refit, on the calibration data."""
    layer = pruned.get_submodule(name)
    width = layer.in_features + 1  # inputs and a constant one for the bias
    gram = torch.zeros(width, width, dtype=torch.float64)
    cross = torch.zeros(width, layer.out_features, dtype=torch.float64)
    target_energy = torch.zeros((), dtype=torch.float64)
    positions = 0
    for batch in batches:
        x, y = activation_at(pruned, name, batch, "input"), activation_at(dense, name, batch, "output")
        if len(x) != len(y):
            raise PruningError(f"refit of {name}: the pruned and the dense model saw {len(x)} and {len(y)} positions")
        x = with_constant(x)
        # each batch's moments in the layer's precision (fast), summed over batches in float64
        gram += (x.T @ x).double()
        cross += (x.T @ y).double()
        target_energy += (y.double() ** 2).sum()
        positions += len(x)
    if not target_energy > 0:
        raise PruningError(f"refit of {name}: no calibration data reached it (pass at least one batch)")
    if positions < width:  # fewer equations than unknowns: the fit would memorise the batches
        raise PruningError(
            f"refit of {name}: {positions} calibration positions for {width - 1} inputs and a bias; the fit would "
            f"be underdetermined and worsen the model: pass more batches (ten times the inputs is a good start)"
        )
    scale = gram.diagonal()[:-1].mean().clamp_min(1e-12)
    regularised = gram + ridge * scale * torch.diag(torch.cat([torch.ones(width - 1), torch.zeros(1)])).double()
    # least squares on the normal equations: an input that never fires (a dead ReLU) makes them
    # singular, and then its weight is left at zero (the minimum-norm solution) instead of failing
    solution = torch.linalg.lstsq(regularised, cross, driver="gelsd").solution  # [inputs + 1, outputs]
    weight, bias = solution[:-1].T, solution[-1]
    if not torch.isfinite(solution).all():
        raise PruningError(f"refit of {name}: the least-squares solution is not finite; raise ridge (now {ridge})")
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(bias.to(layer.bias.dtype))
    else:
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype))
    # ‖Wx + b − y‖² over the data, from the accumulated moments: trace(SᵀGS) − 2 trace(SᵀC) + ‖y‖²
    residual = (solution * (gram @ solution)).sum() - 2 * (solution * cross).sum() + target_energy
    return float(residual.clamp_min(0) / target_energy)


def refit_consumers(
    pruned: nn.Module, dense: nn.Module, batches: Iterable[Any], ridge: float = 1e-3
) -> dict[str, float]:
    """Refit every linear layer of ``pruned`` that lost inputs, in module order (see the module doc);
    ``batches`` is re-iterated once per layer, so pass a list. Returns layer name -> relative squared
    error of its output after the refit. ``pruned`` and ``dense`` must share module names (a model
    and its compacted copy do)."""
    if ridge < 0:
        raise PruningError(f"refit ridge must be >= 0, got {ridge}")
    batches = list(batches)
    if not batches:
        raise PruningError("refit needs calibration batches; got none")
    modes = pruned.training, dense.training
    pruned.eval(), dense.eval()
    try:
        return {name: refit_layer(pruned, dense, name, batches, ridge) for name in narrowed_linears(pruned, dense)}
    finally:
        pruned.train(modes[0]), dense.train(modes[1])

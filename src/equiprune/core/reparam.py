"""Reparametrised weights, the substrate of continuous sparsification.

Each prunable weight (Linear and Conv layers) is computed from raw tensors through
``torch.nn.utils.parametrize``, so the model stays the configured ``nn.Module`` and every layer
computes with the *effective* weight x:

- :class:`Product`: x = m ⊙ w (spred, PILoT), m one factor per weight, or one per output row (a
  neuron's or a filter's m);
- :class:`SoftThreshold`: x = sign(w)·relu(|w| − sigmoid(s)), one learned threshold per layer (STR);
- :class:`SoftMask`: x = w ⊙ sigmoid(T·s), with a temperature T annealed upwards, and at the end the
  hard mask 1[s > 0] (continuous sparsification).

:func:`fold` turns a reparametrised model back into the plain one computing the same x, which is
what compaction, export and fine-tuning see.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize


class Product(nn.Module):
    """x = m ⊙ w; ``m`` shaped like the weight, or (rows, 1, ...) for one factor per output row."""

    def __init__(self, m: torch.Tensor):
        super().__init__()
        self.m = nn.Parameter(m)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.m * w


class SoftThreshold(nn.Module):
    """x = sign(w)·relu(|w| − sigmoid(s)): weights below the layer's learned threshold are exactly 0."""

    def __init__(self, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def threshold(self) -> torch.Tensor:
        return torch.sigmoid(self.s)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * torch.relu(w.abs() - self.threshold())


class SoftMask(nn.Module):
    """x = w ⊙ sigmoid(T·s) while training; ``hard`` (set when folding) gives x = w ⊙ 1[s > 0]."""

    def __init__(self, shape: torch.Size, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.full(shape, float(s_init)))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.hard = False

    def mask(self) -> torch.Tensor:
        return (self.s > 0).to(self.s.dtype) if self.hard else torch.sigmoid(self.temperature * self.s)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask()


def reparametrise(
    model: nn.Module, names: Iterable[str], make: Callable[[torch.Tensor], nn.Module]
) -> dict[str, nn.Module]:
    """Register ``make(weight)`` on the weight of each named layer of ``model``, in place; returns
    layer name -> its parametrisation. The raw tensor starts as the weight was: a caller that
    wants another start (PILoT's w = x/m) rescales it through :func:`raw_weight`."""
    out = {}
    for name in names:
        layer = model.get_submodule(name)
        p = make(layer.weight.detach())
        parametrize.register_parametrization(layer, "weight", p, unsafe=True)
        out[name] = p
    return out


def raw_weight(layer: nn.Module) -> nn.Parameter:
    """The raw tensor w behind a reparametrised layer's effective weight."""
    return layer.parametrizations.weight.original


def reparam_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> layer, for every layer of ``model`` whose weight is reparametrised."""
    return {name: m for name, m in model.named_modules() if parametrize.is_parametrized(m, "weight")}


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` whose weights are the effective ones (a soft mask made hard)."""
    plain = copy.deepcopy(model)
    for layer in reparam_layers(plain).values():
        for p in layer.parametrizations.weight:
            if isinstance(p, SoftMask):
                p.hard = True
        weight = layer.weight.detach().clone()
        # Not parametrize.remove_parametrizations: a deep copy shares the original's generated
        # class, and removing would strip the property from the original's layer too.
        layer.__class__ = type(layer).__bases__[0]
        del layer._modules["parametrizations"]
        layer.weight = nn.Parameter(weight)
    return plain


def balanced_factors(x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, w) with m ⊙ w = x and m² − w² = β (PILoT's start): m = sqrt((β + sqrt(β² + 4x²))/2).

    ``x`` may hold one norm per row (structured players): then w = x/m row-wise is the caller's."""
    m = torch.sqrt((beta + torch.sqrt(beta**2 + 4 * x**2)) / 2)
    return m, x / m


def l1_position(c: torch.Tensor, x: torch.Tensor) -> float:
    """Where the implicit regularizer of x = m ⊙ w sits between L2 (0) and L1 (1), from the
    invariants c = m² − w² and the magnitudes |x| (one entry per weight, or per row for players).

    Under gradient flow c = m² − w² is conserved per weight, and x follows a mirror flow with the
    potential Q_c whose curvature is Q_c''(x) = 1/sqrt(c² + 4x²): flat (L2, x²/2c) for |x| ≪ c,
    falling as 1/(2|x|) (L1-like) for |x| ≫ c. Weight decay on m and w shrinks every c towards 0.
    The figure is 1 − Q''(x_rms)/Q''(0) for the median |c| and the RMS of x: 0 while the
    potential is still quadratic at the weights' scale, 1 once it is L1 there."""
    c = c.abs().median()
    x_rms = x.pow(2).mean().sqrt()
    denominator = torch.sqrt(c * c + 4 * x_rms * x_rms)
    return float(1 - c / denominator) if float(denominator) > 0 else 1.0

"""LOMP (Zhang et al., NeurIPS 2024): train with an ℓ1 penalty λ·Σ|θ| on the weights (and biases,
``include_biases``), then keep the largest-magnitude weights in one global cut.

The ℓ1 term drives most weights towards zero during training, so that a single global magnitude
prune, with no retraining, loses little. ``equiprune limit`` scans that prune over every ratio and
predicts from the Hessian spectrum where it stops working (:mod:`equiprune.experiments.limit_study`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from equiprune.core.weight_players import prunable_parameters
from equiprune.errors import ConfigError
from equiprune.methods.base import METHODS
from equiprune.methods.unstructured import UnstructuredSettings, _ByMagnitude


@dataclass(frozen=True)
class LompSettings(UnstructuredSettings):
    """``l1``: the penalty's λ (the paper's 5e-5 for its FC network); ``budget``: fraction of the
    weights kept by the final cut (biases are penalised when ``include_biases`` but never cut)."""

    l1: float = 5e-5
    include_biases: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.l1 >= 0:
            raise ConfigError(f"method.l1: must be >= 0, got {self.l1!r}")
        if self.allocation != "global":
            raise ConfigError("method.allocation: LOMP prunes by one global ranking; leave allocation = 'global'")


@METHODS.register("lomp")
class Lomp(_ByMagnitude):
    name = "lomp"
    settings_type = LompSettings

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return f"l1={settings.l1!r},biases={settings.include_biases}"

    def penalty(self, trained: nn.Module) -> torch.Tensor | None:
        if self.settings.l1 == 0:
            return None
        params = prunable_parameters(trained, self.settings.include_biases, self.exclude)
        return self.settings.l1 * sum(p.abs().sum() for p in params)

    def l1_term(self, model: nn.Module) -> float:
        """The penalty's value for ``model`` (a float, no graph)."""
        with torch.no_grad():
            value = self.penalty(model)
        return float(value) if value is not None else 0.0

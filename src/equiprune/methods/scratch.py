"""The reference every pruning method must beat: the pruned widths, trained from scratch.

``scratch`` shrinks the configured model to a budget's layer-wise widths before any training
(the same exact per-layer counts a layer-wise baseline keeps), re-initialises it, and trains that
small dense model for the whole epoch budget. If a pruning method cannot beat it, the method has
found nothing that training the small network directly would not find.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult, compact
from equiprune.core.selection import layerwise_counts
from equiprune.methods.base import METHODS, Calibration, Method, check_selection


@dataclass(frozen=True)
class ScratchSettings:
    budget: float = 0.1  # fraction of the hidden neurons the small model has, layer by layer

    def __post_init__(self):
        check_selection(self)


@METHODS.register("scratch")
class Scratch(Method):
    name = "scratch"
    settings_type = ScratchSettings
    budgeted = True
    default_role = "reference"

    def prepare(self, model: nn.Module) -> nn.Module:
        gated = self.attach(model)
        self._total = {g.name: g.size for g in gated.groups}
        self._kinds = {g.name: g.kind for g in gated.groups}
        self._kept = layerwise_counts(self.settings.budget, self._total)
        masks = {
            g.name: torch.arange(g.size, device=g.producer.weight.device) < self._kept[g.name] for g in gated.groups
        }
        small = compact(gated, masks).model
        for module in small.modules():  # a fresh initialisation for the small fan-ins
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return small

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        return PruneResult(trained, dict(self._kept), dict(self._total), kinds=dict(self._kinds))

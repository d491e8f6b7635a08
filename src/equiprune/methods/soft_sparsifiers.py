"""Two learned-threshold baselines of continuous sparsification, on single weights.

- ``str`` (soft threshold reparametrisation, Kusupati et al., ICML 2020): x = sign(w)·relu(|w| −
  sigmoid(s)), one threshold parameter s per layer, started at ``s_init``; the weight decay
  ``decay`` on w and s pulls every s up towards 0, raising the thresholds.
- ``cs`` (continuous sparsification, Savarese et al., NeurIPS 2020): x = w ⊙ sigmoid(T·s), one s
  per weight started at ``s_init``, an L1 penalty ``mask_l1``·Σ sigmoid(T·s) on the soft mask, and
  the temperature T raised geometrically from 1 to ``temperature_final`` over the training phase;
  the final mask is the hard 1[s > 0].

Both end as every continuous sparsifier does (:mod:`equiprune.methods.continuous`): folded into
plain weights and cut to the budget by |x|, with ``budget_fit`` saying how much the cut took.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from equiprune.core.reparam import SoftMask, SoftThreshold
from equiprune.errors import ConfigError
from equiprune.methods.base import METHODS
from equiprune.methods.continuous import ContinuousSettings, ContinuousSparsifier, require_decay


@dataclass(frozen=True)
class StrSettings(ContinuousSettings):
    """``s_init``: every layer's threshold parameter at the start (threshold sigmoid(s_init));
    ``decay``: the weight decay on w and s."""

    s_init: float = -6.0
    decay: float = 5e-4

    def __post_init__(self):
        super().__post_init__()
        require_decay(self.decay)
        if not -30 <= self.s_init <= 0:
            raise ConfigError(f"method.s_init: must lie in [-30, 0] (a threshold sigmoid(s_init) <= 0.5), "
                              f"got {self.s_init!r}")  # fmt: skip


@METHODS.register("str")
class SoftThresholdReparam(ContinuousSparsifier):
    """STR: x = sign(w)·relu(|w| − sigmoid(s)), one learned threshold per layer, weight decay on w
    and s; cut to the budget by |x| at the end."""

    name = "str"
    settings_type = StrSettings
    player_kinds = ("weight",)
    divergence_hint = "method.decay"
    decayed_factor = "s"

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        return SoftThreshold(self.settings.s_init).to(weight.device)

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        thresholds = [float(p.threshold().detach()) for p in self.reparams.values()]
        return {**super().epoch_metrics(trained), "threshold_mean": sum(thresholds) / len(thresholds)}


@dataclass(frozen=True)
class CsSettings(ContinuousSettings):
    """``s_init``: every mask parameter at the start (soft mask sigmoid(s_init)); ``mask_l1``: the
    L1 penalty's weight on the soft mask; ``temperature_final``: T at the end of the phase;
    ``decay``: the weight decay on w."""

    s_init: float = 0.05
    mask_l1: float = 1e-5
    temperature_final: float = 200.0
    decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        require_decay(self.decay)
        require_decay(self.mask_l1, "mask_l1")
        if not 1 <= self.temperature_final < float("inf"):
            raise ConfigError(f"method.temperature_final: must be a finite number >= 1, got {self.temperature_final!r}")
        if not self.s_init > 0:
            raise ConfigError(f"method.s_init: must be > 0 (a mask that starts open), got {self.s_init!r}")


@METHODS.register("cs")
class ContinuousSparsification(ContinuousSparsifier):
    """CS: x = w ⊙ sigmoid(T·s), an L1 penalty on the soft mask, T annealed from 1 to
    ``temperature_final``; the hard mask 1[s > 0] at the end, then cut to the budget by |x|."""

    name = "cs"
    settings_type = CsSettings
    player_kinds = ("weight",)
    divergence_hint = "method.mask_l1"

    def __init__(self, settings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self._step = 0
        self._total_steps = 1

    def make(self, weight: torch.Tensor, rows: bool) -> nn.Module:
        return SoftMask(weight.shape, self.settings.s_init).to(weight.device)

    def before_run(self, trained, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        self._total_steps = max(1, steps_per_epoch * epochs)
        self._set_temperature()

    def _set_temperature(self) -> None:
        t = self.settings.temperature_final ** min(1.0, self._step / self._total_steps)
        for p in self.reparams.values():
            p.temperature.fill_(t)

    def after_step(self, trained: nn.Module) -> None:
        self._step += 1
        self._set_temperature()

    def penalty(self, trained: nn.Module) -> torch.Tensor | None:
        if not self.settings.mask_l1:
            return None
        return self.settings.mask_l1 * torch.stack([p.mask().sum() for p in self.reparams.values()]).sum()

    def emergent_sparsity(self) -> float:
        """The fraction of weights the hard mask 1[s > 0] would cut now."""
        closed = sum(int((p.s <= 0).sum()) for p in self.reparams.values())
        return closed / sum(p.s.numel() for p in self.reparams.values())

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        temperature = float(next(iter(self.reparams.values())).temperature)
        return {**super().epoch_metrics(trained), "temperature": temperature}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self._set_temperature()

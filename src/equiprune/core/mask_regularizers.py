"""Sparsity regularizers R(m) of a relaxed mask m ∈ [0, 1]: the ℓ1 count's convex relaxation and
concave ones that approximate counting more closely.

Every regularizer is scaled so that its slope at m = 0 is 1: the same λ pulls a vanishing mask
equally hard under each of them, and they differ in how they treat large masks. ℓ1 pulls every mask
with slope 1; a concave regularizer's slope falls as m grows, so a mask the loss needs is left alone
while the small ones are driven to zero. ``ε`` (``epsilon``) is the regularizer's scale:

- ``l1``:   R(m) = m
- ``log``:  R(m) = ε·log(1 + m/ε)                       (slope ε/(ε + m); the paper's Σ log(1 + m/ε), up to ε)
- ``lp``:   R(m) = ε/p·((1 + m/ε)^p − 1), 0 < p < 1      (a smoothed m^p)
- ``scad``: slope 1 up to ε, falling linearly to 0 at a·ε, a > 2 (Fan & Li, 2001)
- ``mcp``:  slope 1 − m/(a·ε) up to a·ε, then 0, a > 1 (Zhang, 2010)

The registry is open: ``@REGULARIZERS.register("name")`` on a :class:`Regularizer` subclass adds one,
and ``method.regularizer = "name"`` uses it.
"""

from __future__ import annotations

from typing import Any

import torch

from equiprune.errors import ConfigError
from equiprune.registry import Registry


class Regularizer:
    """R(m) and its slope R'(m), elementwise; ``settings`` carries ``epsilon``, ``p`` and ``a``."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the setting that is out of this regularizer's range."""

    def value(self, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def slope(self, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


REGULARIZERS: Registry[type[Regularizer]] = Registry("mask regularizer")


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"method.{name}: {rule}, got {value!r}")


def _check_epsilon(s: Any) -> None:
    _require(0 < s.epsilon < float("inf"), "epsilon", "the regularizer's scale must be a finite number > 0", s.epsilon)


@REGULARIZERS.register("l1")
class L1(Regularizer):
    def value(self, m):
        return m

    def slope(self, m):
        return torch.ones_like(m)


@REGULARIZERS.register("log")
class Log(Regularizer):
    def check(self):
        _check_epsilon(self.settings)

    def value(self, m):
        eps = self.settings.epsilon
        return eps * torch.log1p(m / eps)

    def slope(self, m):
        eps = self.settings.epsilon
        return eps / (eps + m)


@REGULARIZERS.register("lp")
class Lp(Regularizer):
    def check(self):
        _check_epsilon(self.settings)
        _require(0 < self.settings.p < 1, "p", "the exponent of 'lp' must lie in (0, 1)", self.settings.p)

    def value(self, m):
        eps, p = self.settings.epsilon, self.settings.p
        return eps / p * ((1 + m / eps) ** p - 1)

    def slope(self, m):
        eps, p = self.settings.epsilon, self.settings.p
        return (1 + m / eps) ** (p - 1)


@REGULARIZERS.register("scad")
class Scad(Regularizer):
    def check(self):
        _check_epsilon(self.settings)
        _require(self.settings.a > 2, "a", "SCAD's shape a must be > 2", self.settings.a)

    def value(self, m):
        t, a = self.settings.epsilon, self.settings.a
        middle = (2 * a * t * m - m**2 - t**2) / (2 * (a - 1) * t)
        return torch.where(m <= t, m, torch.where(m <= a * t, middle, torch.full_like(m, (a + 1) * t / 2)))

    def slope(self, m):
        t, a = self.settings.epsilon, self.settings.a
        return torch.where(m <= t, torch.ones_like(m), ((a * t - m) / ((a - 1) * t)).clamp(min=0))


@REGULARIZERS.register("mcp")
class Mcp(Regularizer):
    def check(self):
        _check_epsilon(self.settings)
        _require(self.settings.a > 1, "a", "MCP's shape a must be > 1", self.settings.a)

    def value(self, m):
        k = self.settings.a * self.settings.epsilon
        return torch.where(m <= k, m - m**2 / (2 * k), torch.full_like(m, k / 2))

    def slope(self, m):
        k = self.settings.a * self.settings.epsilon
        return (1 - m / k).clamp(min=0)


def regularizer(settings: Any) -> Regularizer:
    """The regularizer ``settings.regularizer`` names, checked against its own settings."""
    return REGULARIZERS.get(settings.regularizer, "method.regularizer")(settings)

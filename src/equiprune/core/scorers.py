"""Scorers for one-shot pruning: small functions from a player's features to a score (higher kept).

A scorer is a *feature* (what it reads) passed through a *map* (how it shapes it), with a declared
feature class κ, after the selection-plateau paper's hierarchy:

- κ = 0, rank-monotone: any increasing map of the magnitude (|w|, w², log|w|, √|w|). They rank every
  player in the same order, so they select the same players: the plateau's mechanism, exactly.
- κ = 1, smooth non-monotone: the magnitude with a smooth detour (a bump, a quadratic peak).
- κ = 2, raw non-monotone with high-frequency components (a fast sine, a chaotic map of |w|).
- the fake control: the magnitude perturbed by a fixed pseudo-random value per position, which is
  non-monotone in |w| without depending on it.
- gradient scorers: the first-order Taylor estimate |w·∂L/∂w| and maps of it.

Features are float64 (a monotone map in float32 can merge distinct magnitudes into ties) and come
as one tensor per layer: ``magnitude`` (|w| of a single weight; the mean |θ| of a structured
player's incoming weights), ``unit`` (the magnitude over the largest magnitude among all players
that compete), ``quantile`` (the magnitude's rank among the players that compete, from 0 for the
smallest to 1 for the largest: the scale on which a sparsity S cuts at S, so the non-monotone maps
act where selections are decided), ``taylor`` (mean |w·∂L/∂w| over calibration batches; None when
not computed) and ``position`` (each player's index in its layer).

New scorers register from Python (a map added to :data:`MAPS`, then
``SCORERS.register("name")(Scorer("quantile", "my-map", kappa=1))``) or from a configuration, as a map
of a feature with its parameters (:func:`scorer_from_settings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from equiprune.errors import ConfigError
from equiprune.registry import Registry

FEATURES = ("magnitude", "unit", "quantile", "taylor", "position")
#: The feature classes a scorer may declare.
KAPPAS = {0: "rank-monotone", 1: "smooth non-monotone", 2: "raw high-frequency", "control": "fake non-monotone",
          "gradient": "gradient-based"}  # fmt: skip


@dataclass(frozen=True)
class Features:
    """Per-layer features of the players that compete (one tensor per layer, float64)."""

    magnitude: dict[str, torch.Tensor]
    unit: dict[str, torch.Tensor]
    quantile: dict[str, torch.Tensor]
    position: dict[str, torch.Tensor]
    taylor: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(
        cls,
        magnitude: Mapping[str, torch.Tensor],
        taylor: Mapping[str, torch.Tensor] | None = None,
        per_layer: bool = False,
    ) -> Features:
        """``per_layer``: the players compete within their layer (a layerwise selection), so the
        quantiles are taken per layer; else over all layers together (one global ranking)."""
        mags = {name: m.detach().double().reshape(-1) for name, m in magnitude.items()}
        top = max(float(m.max()) for m in mags.values())
        scale = top if top > 0 else 1.0
        return cls(
            magnitude=mags,
            unit={name: m / scale for name, m in mags.items()},
            quantile=_quantiles(mags, per_layer),
            position={name: torch.arange(m.numel(), dtype=torch.float64, device=m.device) for name, m in mags.items()},
            taylor=None if taylor is None else {name: t.detach().double().reshape(-1) for name, t in taylor.items()},
        )

    def get(self, name: str) -> dict[str, torch.Tensor]:
        if name == "taylor" and self.taylor is None:
            raise ConfigError("a gradient scorer needs the taylor feature, which was not computed")
        return getattr(self, name)


def _quantiles(mags: dict[str, torch.Tensor], per_layer: bool) -> dict[str, torch.Tensor]:
    """Each value's rank over ``mags`` (per layer, or pooled) scaled to [0, 1]; equal values share
    their mean rank, so that a monotone map of the quantile ties exactly where the magnitude does."""
    if per_layer:
        return {name: _ranks01(m) for name, m in mags.items()}
    pooled = _ranks01(torch.cat(list(mags.values())))
    return dict(zip(mags, pooled.split([m.numel() for m in mags.values()])))


def mean_ranks(x: torch.Tensor) -> torch.Tensor:
    """Each value's rank in ``x`` (0 for the smallest), equal values sharing their mean rank."""
    values, order = torch.sort(x)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # each run of equal values: its first rank
    ranks = torch.empty_like(x)
    ranks[order] = (first + (counts - 1) / 2).to(x.dtype)[inverse]
    return ranks


def _ranks01(x: torch.Tensor) -> torch.Tensor:
    return mean_ranks(x) / max(x.numel() - 1, 1)


# --- maps: tensor (float64) -> tensor of the same shape ----------------------------------------------


def _chaos(u: torch.Tensor, r: float = 3.9, steps: int = 12) -> torch.Tensor:
    """The logistic map x ← r·x·(1 − x) iterated from u (clamped into (0, 1)): nearby magnitudes end
    far apart, a deterministic high-frequency function of |w|."""
    x = u.clamp(1e-6, 1 - 1e-6)
    for _ in range(steps):
        x = r * x * (1 - x)
    return x


def _hash(position: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random value in [0, 1) per position (the fractional part of a sine hash)."""
    h = torch.sin(position * 12.9898 + 78.233 + seed) * 43758.5453
    return h - torch.floor(h)


MAPS: dict[str, Callable[..., torch.Tensor]] = {
    "identity": lambda x: x,
    "power": lambda x, power=2.0: x.abs() ** power,
    "log": lambda x, floor=1e-12: torch.log(x.abs() + floor),
    # smooth detours from the identity: a Gaussian bump at `center` (width `width`, height `height`)
    "bump": lambda x, center=0.3, width=0.05, height=0.3: x + height * torch.exp(-((x - center) ** 2) / (2 * width**2)),
    # x·(peak·2 − x): increasing up to `peak`, decreasing after it
    "quadratic": lambda x, peak=0.6: x * (2 * peak - x),
    # raw high-frequency: a fast sine, and a chaotic map, each riding on the identity
    "wiggle": lambda x, frequency=40.0, amplitude=0.3: x * (1 + amplitude * torch.sin(2 * math.pi * frequency * x)),
    "chaos": lambda x, amplitude=0.5, r=3.9, steps=12: x * (1 + amplitude * _chaos(x, r, int(steps))),
}


@dataclass(frozen=True)
class Scorer:
    """``map`` (a name of :data:`MAPS`) of ``feature`` with ``params``; ``control``: multiply by
    1 + control·hash(position), the fake non-monotone perturbation that ignores magnitude."""

    feature: str
    map: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)
    kappa: int | str = 0
    control: float = 0.0
    description: str = ""

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise ConfigError(f"scorer feature: got {self.feature!r}, expected one of {list(FEATURES)}")
        if self.map not in MAPS:
            raise ConfigError(f"scorer map: got {self.map!r}, expected one of {sorted(MAPS)}")
        if self.kappa not in KAPPAS:
            raise ConfigError(f"scorer kappa: got {self.kappa!r}, expected one of {list(KAPPAS)}")

    @property
    def needs_gradients(self) -> bool:
        return self.feature == "taylor"

    def __call__(self, features: Features, name: str = "scorer") -> dict[str, torch.Tensor]:
        fn = MAPS[self.map]
        out = {}
        for layer, x in features.get(self.feature).items():
            try:
                s = fn(x, **self.params)
            except TypeError as exc:
                raise ConfigError(f"scorer {name!r}: map {self.map!r} does not take {self.params}: {exc}") from None
            if self.control:
                s = s * (1 + self.control * _hash(features.position[layer]))
            if s.shape != x.shape:
                raise ConfigError(
                    f"scorer {name!r} gave shape {tuple(s.shape)} for layer {layer} of {x.numel()} players"
                )
            if not torch.isfinite(s).all():
                raise ConfigError(f"scorer {name!r} gave a non-finite score (NaN or inf) in layer {layer}")
            out[layer] = s
        return out


SCORERS: Registry[Scorer] = Registry("scorer")
for _name, _scorer in {
    "magnitude": Scorer("magnitude", description="|w|"),
    "squared": Scorer("magnitude", "power", {"power": 2.0}, description="w²"),
    "log-magnitude": Scorer("magnitude", "log", description="log|w|"),
    "sqrt-magnitude": Scorer("magnitude", "power", {"power": 0.5}, description="√|w|"),
    "bump": Scorer(
        "quantile",
        "bump",
        {"center": 0.6, "width": 0.05, "height": 0.3},
        kappa=1,
        description="q + 0.3·exp(−(q − 0.6)²/(2·0.05²)), q the rank quantile of |w|",
    ),
    "quadratic": Scorer(
        "quantile",
        "quadratic",
        {"peak": 0.75},
        kappa=1,
        description="q·(1.5 − q): falls above the 75th percentile of |w|",
    ),
    "wiggle": Scorer("quantile", "wiggle", kappa=2, description="q·(1 + 0.3·sin(80πq))"),
    "chaos": Scorer("quantile", "chaos", kappa=2, description="q·(1 + 0.5·x₁₂), x the logistic map (r = 3.9) from q"),
    "fake-control": Scorer("quantile", control=0.5, kappa="control", description="q·(1 + 0.5·hash(position))"),
    "taylor": Scorer("taylor", kappa="gradient", description="|w·∂L/∂w|, mean over calibration batches"),
    "taylor-squared": Scorer("taylor", "power", {"power": 2.0}, kappa="gradient", description="(w·∂L/∂w)²"),
}.items():
    SCORERS.register(_name)(_scorer)


def scorer_from_settings(name: str, settings: Mapping[str, Any]) -> Scorer:
    """A scorer from a configuration table: ``feature``, ``map``, ``kappa``, ``control`` and the
    map's own parameters, e.g. ``{feature = "magnitude", map = "power", power = 3, kappa = 0}``."""
    settings = dict(settings)
    known = {k: settings.pop(k) for k in ("feature", "map", "kappa", "control", "description") if k in settings}
    if "feature" not in known:
        raise ConfigError(f"plateau.custom.{name}: needs a `feature`, one of {list(FEATURES)}")
    try:
        return Scorer(params=settings, **known)
    except ConfigError as exc:
        raise ConfigError(f"plateau.custom.{name}: {exc}") from None


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| of two selections (boolean keep-masks per layer)."""
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0

"""How far can a trained network be pruned in one shot? The prediction of Zhang et al.
("How sparse can we prune a deep network", NeurIPS 2024) and the measurement it is checked against.

Prediction. Near the trained point w the loss sublevel set {L ≤ L(w) + ε} is an ellipsoid with
semi-axes r_k = sqrt(2ε/|λ_k|) along the Hessian's eigenvectors (|λ| "convexifies" negative
curvature); ε is the standard deviation of the per-batch training loss, the scale of loss changes
that cannot be told from noise. Seen from a point at distance R, the ellipsoid covers a share of
directions given by its normalised squared Gaussian width,

    pred(R) = Σ_k p_k · r_k² / (R² + r_k²) / Σ_k p_k  =  E_λ[ 2ε / (2ε + |λ|·R²) ],

with p the Hessian's spectral density (SLQ). Pruning a fraction ρ of the weights by magnitude
moves them a distance R(ρ) = ‖w − w_pruned(ρ)‖; by Gordon's escape theorem the pruned subspace
still meets the sublevel set while ρ ≤ pred(R(ρ)). The predicted limit is where the two cross.

R is the global Euclidean distance, as the paper writes it. The official code sums per-tensor
norms instead (Σ_t ‖w_t − w_pruned,t‖, which is larger); ``distance = "per-tensor"`` gives that.

Measurement (LOMP): prune the smallest-magnitude fraction ρ of all parameters at once, with no
retraining, for ρ on a grid of 0.1% steps; the measured limit is the largest ρ whose test
accuracy stays within a tolerance of the dense model's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

Distance = Literal["global", "per-tensor"]


def ratio_grid(step: float = 0.001) -> torch.Tensor:
    """Pruning ratios 0, step, 2·step, … below 1 (float64, rounded so 0.1% steps print cleanly)."""
    n = round(1 / step)
    return torch.round(torch.arange(n, dtype=torch.float64) * step, decimals=10)


def _magnitude_order(params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """All parameters flattened, and the positions sorted from smallest to largest |w|."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    return flat, torch.argsort(flat.abs(), stable=True)


def pruned_counts(ratios: torch.Tensor, total: int) -> torch.Tensor:
    return torch.round(ratios * total).long()


def prune_distances(
    params: Sequence[torch.Tensor], ratios: torch.Tensor, distance: Distance = "global"
) -> torch.Tensor:
    """R(ρ) for each ratio: the distance from w to w with its ⌊ρ·D⌉ smallest-|w| entries zeroed."""
    flat, order = _magnitude_order(params)
    counts = pruned_counts(ratios, flat.numel())
    squares = flat[order] ** 2
    if distance == "global":
        cum = torch.cat([squares.new_zeros(1), torch.cumsum(squares, 0)])
        return cum[counts].sqrt()
    if distance != "per-tensor":
        raise ValueError(f"distance: got {distance!r}, expected 'global' or 'per-tensor'")
    owner = torch.cat([torch.full((p.numel(),), i, dtype=torch.long) for i, p in enumerate(params)])[order]
    total = torch.zeros(len(ratios), dtype=torch.float64)
    for i in range(len(params)):
        mine = torch.cat([squares.new_zeros(1), torch.cumsum(torch.where(owner == i, squares, 0.0), 0)])
        total += mine[counts].sqrt()
    return total


def width_fraction(nodes: torch.Tensor, weights: torch.Tensor, epsilon: float, R: torch.Tensor) -> torch.Tensor:
    """pred(R) for each R: E_λ[2ε / (2ε + |λ|·R²)] under the density (``nodes``, ``weights``).

    Written this way rather than r²/(R² + r²) so that λ = 0 (an infinitely long axis) needs no
    special case: it contributes 1, as r → ∞ would."""
    nodes, weights = nodes.double(), weights.double()
    two_eps = 2.0 * float(epsilon)
    terms = two_eps / (two_eps + nodes.abs()[None, :] * (R.double()[:, None] ** 2))
    return (terms * weights[None, :]).sum(dim=1) / weights.sum()


def crossing(ratios: torch.Tensor, predicted: torch.Tensor) -> float:
    """The first ratio ρ at which pred(R(ρ)) ≤ ρ (pred falls as ρ grows, so they cross once);
    the last ratio when pred stays above."""
    below = torch.nonzero(predicted <= ratios).flatten()
    return float(ratios[below[0]] if len(below) else ratios[-1])


def loss_noise(
    model: torch.nn.Module,
    batches,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    penalty: float = 0.0,
) -> tuple[float, float]:
    """(mean, standard deviation) of the per-batch training loss in eval mode. ``penalty`` (the ℓ1
    term, the same on every batch) shifts the mean and leaves ε, the deviation, unchanged."""
    was = model.training
    model.eval()
    values = []
    with torch.no_grad():
        for x, y in batches:
            values.append(float(loss_fn(model(x), y)) + penalty)
    model.train(was)
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


@torch.no_grad()
def magnitude_scan(
    params: Sequence[torch.Tensor], ratios: Sequence[float], evaluate: Callable[[], float], progress=None
) -> list[float]:
    """``evaluate()`` after zeroing the smallest-|w| fraction ρ of ``params`` (globally), for each ρ;
    the parameters are restored afterwards, whatever happens."""
    flat, order = _magnitude_order(params)
    saved = [p.detach().clone() for p in params]
    out = []
    try:
        for rho in ratios:
            n = int(round(float(rho) * flat.numel()))
            pruned = flat.clone()
            pruned[order[:n]] = 0
            start = 0
            for p in params:
                p.copy_(pruned[start : start + p.numel()].view_as(p))
                start += p.numel()
            out.append(float(evaluate()))
            if progress is not None:
                progress.update(1)
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return out


def measured_limit(ratios: Sequence[float], accuracies: Sequence[float], dense: float, tolerance: float) -> float:
    """The largest scanned ratio whose accuracy is at least ``dense − tolerance``."""
    ok = [r for r, a in zip(ratios, accuracies) if a >= dense - tolerance]
    return max(ok) if ok else 0.0


def refine_ratios(coarse: Sequence[float], accuracies: Sequence[float], dense: float, tolerance: float, step: float):
    """The fine grid (``step``) across the coarse interval around the coarse limit: where the
    measured limit lies when accuracy falls monotonically past it."""
    limit = measured_limit(coarse, accuracies, dense, tolerance)
    above = [r for r in coarse if r > limit]
    hi = min(above) if above else limit
    lo = max([r for r in coarse if r < limit], default=limit)
    n = round((hi - lo) / step)
    return [round(lo + i * step, 10) for i in range(n + 1) if round(lo + i * step, 10) not in set(coarse)]

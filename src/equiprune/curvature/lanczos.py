"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (SLQ).

For a probe v (‖v‖ = 1), m steps of Lanczos build an orthonormal basis Q of the Krylov space
span{v, Hv, …, H^{m−1}v} and the tridiagonal T = QᵀHQ. With T = U·diag(θ)·Uᵀ, the Ritz values θⱼ
and weights τⱼ = U₀ⱼ² form a Gauss quadrature: vᵀf(H)v ≈ Σⱼ τⱼ f(θⱼ), exact for polynomials of
degree up to 2m − 1. For random probes E[vᵀf(H)v] = tr f(H)/D, so the nodes and weights of a few
probes, averaged, estimate the spectral density, and a Gaussian on each node smooths it onto a grid.

Each step takes the three-term recurrence and then re-orthogonalises against the whole basis
wherever the overlaps exceed √ε (classical Gram–Schmidt, a second pass where the first cancelled
most of the vector): in floating point, plain three-term Lanczos loses orthogonality and produces
ghost copies of the extreme eigenvalues. All probes run in lockstep so that one pass over the data
serves every probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: A Krylov space is exhausted when the next residual is this small relative to ‖H‖ seen so far.
BREAKDOWN = 1e-10


@dataclass
class Spectrum:
    """Ritz values (``nodes``) and quadrature weights per probe, each (probes, m); a probe whose
    Krylov space was exhausted early has zero weights in its unused columns."""

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int  # D, the Hessian's size
    iters: int

    @property
    def probes(self) -> int:
        return self.nodes.shape[0]

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All nodes and weights as one quadrature whose weights sum to 1."""
        return self.nodes.reshape(-1), self.weights.reshape(-1) / self.probes

    def expect(self, f: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """The SLQ estimate of tr f(H) / D."""
        nodes, weights = self.flat()
        return float((weights * f(nodes)).sum())

    def summary(self) -> dict[str, float | int]:
        nodes, weights = self.flat()
        used = weights > 0
        return {
            "lambda_max": float(nodes[used].max()),
            "lambda_min": float(nodes[used].min()),
            "trace": self.expect(lambda t: t) * self.dim,
            "negative_mass": float(weights[nodes < 0].sum()),
            "dim": self.dim,
            "iters": self.iters,
            "probes": self.probes,
        }


#: A second Gram–Schmidt pass when the first left less than this share of w's norm (Daniel,
#: Gragg, Kaufman and Stewart, 1976: 1/√2).
REORTHOGONALISE = 2**-0.5


def _reorthogonalise(basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w ← w − B(Bᵀw) for each probe's basis B (j, D), in place on ``w`` (k, D), where it is due.

    A pass reads the whole basis, which at D = 535k is most of a step's memory traffic, so it is one
    matrix-vector product each way per probe (``mv``, ``addmv``): batched ``einsum`` over the probes
    copied the strided basis and took four times as long. The first product gives the overlaps
    Bᵀw; where none exceeds √ε·‖w‖ the subtraction is skipped. That keeps the basis
    semi-orthogonal, which is all the tridiagonal's accuracy needs (Simon, 1984: with every overlap
    at most √ε, T equals the tridiagonal of an exactly orthogonal basis to working precision), and
    spares half of the pass in the steps before Ritz values converge. Once is enough unless the
    subtraction cancelled most of w (the DGKS criterion); then a second pass, for that probe only."""
    tolerance = torch.finfo(w.dtype).eps ** 0.5
    for i in range(w.shape[0]):
        for _ in range(2):
            overlaps = torch.mv(basis[i], w[i])
            before = w[i].norm()
            if overlaps.abs().max() <= tolerance * before:
                break
            w[i] = torch.addmv(w[i], basis[i].T, overlaps, alpha=-1)
            if w[i].norm() >= REORTHOGONALISE * before:
                break
    return w


def lanczos(matmat: Callable[[torch.Tensor], torch.Tensor], probes: torch.Tensor, iters: int, on_step=None):
    """``iters`` Lanczos steps from each row of ``probes`` (k, D), all in lockstep; ``on_step()``
    is called after each (a progress bar's update).

    Returns (alpha, beta, steps): the tridiagonals' diagonals (k, m) and off-diagonals (k, m − 1) in
    float64, and each probe's number of valid steps (fewer than m where its Krylov space ran out)."""
    k, dim = probes.shape
    m = min(iters, dim)
    Q = probes.new_zeros(k, m, dim)
    alpha = torch.zeros(k, m, dtype=torch.float64)
    beta = torch.zeros(k, max(m - 1, 0), dtype=torch.float64)
    steps = torch.full((k,), m, dtype=torch.long)
    live = torch.ones(k, dtype=torch.bool, device=probes.device)
    q = probes / probes.norm(dim=1, keepdim=True)
    scale = torch.zeros(k, dtype=torch.float64)
    for j in range(m):
        Q[:, j] = q
        w = matmat(q)
        alpha[:, j] = (w * q).sum(dim=1).double().cpu()
        if on_step is not None:
            on_step()
        # The three-term recurrence first (it removes nearly all of what the basis holds of w), then
        # the full pass against the basis removes only the drift, so a second pass is rarely due.
        w -= alpha[:, j, None].to(w) * q
        if j > 0:
            w -= beta[:, j - 1, None].to(w) * Q[:, j - 1]
        w = _reorthogonalise(Q[:, : j + 1], w)
        if j == m - 1:
            break
        b = w.norm(dim=1).double().cpu()
        scale = torch.maximum(scale, alpha[:, j].abs() + b)
        ended = live.cpu() & (b <= BREAKDOWN * scale.clamp_min(1e-300))
        for i in torch.nonzero(ended).flatten().tolist():
            steps[i] = j + 1
        live &= ~ended.to(live.device)
        beta[:, j] = torch.where(live.cpu(), b, torch.zeros_like(b))
        q = torch.where(live[:, None], w / b.to(w)[:, None].clamp_min(1e-300), torch.zeros_like(w))
    return alpha, beta, steps


def ritz(alpha: torch.Tensor, beta: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights (k, m) of each probe's Gauss quadrature from its tridiagonal matrix."""
    k, m = alpha.shape
    nodes = torch.zeros(k, m, dtype=torch.float64)
    weights = torch.zeros(k, m, dtype=torch.float64)
    for i in range(k):
        n = int(steps[i])
        T = torch.diag(alpha[i, :n]) + torch.diag(beta[i, : n - 1], 1) + torch.diag(beta[i, : n - 1], -1)
        values, vectors = torch.linalg.eigh(T)
        nodes[i, :n], weights[i, :n] = values, vectors[0] ** 2
    return nodes, weights


def slq(op, probes: torch.Tensor, iters: int = 128, at_once: int | None = None, on_step=None) -> Spectrum:
    """Stochastic Lanczos quadrature of ``op`` (anything with ``matmat`` and ``dim``, e.g. a
    :class:`~equiprune.curvature.hessian.HessianOperator`) from the given probes (k, D); ``at_once`` bounds
    how many probes run together (memory: k × iters × D numbers for the bases)."""
    at_once = at_once or probes.shape[0]
    nodes, weights = [], []
    for start in range(0, probes.shape[0], at_once):
        chunk = probes[start : start + at_once].to(device=op.device, dtype=op.dtype)
        a, b, steps = lanczos(op.matmat, chunk, iters, on_step)
        n, w = ritz(a, b, steps)
        nodes.append(n)
        weights.append(w)
    return Spectrum(torch.cat(nodes), torch.cat(weights), op.dim, iters)


def density(
    spectrum: Spectrum,
    bins: int = 10_000,
    sigma2: float = 1e-5,
    margin: float = 0.01,
    span: tuple[float, float] | None = None,
):
    """The spectral density on a grid: a Gaussian of variance σ²·max(1, λ_max − λ_min) on every
    Ritz value, weighted by its quadrature weight, probes averaged, normalised to integrate to 1.

    Returns (grid, density), float64 tensors of length ``bins``; the grid spans the Ritz values
    with ``margin`` either side, or ``span`` when given (to put two spectra on one grid). The
    variance scaling follows PyHessian's, so densities compare."""
    nodes, weights = spectrum.flat()
    used = weights > 0
    if span is None:
        lo, hi = float(nodes[used].min()) - margin, float(nodes[used].max()) + margin
    else:
        lo, hi = span
    grid = torch.linspace(lo, hi, bins, dtype=torch.float64)
    var = sigma2 * max(1.0, hi - lo)
    values = torch.zeros(bins, dtype=torch.float64)
    for start in range(0, bins, 2048):  # bounded memory: (chunk × nodes) at a time
        g = grid[start : start + 2048, None]
        kernel = torch.exp(-((g - nodes[None, used]) ** 2) / (2 * var)) / (2 * torch.pi * var) ** 0.5
        values[start : start + 2048] = kernel @ weights[used]
    step = (hi - lo) / (bins - 1)
    values /= values.sum() * step
    return grid, values

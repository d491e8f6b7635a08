"""Hessian-vector products, Lanczos, SLQ, Hutchinson and power iteration against the exact Hessian
of a small model (autograd's full Hessian, and its dense eigendecomposition)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from equiprune.curvature.hessian import (
    HessianOperator,
    flatten,
    hutchinson_trace,
    rademacher_probes,
    top_eigenvalues,
    unflatten,
)
from equiprune.curvature.lanczos import _reorthogonalise, density, lanczos, ritz, slq
from equiprune.errors import EquipruneError


def small_problem(batches=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    data = [(torch.randn(7 + i, 5, dtype=torch.float64), torch.randint(0, 3, (7 + i,))) for i in range(batches)]
    return model, data


def autograd_hessian(model, data):
    """The reference: autograd's full Hessian of the size-weighted mean loss, one call on all data."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def loss(flat):
        params = dict(zip(names, unflatten(flat, [torch.empty(s) for s in shapes])))
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = flatten(p.detach() for p in model.parameters())
    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("batches, cache_samples", [(1, 0), (3, 8192), (3, 0)], ids=["one", "kept", "streamed"])
def test_hessian_vector_products_match_autograds_full_hessian(batches, cache_samples):
    model, data = small_problem(batches)
    H = autograd_hessian(model, data)
    op = HessianOperator(model, data, cache_samples=cache_samples)
    V = torch.randn(4, op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ H.T)
    torch.testing.assert_close(op.matvec(V[0]), H @ V[0])
    torch.testing.assert_close(op.dense(), H)


def test_forward_over_reverse_double_backward_and_one_at_a_time_agree():
    model, data = small_problem(2)
    op = HessianOperator(model, data, cache_samples=0)  # streamed: forward-over-reverse
    V = torch.randn(3, op.dim, dtype=torch.float64)
    forward_over_reverse = op.matmat(V)
    assert op._functional_ok and not op._graphs
    kept = HessianOperator(model, data)
    torch.testing.assert_close(kept.matmat(V), forward_over_reverse)
    assert len(kept._graphs) == 2
    op._functional_ok = False
    double_backward = op.matmat(V)
    op._batched_ok = False
    torch.testing.assert_close(double_backward, forward_over_reverse)
    torch.testing.assert_close(op.matmat(V), forward_over_reverse)


def test_mode_is_restored_and_parameters_outside_the_loss_give_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2)).double()
    unused = nn.Parameter(torch.ones(2, dtype=torch.float64))
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    model.train()
    op = HessianOperator(model, data, params=[*model.parameters(), unused])
    hv = op.matvec(torch.ones(op.dim, dtype=torch.float64))
    assert model.training  # eval during the product, then back
    assert torch.equal(hv[-2:], torch.zeros(2, dtype=torch.float64))
    # eval mode: dropout off, so the product is deterministic
    torch.testing.assert_close(op.matvec(torch.ones(op.dim, dtype=torch.float64)), hv)


def test_bad_input_is_named():
    model, data = small_problem(1)
    with pytest.raises(EquipruneError, match="at least one batch"):
        HessianOperator(model, [])
    op = HessianOperator(model, data)
    with pytest.raises(EquipruneError, match=r"shape \(k, 39\)"):
        op.matmat(torch.ones(2, 5))


def test_full_lanczos_recovers_every_eigenvalue():
    model, data = small_problem()
    H = autograd_hessian(model, data)
    exact = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, data)
    probes = torch.randn(2, op.dim, dtype=torch.float64)
    alpha, beta, steps = lanczos(op.matmat, probes, iters=op.dim)
    nodes, weights = ritz(alpha, beta, steps)
    for i in range(2):
        n = int(steps[i])
        # Every Ritz value is an eigenvalue, and the extremes are found (a full Krylov space).
        gaps = (nodes[i, :n, None] - exact[None]).abs().min(dim=1).values
        assert gaps.max() < 1e-8
        assert nodes[i, :n].max() == pytest.approx(float(exact.max()), abs=1e-8)
        assert nodes[i, :n].min() == pytest.approx(float(exact.min()), abs=1e-8)
        assert weights[i].sum() == pytest.approx(1.0)


def test_extreme_eigenvalues_converge_long_before_the_full_space():
    model, data = small_problem()
    exact = torch.linalg.eigvalsh(autograd_hessian(model, data))
    op = HessianOperator(model, data)
    spectrum = slq(op, torch.randn(1, op.dim, dtype=torch.float64), iters=20)
    assert spectrum.summary()["lambda_max"] == pytest.approx(float(exact.max()), rel=1e-6)


def test_long_float32_lanczos_finds_no_ghost_copies_of_converged_eigenvalues():
    # Well-separated top eigenvalues converge within a few steps; without re-orthogonalisation
    # float32 Lanczos then finds them again and again (ghosts). Each must appear once, and the
    # quadrature must stay exact for the first moments.
    torch.manual_seed(0)
    eigenvalues = torch.cat([torch.tensor([100.0, 50.0, 20.0]), torch.linspace(-1, 1, 397)])
    basis = torch.linalg.qr(torch.randn(400, 400, dtype=torch.float64))[0]
    H = (basis * eigenvalues.double()) @ basis.T

    def matmat(V):
        return (V.double() @ H).float()

    probes = torch.randn(2, 400)
    alpha, beta, steps = lanczos(matmat, probes, iters=120)
    nodes, weights = ritz(alpha, beta, steps)
    for top in (100.0, 50.0, 20.0):
        assert int(((nodes - top).abs() < 1e-2).sum(dim=1).max()) == 1
    q = probes / probes.norm(dim=1, keepdim=True)
    for power in (1, 2):
        exact = ((q.double() @ torch.linalg.matrix_power(H, power)) * q.double()).sum(dim=1)
        torch.testing.assert_close((weights * nodes**power).sum(dim=1), exact, rtol=1e-4, atol=1e-4)


def test_reorthogonalisation_subtracts_only_overlaps_above_the_square_root_of_epsilon():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(1000, 8))[0].T.unsqueeze(0)  # one probe's 8 orthonormal vectors
    outside = torch.randn(1000)
    outside -= basis[0].T @ (basis[0] @ outside)
    outside /= outside.norm()
    tolerance = torch.finfo(torch.float32).eps ** 0.5
    nearly = (outside + 0.5 * tolerance * basis[0, 3]).unsqueeze(0)  # overlap under √ε: left as it is
    assert torch.equal(_reorthogonalise(basis, nearly.clone()), nearly)
    far = (outside + 4 * tolerance * basis[0, 3] + 0.3 * basis[0, 5]).unsqueeze(0)
    cleaned = _reorthogonalise(basis, far.clone())
    assert float((basis[0] @ cleaned[0]).abs().max()) < 1e-6
    torch.testing.assert_close(cleaned[0], outside, atol=1e-6, rtol=0)


@pytest.mark.parametrize("power", [0, 1, 2, 3])
def test_quadrature_is_exact_for_low_degree_moments_of_each_probe(power):
    # Gauss quadrature with m nodes integrates polynomials of degree <= 2m - 1 exactly:
    # Σ τ θ^p = vᵀ H^p v / vᵀv for each probe.
    model, data = small_problem()
    H = autograd_hessian(model, data)
    op = HessianOperator(model, data)
    probes = rademacher_probes(op.params, 3)
    spectrum = slq(op, probes, iters=4, at_once=2)
    Hp = torch.linalg.matrix_power(H, power)
    for i in range(3):
        v = probes[i] / probes[i].norm()
        quad = float((spectrum.weights[i] * spectrum.nodes[i] ** power).sum())
        assert quad == pytest.approx(float(v @ Hp @ v), rel=1e-8, abs=1e-12)


def test_slq_density_moments_match_the_dense_spectrum():
    model, data = small_problem()
    exact = torch.linalg.eigvalsh(autograd_hessian(model, data))
    op = HessianOperator(model, data)
    torch.manual_seed(1)
    spectrum = slq(op, rademacher_probes(op.params, 200), iters=op.dim)
    grid, dens = density(spectrum, bins=20_000, sigma2=1e-7)
    step = float(grid[1] - grid[0])
    assert float(dens.sum()) * step == pytest.approx(1.0)
    for power in (1, 2):
        from_density = float((dens * grid**power).sum()) * step
        truth = float((exact**power).mean())
        spread = float((exact**power).std())
        # 200 Rademacher probes: the estimate's error is a few spread / sqrt(200 * D)
        assert abs(from_density - truth) < 4 * spread / (200 * op.dim) ** 0.5 + 1e-6
    assert spectrum.summary()["trace"] == pytest.approx(float(exact.sum()), rel=0.05)


def test_hutchinson_trace_is_the_mean_of_v_h_v():
    model, data = small_problem()
    H = autograd_hessian(model, data)
    op = HessianOperator(model, data)
    torch.manual_seed(2)
    probes = rademacher_probes(op.params, 500)
    quads = hutchinson_trace(op, probes)
    torch.testing.assert_close(quads, torch.einsum("kd,de,ke->k", probes, H, probes))
    assert float(quads.mean()) == pytest.approx(float(torch.trace(H)), rel=0.1)


def test_power_iteration_finds_the_largest_magnitude_eigenvalues():
    model, data = small_problem()
    H = autograd_hessian(model, data)
    exact = torch.linalg.eigvalsh(H)
    by_magnitude = exact[exact.abs().argsort(descending=True)]
    op = HessianOperator(model, data)
    values, vectors = top_eigenvalues(op, k=2, iters=2000, tol=1e-12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(values, by_magnitude[:2], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)

"""The pruning-limit prediction (Gaussian width of the loss sublevel set) and its measurement (LOMP):
formulas against naive loops and a quadratic loss whose answer is known in closed form, then
`equiprune limit` end to end on an MNIST subset."""

import json
import math

import pytest
import torch
import torch.nn as nn

from equiprune.cli import main
from equiprune.config import LimitConfig, parse_config
from equiprune.core.weight_players import prunable_parameters
from equiprune.curvature.hessian import HessianOperator, rademacher_probes
from equiprune.curvature.lanczos import density, slq
from equiprune.curvature.pruning_limit import (
    crossing,
    loss_noise,
    magnitude_scan,
    measured_limit,
    prune_distances,
    ratio_grid,
    refine_ratios,
    width_fraction,
)
from equiprune.errors import ConfigError
from equiprune.experiments.loop import run
from equiprune.methods import build_method


def test_prune_distances_match_a_naive_loop():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    flat = torch.cat([p.reshape(-1) for p in params]).double()
    ratios = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.96], dtype=torch.float64)
    got_global = prune_distances(params, ratios, "global")
    got_tensor = prune_distances(params, ratios, "per-tensor")
    for i, rho in enumerate(ratios.tolist()):
        n = round(rho * flat.numel())
        cut = sorted(range(flat.numel()), key=lambda j: abs(float(flat[j])))[:n]
        diff = torch.zeros_like(flat)
        diff[cut] = flat[cut]
        assert float(got_global[i]) == pytest.approx(float(diff.norm()))
        per, start = 0.0, 0
        for p in params:
            per += float(diff[start : start + p.numel()].norm())
            start += p.numel()
        assert float(got_tensor[i]) == pytest.approx(per)
        assert got_tensor[i] >= got_global[i] - 1e-12  # Σ‖·‖ ≥ ‖·‖


def test_width_fraction_is_the_papers_ellipsoid_formula():
    nodes = torch.tensor([0.5, 2.0, -1.0, 10.0], dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    eps, R = 0.03, torch.tensor([0.0, 0.2, 1.5])
    got = width_fraction(nodes, weights, eps, R)
    for j, r in enumerate(R.tolist()):
        radii2 = [2 * eps / abs(lam) for lam in nodes.tolist()]
        want = sum(p * rk / (r**2 + rk) for p, rk in zip(weights.tolist(), radii2)) / float(weights.sum())
        assert float(got[j]) == pytest.approx(want)
    assert float(got[0]) == pytest.approx(1.0)  # at R = 0 the set covers every direction
    # a zero eigenvalue is an infinitely long axis: it always counts fully
    assert float(width_fraction(torch.zeros(1), torch.ones(1), eps, torch.tensor([5.0]))[0]) == 1.0


class _Quadratic(nn.Module):
    """L(w) = ½ Σ h_i (w_i − c_i)², whatever the input: its Hessian is diag(h)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w


def test_prediction_on_a_quadratic_loss_matches_the_closed_form():
    # Half the Hessian's eigenvalues are 0, half are h; every weight has magnitude a. Then
    # R(ρ) = a·sqrt(ρD) and pred(R) = ½ + ½·2ε/(2ε + hR²), and pred(R(ρ)) = ρ solves
    # c·ρ² + (2ε − c/2)·ρ − 2ε = 0 with c = h·a²·D.
    D, h, a, eps = 1000, 4.0, 0.05, 0.02
    signs = torch.where(torch.arange(D) % 3 == 0, -1.0, 1.0).double()
    model = _Quadratic(a * signs)
    curvature = torch.cat([torch.zeros(D // 2), torch.full((D // 2,), h)]).double()

    def loss(out, y):
        return 0.5 * (curvature * (out - 0.3) ** 2).sum()

    op = HessianOperator(model, [(torch.zeros(1), torch.zeros(1))], loss_fn=loss)
    torch.manual_seed(0)
    spectrum = slq(op, rademacher_probes(op.params, 3), iters=50)
    # A two-point spectrum: Lanczos stops after two steps with both eigenvalues exact.
    nodes, weights = spectrum.flat()
    assert sorted({round(float(v), 9) for v, w in zip(nodes, weights) if w > 0}) == [0.0, h]
    assert float(weights[nodes.abs() < 1e-9].sum()) == pytest.approx(0.5)

    c = h * a * a * D
    closed = (-(2 * eps - c / 2) + math.sqrt((2 * eps - c / 2) ** 2 + 8 * eps * c)) / (2 * c)
    ratios = ratio_grid(0.001)
    R = prune_distances(list(model.parameters()), ratios)
    torch.testing.assert_close(R, a * (ratios * D).sqrt())
    quad = crossing(ratios, width_fraction(nodes, weights, eps, R))
    assert closed <= quad < closed + 0.001 + 1e-12
    # Smoothing spreads the zero atom over ±σ and |λ| is kinked there, so the smoothed density
    # predicts a little lower, by about E|λ|·R²/(2ε) of that atom's share: keep σ small here.
    grid, dens = density(spectrum, bins=100_000, sigma2=1e-9)
    smoothed = crossing(ratios, width_fraction(grid, dens * float(grid[1] - grid[0]), eps, R))
    assert smoothed == pytest.approx(closed, abs=0.003)


def test_loss_noise_is_the_deviation_of_per_batch_losses():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    with torch.no_grad():
        losses = [float(nn.functional.cross_entropy(model(x), y)) for x, y in batches]
    losses = torch.tensor(losses, dtype=torch.float64)
    mean, std = loss_noise(model, batches, nn.functional.cross_entropy)
    assert (mean, std) == pytest.approx((float(losses.mean()), float(losses.std())))
    mean2, std2 = loss_noise(model, batches, nn.functional.cross_entropy, penalty=0.7)
    assert (mean2, std2) == pytest.approx((mean + 0.7, std))


def test_magnitude_scan_prunes_the_right_count_and_restores_the_weights():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(10, 10)), nn.Parameter(torch.randn(10))]
    before = [p.detach().clone() for p in params]
    seen = []

    def zeros_and_smallest_kept():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        kept = flat[flat != 0].abs()
        seen.append(float(kept.min()) if len(kept) else float("inf"))
        return float((flat == 0).sum())

    out = magnitude_scan(params, [0.0, 0.25, 0.5, 0.999], zeros_and_smallest_kept)
    assert out == [0, round(0.25 * 110), 55, round(0.999 * 110)]
    everything = torch.cat([b.reshape(-1) for b in before]).abs().sort().values
    assert seen[2] == pytest.approx(float(everything[55]))  # the largest |w| survive
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_measured_limit_and_the_refinement_grid():
    ratios = [0.0, 0.01, 0.02, 0.03, 0.04]
    accs = [0.95, 0.951, 0.949, 0.90, 0.952]  # an isolated lucky point beyond a failure still counts
    assert measured_limit(ratios, accs, dense=0.95, tolerance=0.001) == 0.04
    assert measured_limit(ratios, [0.95, 0.95, 0.9, 0.9, 0.9], dense=0.95, tolerance=0.0) == 0.01
    assert measured_limit(ratios, [0.5] * 5, dense=0.95, tolerance=0.0) == 0.0
    fine = refine_ratios(ratios[:4], [0.95, 0.95, 0.9, 0.9], 0.95, 0.0, 0.001)
    assert fine[0] == pytest.approx(0.001) and fine[-1] == pytest.approx(0.019) and len(fine) == 18


def test_limit_settings_are_validated_by_name():
    cases = [(dict(step=0.003), "limit.step"), (dict(probes=0), "limit.probes"),
             (dict(tolerance=1.5), "limit.tolerance"), (dict(hessian_samples=0), "hessian_samples")]  # fmt: skip
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match):
            LimitConfig(**bad)
    with pytest.raises(ConfigError, match=r"limit: unknown key 'prob' \(did you mean 'probes'\?\)"):
        parse_config("[limit]\nprob = 3\n")


def test_lomp_penalty_is_l1_of_weights_and_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with_biases = build_method("lomp", settings={"l1": 1e-3})
    weights_only = build_method("lomp", settings={"l1": 1e-3, "include_biases": False})
    with torch.no_grad():
        every = sum(float(p.abs().sum()) for p in model.parameters())
        weights = sum(float(m.weight.abs().sum()) for m in model if isinstance(m, nn.Linear))
    assert with_biases.l1_term(model) == pytest.approx(1e-3 * every)
    assert weights_only.l1_term(model) == pytest.approx(1e-3 * weights)
    assert with_biases.penalty(model).requires_grad  # a term of the training loss
    assert type(with_biases).training_key(with_biases.settings) != type(weights_only).training_key(
        weights_only.settings
    )
    assert len(prunable_parameters(model, include_biases=True)) == 4
    with pytest.raises(ConfigError, match="method.l1"):
        build_method("lomp", settings={"l1": -1.0})


LIMIT_CONFIG = """
seed = 0
device = "cpu"
[data]
dataset = "mnist"
root = "{root}"
train_subset = 2048
test_subset = 1000
batch_size = 128
[model]
hidden = [32]
[train]
epochs = 2
optimizer = "sgd"
lr = 0.05
[method]
name = "lomp"
l1 = 1e-4
budget = 0.2
[limit]
probes = 2
iters = 12
hessian_samples = 512
hessian_batch_size = 256
bins = 2000
"""


def test_limit_command_end_to_end(tmp_path, data_root, capsys):
    config = tmp_path / "lomp.toml"
    config.write_text(LIMIT_CONFIG.format(root=data_root))
    out = tmp_path / "limit"
    assert main(["limit", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "limit.json").read_text())
    assert f"predicted_ratio={result['predicted_ratio']:.3f}" in printed
    assert f"measured_ratio={result['measured_ratio']:.3f}" in printed
    for key in ("predicted_ratio", "measured_ratio", "predicted_ratio_global", "predicted_ratio_per_tensor"):
        assert 0.0 <= result[key] < 1.0
    assert result["predicted_ratio_per_tensor"] <= result["predicted_ratio_global"]  # larger R, earlier crossing
    sp = result["spectrum"]
    assert sp["dim"] == 784 * 32 + 32 + 32 * 10 + 10 and sp["hessian_samples"] == 512 and sp["probes"] == 2
    assert sp["lambda_max"] > 0 and len(sp["ritz_values"]) == 2
    scan = result["scan"]
    assert scan["ratio"] == sorted(scan["ratio"]) and scan["ratio"][0] == 0.0
    assert scan["test_accuracy"][0] == pytest.approx(result["dense_test_accuracy"])
    ok = [r for r, a in zip(scan["ratio"], scan["test_accuracy"]) if a >= result["dense_test_accuracy"] - 0.001]
    assert result["measured_ratio"] == max(ok)
    assert (out / "spectral_density.png").stat().st_size > 0 and (out / "pruning_limit.png").stat().st_size > 0
    assert (out / "run" / "trained_state.pt").is_file()
    # the weights' magnitude: every Linear weight and bias of the trained state (biases included)
    state = torch.load(out / "run" / "trained_state.pt")
    flat = torch.cat([v.reshape(-1).double() for v in state.values()])
    assert result["weight_magnitude"]["mean_abs"] == pytest.approx(float(flat.abs().mean()))
    assert result["weight_magnitude"]["rms"] == pytest.approx(float(flat.pow(2).mean().sqrt()))

    # The run directory itself is a target too, and CLI flags override [limit].
    again = tmp_path / "again"
    assert main(["limit", str(out / "run"), "--out", str(again), "--quiet", "--probes", "1", "--iters", "5"]) == 0
    second = json.loads((again / "limit.json").read_text())
    assert second["spectrum"]["probes"] == 1 and second["spectrum"]["iters"] == 5
    assert second["measured_ratio"] == result["measured_ratio"]  # the same trained model, the same scan
    # ...and without flags it keeps the config's [limit] (kept beside the run), not the defaults
    assert (out / "run" / "limit_settings.json").is_file()
    assert main(["limit", str(out / "run"), "--out", str(tmp_path / "third"), "--quiet", "--iters", "5"]) == 0
    third = json.loads((tmp_path / "third" / "limit.json").read_text())
    assert third["spectrum"]["hessian_samples"] == 512 and third["spectrum"]["probes"] == 2


def test_limit_refuses_what_it_cannot_analyse(tmp_path, data_root, capsys):
    assert main(["limit", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nothing does not exist, and equiprune ships no configuration of that name (it ships: fc_fashion" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["limit", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "not an equiprune run directory" in capsys.readouterr().err


def test_lenet5_trains_under_lomp_and_saves_its_trained_state(tmp_path, data_root):
    text = LIMIT_CONFIG.format(root=data_root).replace("hidden = [32]", 'name = "lenet5"')
    text = text.replace("epochs = 2", "epochs = 1")
    cfg = parse_config(text)
    results = run(cfg, tmp_path / "run", quiet=True)
    state = torch.load(tmp_path / "run" / "trained_state.pt")
    assert state["0.weight"].shape == (6, 1, 5, 5)
    assert results["params_before"] == 61706 and results["kept_fraction"] == pytest.approx(0.2, abs=1e-3)


def test_a_bad_command_line_setting_fails_before_any_training(tmp_path, data_root, capsys):
    config = tmp_path / "lomp.toml"
    config.write_text(LIMIT_CONFIG.format(root=data_root))
    out = tmp_path / "limit"
    assert main(["limit", str(config), "--out", str(out), "--quiet", "--probes", "0"]) == 2
    assert "limit.probes" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written

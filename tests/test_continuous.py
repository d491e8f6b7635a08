"""Continuous sparsification (spred, PILoT, STR, CS) against independent references."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from equiprune.config import parse_config
from equiprune.core.reparam import balanced_factors, fold, l1_position, raw_weight
from equiprune.errors import ConfigError, PruningError, TrainingDiverged
from equiprune.experiments import loop as train
from equiprune.experiments.mirror_flow import Problem, compare, predicted
from equiprune.methods import build_method

from .helpers import mlp_config


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _cnn_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _prepared(name, players=None, model=None, **settings):
    method = build_method(name, settings={"budget": 0.5, **settings}, players=players)
    return method, method.prepare(model if model is not None else _mlp())


X = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, players", [("spred", None), ("pilot", None), ("str", None), ("cs", None),
                                           ("spred", "neuron"), ("pilot", "neuron")])  # fmt: skip
def test_folding_gives_a_plain_model_computing_the_same_and_leaves_the_original_working(name, players):
    method, model = _prepared(name, players)
    with torch.no_grad():  # move every factor off its start so that folding has something to do
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if name == "cs":
        for p in method.reparams.values():
            p.hard = True  # the fold uses the hard mask; compare with it
    expected = model(X)
    plain = fold(model)
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential) for m in plain.modules())
    assert set(dict(plain.named_parameters())) == set(dict(_mlp().named_parameters()))
    torch.testing.assert_close(plain(X), expected)
    torch.testing.assert_close(model(X), expected)  # the reparametrised model still runs (shared classes)


@pytest.mark.parametrize("players", [None, "neuron"])
def test_pilot_starts_balanced_and_computes_the_initial_network(players):
    reference = _mlp()
    method, model = _prepared("pilot", players, beta=0.5)
    torch.testing.assert_close(model(X), reference(X))
    c, x = method.invariants()
    torch.testing.assert_close(c, torch.full_like(c, 0.5))


@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=20), st.floats(0.01, 10))
@settings(max_examples=50, deadline=None)
def test_balanced_factors_multiply_to_x_and_differ_in_squares_by_beta(values, beta):
    x = torch.tensor(values, dtype=torch.float64)
    m, w = balanced_factors(x, beta)
    torch.testing.assert_close(m * w, x)
    torch.testing.assert_close(m * m - w * w, torch.full_like(x, beta))


@pytest.mark.parametrize("name, factor", [("spred", "m"), ("pilot", "m"), ("str", "s"), ("cs", None)])
def test_the_decay_adds_exactly_the_gradient_of_its_penalty(name, factor):
    """Against autograd: the hooks' gradients equal those of loss + α/2·(Σ‖w‖² + Σ‖factor‖²)."""
    method, model = _prepared(name, decay=0.01) if name != "pilot" else _prepared(name, alpha_init=0.01)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    tensors = method.decayed_tensors()
    assert len(tensors) == 3 * (2 if factor else 1)
    extra = method.penalty(model)
    loss = F.cross_entropy(model(X), y) + (extra if extra is not None else 0)
    hooked = torch.autograd.grad(loss, tensors)
    method.decay = lambda: 0.0  # the hooks off: the same loss with the penalty written out
    extra = method.penalty(model)
    penalty = 0.5 * 0.01 * sum(t.pow(2).sum() for t in tensors)
    reference = torch.autograd.grad(F.cross_entropy(model(X), y) + penalty + (extra if extra is not None else 0),
                                    tensors)  # fmt: skip
    for a, b in zip(hooked, reference):
        torch.testing.assert_close(a, b)


def test_gradient_flow_conserves_the_invariant_and_weight_decay_moves_it_towards_l1():
    def train_steps(decay):
        method, model = _prepared("spred", decay=decay)
        y = torch.randint(0, 3, (7,), generator=torch.Generator().manual_seed(2))
        opt = torch.optim.SGD(method.weight_parameters(model), lr=1e-3)
        c0, _ = method.invariants()
        for _ in range(300):
            opt.zero_grad()
            loss = F.cross_entropy(model(X), y)
            extra = method.penalty(model)
            (loss + extra if extra is not None else loss).backward()
            opt.step()
        return method, c0

    method, c0 = train_steps(0.0)
    c, _ = method.invariants()
    assert float((c - c0).abs().max()) < 1e-4  # gradient descent with a small step: c = m² − w² held
    decayed, _ = train_steps(1.0)
    c_decayed, x_decayed = decayed.invariants()
    # with decay α, c shrinks by (1 − lr·α)² per step: 300 steps at lr·α = 1e-3 → ×0.549
    torch.testing.assert_close(c_decayed, c0 * (1 - 1e-3) ** 600, rtol=2e-3, atol=2e-4)
    assert l1_position(c_decayed, x_decayed) > l1_position(*method.invariants())


def test_l1_position_from_the_potentials_curvature():
    x = torch.tensor([0.3, -0.4])
    assert l1_position(torch.zeros(2), x) == 1.0  # c = 0: Q'' = 1/(2|x|), the L1 end
    assert l1_position(torch.ones(2), torch.zeros(2)) == 0.0  # x = 0: quadratic
    rms = math.sqrt((0.09 + 0.16) / 2)
    assert l1_position(torch.tensor([0.5, -0.5]), x) == pytest.approx(1 - 0.5 / math.sqrt(0.25 + 4 * rms**2))


def test_pilot_schedule_grows_the_decay_while_allowed_and_shrinks_it_otherwise():
    method, model = _prepared("pilot", alpha_init=1e-3, delta=2.0, l1_floor=0.0)
    method.before_run(model, steps_per_epoch=1, epochs=6)
    alphas = []
    for accuracy in (0.5, 0.6, 0.55, 0.7, 0.8, 0.9):
        method.after_epoch(model, {"train_accuracy": accuracy})
        alphas.append(method.decay())
    # grows at epochs 1 and 2; shrinks at 3 (the accuracy dropped) and from 4 on (past half of 6 epochs)
    assert alphas == pytest.approx([2e-3, 4e-3, 2e-3, 1e-3, 5e-4, 2.5e-4])
    floor_bound, model = _prepared("pilot", alpha_init=1e-3, delta=2.0, l1_floor=1.0)
    floor_bound.before_run(model, 1, 6)
    with torch.no_grad():
        model[1].parametrizations.weight.original.mul_(0.5)  # ‖m ⊙ w‖₁ now below K
    floor_bound.after_epoch(model, {"train_accuracy": 0.5})
    assert floor_bound.decay() == pytest.approx(5e-4)


def test_pilot_schedule_driving_the_decay_past_overflow_stops_with_a_named_error():
    method, model = _prepared("pilot", alpha_init=0.6, delta=2.0, l1_floor=0.0)
    method.before_run(model, 1, 10)
    with pytest.raises(TrainingDiverged, match=r"method 'pilot'.*α to 1\.2.*lower method\.delta"):
        method.after_epoch(model, {"train_accuracy": 0.5})


def test_cs_anneals_the_temperature_geometrically_and_ends_on_the_hard_mask():
    method, model = _prepared("cs", temperature_final=100.0)
    method.before_run(model, steps_per_epoch=5, epochs=2)
    temperature = lambda: float(next(iter(method.reparams.values())).temperature)  # noqa: E731
    assert temperature() == 1.0
    for _ in range(5):
        method.after_step(model)
    assert temperature() == pytest.approx(10.0)
    with torch.no_grad():
        method.reparams["1"].s[0, :3] = -1.0
    assert method.emergent_sparsity() == pytest.approx(3 / (30 + 20 + 12))
    assert bool((fold(model)[1].weight[0, :3] == 0).all())


def test_str_zeroes_exactly_the_weights_below_its_threshold():
    method, model = _prepared("str", s_init=-1.0)
    tau = 1 / (1 + math.exp(1.0))
    w = raw_weight(model[1]).detach()
    expected = torch.sign(w) * (w.abs() - tau).clamp(min=0)
    torch.testing.assert_close(model[1].weight, expected)
    zeros = sum(int((layer.weight == 0).sum()) for layer in method._layers.values())
    assert method.emergent_sparsity() == pytest.approx(zeros / 62)


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("pilot", {"delta": 1.0}, "method.delta: the schedule's factor must be > 1"),
        ("pilot", {"beta": 0.0}, "method.beta"),
        ("spred", {"decay": -1e-4}, "method.decay: a weight decay must be a finite number >= 0"),
        ("pilot", {"alpha_init": -1.0}, "method.alpha_init"),
        ("str", {"decay": float("nan")}, "method.decay"),
        ("cs", {"budget": 1.5}, r"method.budget: must lie in \(0, 1\]"),
        ("spred", {"budget": 0.0}, r"method.budget: must lie in \(0, 1\]"),
        ("cs", {"temperature_final": 0.5}, "method.temperature_final"),
    ],
)
def test_bad_settings_name_the_setting(name, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_method(name, settings=setting)


def test_a_model_with_nothing_to_reparametrise_is_refused_by_name():
    with pytest.raises(PruningError, match="no Linear or Conv layer"):
        _prepared("spred", model=nn.Sequential(nn.Flatten(), nn.ReLU()))
    with pytest.raises(PruningError, match="no hidden layer with neuron players"):
        _prepared("pilot", "neuron", model=nn.Sequential(nn.Flatten(), nn.Linear(6, 3)))
    with pytest.raises(PruningError, match="BatchNorm.*players = 'weight'"):
        _prepared("spred", "filter", model=_cnn_bn())
    with pytest.raises(ConfigError, match="method 'str' cannot prune 'neuron' players"):
        parse_config('[method]\nname = "str"\nplayers = "neuron"')


def _config(data_root, name, extra="", players="", epochs=4):
    method = f'name = "{name}"\nbudget = 0.1\n{players}\n{extra}'
    return parse_config(mlp_config(data_root, method, epochs=epochs, train='optimizer = "sgd"\nlr = 0.05'))


@pytest.mark.parametrize("name, extra", [("spred", "decay = 1e-3"), ("pilot", "delta = 2.0"), ("str", ""),
                                         ("cs", "mask_l1 = 1e-5")])  # fmt: skip
def test_each_method_runs_end_to_end_lands_on_the_budget_and_says_what_it_cut(tmp_path, data_root, name, extra):
    results = train.run(_config(data_root, name, extra), tmp_path / name, quiet=True)
    weights = 784 * 32 + 32 * 16 + 16 * 10
    assert results["players"] == "weight"
    assert sum(results["kept"].values()) == round(0.1 * weights)
    fit = results["budget_fit"]
    assert fit["unit"] == "weight" and fit["kept"] == round(0.1 * weights)
    assert fit["removed_by_fit"] - fit["restored_by_fit"] == fit["decided"] - fit["kept"]
    assert results["test_accuracy"] > 0.5
    rows = [r for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("emergent_sparsity" in r for r in rows[:3])
    if name in ("spred", "pilot"):
        assert all("l1_position" in r for r in rows[:3])
        assert (tmp_path / name / "dynamics.png").is_file()


def test_structured_pilot_prunes_whole_neurons_to_the_budget(tmp_path, data_root):
    results = train.run(_config(data_root, "pilot", players='players = "neuron"'), tmp_path / "n", quiet=True)
    assert results["players"] == "neuron"
    assert sum(results["kept"].values()) == round(0.1 * 48)
    assert results["budget_fit"]["unit"] == "neuron"
    rows = [json.loads(r) for r in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["emergent_sparsity"] <= 1 for r in rows[:3])
    assert results["params_after"] < 784 * 5 + 5 * 3 + 3 * 10 + 18


def test_an_interrupted_pilot_run_resumes_to_the_same_result(tmp_path, data_root, monkeypatch):
    cfg = _config(data_root, "pilot", "delta = 2.0")
    whole = train.run(cfg, tmp_path / "whole", quiet=True)
    real, calls = train.Trainer._train_epoch, []

    def crash(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(train.Trainer, "_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "cut", quiet=True)
    monkeypatch.setattr(train.Trainer, "_train_epoch", real)
    resumed = train.run(cfg, tmp_path / "cut", resume=True, quiet=True)
    for r in (whole, resumed):
        r.pop("seconds")
    assert resumed == whole


def test_mirror_flow_gradient_descent_lands_on_the_implicit_bias_prediction():
    """The prediction solves its own convex problem (no training); gradient descent on m, w must land
    on it, for an L1-like (small β) and an L2-like (large β) potential."""
    problem = Problem.sparse(n=10, d=30, k=2, seed=3)
    rows = {r["beta"]: r for r in compare(problem, [0.05, 10.0])}
    for r in rows.values():
        assert r["relative_gap"] < 5e-3
        x_hat = torch.tensor(r["x_predicted"], dtype=torch.float64)
        torch.testing.assert_close(problem.X @ x_hat, problem.y)  # a solution of Xx = y
    assert rows[10.0]["error_to_min_norm"] < 0.01  # L2 end: the minimum-norm solution
    assert rows[0.05]["l1_gd"] < rows[10.0]["l1_gd"]  # L1 end: a smaller ℓ1 norm


def test_mirror_flow_prediction_is_the_bregman_minimiser():
    """Against an independent check: any other solution of Xx = y near x̂ has a larger D_Q(x, 0)."""
    problem = Problem.sparse(n=6, d=15, k=2, seed=1)
    beta = 0.2
    x_hat = predicted(problem, beta)

    def potential(x):  # Q with Q'(x) = asinh(2x/β)/2, Q(0) = 0, Q'(0) = 0: D_Q(x, 0) = Q(x)
        return float((x * torch.asinh(2 * x / beta) / 2 - torch.sqrt(x * x + beta**2 / 4) / 2 + beta / 4).sum())

    null = torch.linalg.svd(problem.X).Vh[problem.X.shape[0] :]  # directions keeping Xx = y
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        direction = null.T @ torch.randn(null.shape[0], generator=g, dtype=torch.float64)
        assert potential(x_hat + 0.05 * direction) > potential(x_hat)


def test_mirror_flow_command_writes_its_outputs(tmp_path, capsys):
    from equiprune.cli import main

    assert main(["mirror-flow", "--out", str(tmp_path), "--seed", "1", "--betas", "0.1,10"]) == 0
    printed = capsys.readouterr().out
    assert "beta=0.1 gap_to_prediction=" in printed and "beta=10 gap_to_prediction=" in printed
    for name in ("mirror_flow.json", "mirror_flow.md", "mirror_flow.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert main(["mirror-flow", "--out", str(tmp_path), "--betas", "0,1"]) == 2
    assert "--betas: expected comma-separated numbers > 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lenet300_mnist_continuous", "lenet5_fashion_continuous",
                                  "resnet20_cifar10_continuous"])  # fmt: skip
def test_shipped_continuous_sweeps_plan_every_method_at_every_budget(name):
    from equiprune.config import shipped_config
    from equiprune.experiments.sweep import load_sweep

    runs = load_sweep(shipped_config("sweeps", f"{name}.toml")).runs
    labels = {r.label for r in runs}
    assert {"pilot", "spred", "str", "cs", "gmp", "imp", "weight-magnitude", "snip"} <= labels
    pilot = [r for r in runs if r.label == "pilot"]
    assert len(pilot) == 9 and {r.config.method.settings.budget for r in pilot} == {0.1, 0.05, 0.02}
    assert len({r.config.train.epochs for r in runs if r.label != "dense"}) == 1  # equal epochs


def test_the_resnet20_cifar10_sweep_runs_on_cifar_format_files(cifar10_files, tmp_path):
    import tomllib

    import tomli_w

    from equiprune.cli import main
    from equiprune.config import shipped_config

    shipped = tomllib.loads(shipped_config("sweeps", "resnet20_cifar10_continuous.toml").read_text())
    small = {**shipped, "seeds": [0], "budgets": [0.1]}
    small["base"] = {**shipped["base"], "device": "cpu", "threads": 1}
    small["base"]["data"] = {**shipped["base"]["data"], "root": str(cifar10_files), "batch_size": 4}
    small["base"]["model"] = {**shipped["base"]["model"], "width": 0.25}
    small["base"]["train"] = {**shipped["base"]["train"], "epochs": 2, "finetune_epochs": 1}
    small["methods"] = [m for m in shipped["methods"] if m["name"] in ("pilot", "cs")]
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(tomli_w.dumps(small))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pilot" in report and "cs" in report


def test_a_pilot_schedule_that_overflows_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, data_root, monkeypatch
):
    from equiprune.methods.continuous import Pilot

    real = Pilot.after_epoch

    def rising(self, trained, row):  # every epoch "better": the schedule grows α each time
        real(self, trained, {**row, "train_accuracy": float(self._epochs_done)})

    monkeypatch.setattr(Pilot, "after_epoch", rising)
    cfg = _config(data_root, "pilot", "alpha_init = 0.01\ndelta = 12.0\nl1_floor = 0.0", epochs=5)  # 4 under pilot
    with pytest.raises(TrainingDiverged, match=r"α to 1\.44 after epoch 2.*last good checkpoint \(after epoch 1\)"):
        train.run(cfg, tmp_path / "run", quiet=True)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_the_methods_own_tensors_are_kept_out_of_the_optimizers_weight_decay():
    method, model = _prepared("spred")
    rest, own = method.weight_parameters(model)
    assert own["weight_decay"] == 0.0 and "weight_decay" not in rest
    own_ids = {id(p) for p in own["params"]}
    assert {id(method.reparams["1"].m), id(raw_weight(model[1]))} <= own_ids
    assert {id(p) for p in rest["params"]} == {id(model[i].bias) for i in (1, 3, 5)}


def test_emergent_sparsity_counts_weights_or_for_players_whole_rows():
    method, model = _prepared("spred")
    with torch.no_grad():
        raw_weight(model[1])[0, :4] = 0.0
    assert method.emergent_sparsity() == pytest.approx(4 / (30 + 20 + 12))
    rows, model = _prepared("spred", "neuron")
    assert set(rows._layers) == {"1", "3"}  # the producers of the hidden neurons, not the output layer
    with torch.no_grad():
        raw_weight(model[1])[0, :4] = 0.0  # part of a row: the row is still alive
        raw_weight(model[3])[2] = 0.0  # a whole row: one neuron at zero
    assert rows.emergent_sparsity() == pytest.approx(1 / (5 + 4))

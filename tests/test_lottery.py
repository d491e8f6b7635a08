"""Lottery tickets: the mask regularizers, concave-mask, the ticket protocol shared with imp, the
``ticket`` retraining and its sanity baselines, the study, and the convex sanity check."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.cli import main
from equiprune.config import parse_config
from equiprune.core.mask_regularizers import REGULARIZERS, regularizer
from equiprune.errors import ConfigError
from equiprune.experiments import loop as train
from equiprune.experiments import lottery
from equiprune.experiments.lottery import load_study, run_study
from equiprune.experiments.mask_convex import ConvexSettings, _loss_grad, run_check
from equiprune.methods import build_method
from equiprune.methods.tickets import load_tickets, random_like

from .helpers import mlp_config


@dataclass(frozen=True)
class _Reg:
    regularizer: str
    epsilon: float = 0.1
    p: float = 0.5
    a: float = 3.7


# --- the regularizers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_each_regularizers_slope_is_the_derivative_of_its_value_and_one_at_zero(name):
    reg = regularizer(_Reg(name))
    m = torch.linspace(0.0, 1.0, 101, dtype=torch.float64).requires_grad_()
    (auto,) = torch.autograd.grad(reg.value(m).sum(), m)
    inside = (m.detach() - 0.1).abs() > 1e-6  # SCAD's knee at ε: one-sided there
    inside &= (m.detach() - 0.37).abs() > 1e-6  # SCAD's and MCP's second knee at a·ε
    assert torch.allclose(reg.slope(m.detach())[inside], auto[inside], atol=1e-9)
    assert float(reg.slope(torch.zeros(1, dtype=torch.float64))) == pytest.approx(1.0)
    assert float(reg.value(torch.zeros(1, dtype=torch.float64))) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["log", "lp", "scad", "mcp"])
def test_concave_regularizers_pull_large_masks_less_than_small_ones_and_l1_does_not(name):
    m = torch.linspace(0, 1, 50, dtype=torch.float64)
    slopes = regularizer(_Reg(name)).slope(m)
    assert (slopes[1:] <= slopes[:-1] + 1e-12).all() and slopes[-1] < slopes[0]
    assert (regularizer(_Reg("l1")).slope(m) == 1).all()


@pytest.mark.parametrize("fields, message", [
    ({"regularizer": "log", "epsilon": 0.0}, "method.epsilon"),
    ({"regularizer": "lp", "p": 1.5}, "method.p"),
    ({"regularizer": "scad", "a": 2.0}, "method.a"),
    ({"regularizer": "mcp", "a": 0.5}, "method.a"),
    ({"regularizer": "cauchy"}, "method.regularizer"),
])  # fmt: skip
def test_a_regularizer_parameter_out_of_range_names_it(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_method("concave-mask", settings=fields)


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["concave-mask", "imp"])
@pytest.mark.parametrize("fields, message", [
    ({"rounds": 0}, "method.rounds"),
    ({"budget": 0.0}, "method.budget"),
    ({"rewind_step": 5, "rewind_epoch": 1}, "one rewind point"),
    ({"rounds": 2, "fractions": [0.5]}, "one kept fraction per round"),
    ({"rounds": 2, "fractions": [0.5, 0.6], "budget": 0.6}, "fall strictly"),
    ({"rounds": 2, "fractions": [0.5, 0.2], "budget": 0.1}, "keeps the budget"),
])  # fmt: skip
def test_bad_protocol_settings_are_named(name, fields, message):
    with pytest.raises(ConfigError, match=message):
        build_method(name, settings=fields)


@pytest.mark.parametrize("fields, message", [
    ({"lam": -1e-4}, "method.lam"),
    ({"threshold": 0.0}, "method.threshold"),
    ({"threshold": 1.0}, "method.threshold"),
    ({"mask_init": 0.0}, "method.mask_init"),
    ({"mask_step": 0.0}, "method.mask_step"),
])  # fmt: skip
def test_bad_concave_mask_settings_are_named(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_method("concave-mask", settings=fields)


# --- the method on a small model ------------------------------------------------------------------


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


X = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", ["log", "l1", "mcp"])
def test_the_masks_gradient_is_that_of_the_loss_plus_lambda_r_times_the_step(name):
    method = build_method("concave-mask", settings={"regularizer": name, "lam": 0.3, "mask_step": 2.0})
    model = method.prepare(_mlp())
    with torch.no_grad():
        for m in method.masks().values():
            m.uniform_(0.05, 0.95, generator=torch.Generator().manual_seed(3))
    masks = list(method.masks().values())
    F.cross_entropy(model(X), Y).backward()
    hooked = [m.grad.clone() for m in masks]
    # the reference: autograd of the penalised loss on a copy without hooks
    reference = [m.detach().clone().requires_grad_() for m in masks]
    layers = list(method.reparams)
    weights = {n: model.get_submodule(n).parametrizations.weight.original.detach() for n in layers}
    h = X
    for i, (n, m) in enumerate(zip(layers, reference)):
        layer = model.get_submodule(n)
        h = F.linear(h, m * weights[n], layer.bias.detach())
        if i < len(layers) - 1:
            h = F.relu(h)
    loss = F.cross_entropy(h, Y) + 0.3 * sum(method.regularizer.value(m).sum() for m in reference)
    auto = torch.autograd.grad(loss, reference)
    for got, want in zip(hooked, auto):
        assert torch.allclose(got, 2.0 * want, atol=1e-6)


def _steps(method, model, n):
    opt = torch.optim.SGD(method.weight_parameters(model), lr=0.5)
    for _ in range(n):  # the training loop's order: a round ends in one step and is pruned at the next's start
        method.before_step(model)
        if method.optimizer_restart():
            opt = torch.optim.SGD(method.weight_parameters(model), lr=0.5)
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()
        method.after_step(model)


def test_rounds_keep_their_fractions_nested_masks_stay_projected_and_the_ticket_is_the_rewound_weights():
    method = build_method("concave-mask", settings={"budget": 0.2, "rounds": 3, "fractions": [0.6, 0.4, 0.2],
                                                    "lam": 0.05, "mask_step": 5.0})  # fmt: skip
    model = method.prepare(_mlp())
    initial = {n: model.get_submodule(n).parametrizations.weight.original.detach().clone() for n in method.reparams}
    method.before_run(model, steps_per_epoch=4, epochs=3)  # 12 steps: rounds of 4
    _steps(method, model, 12)
    for m in method.masks().values():
        assert float(m.detach().min()) >= 0 and float(m.detach().max()) <= 1
    result = method.finish(model)
    total = 30 + 20 + 12
    counts = [sum(int(k.sum()) for k in masks.values()) for masks in method.rounds.masks]
    assert counts == [round(0.6 * total), round(0.4 * total), round(0.2 * total)]
    for earlier, later in zip(method.rounds.masks, method.rounds.masks[1:]):
        assert all(bool((later[n] <= earlier[n]).all()) for n in earlier)  # nobody comes back
    # the ticket: the initial weights on the last round's survivors (the mask dropped)
    reference = _mlp()
    with torch.no_grad():
        for n in method.reparams:
            reference.get_submodule(n).weight.copy_(initial[n] * method.rounds.masks[-1][n])
    assert torch.allclose(result.model(X), reference(X), atol=1e-6)
    assert sum(result.kept.values()) == round(0.2 * total)


def test_threshold_selection_drops_masks_below_alpha_and_caps_the_last_round_at_the_budget():
    method = build_method("concave-mask", settings={"selection": "threshold", "threshold": 0.3, "budget": 0.25,
                                                    "rounds": 1})  # fmt: skip
    model = method.prepare(_mlp())
    method.before_run(model, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        values = iter(torch.linspace(0, 1, 62).tolist())
        for m in method.masks().values():
            m.copy_(torch.tensor([next(values) for _ in range(m.numel())]).reshape(m.shape))
    method.finish(model)
    fit = method.budget_fit
    below = int((torch.linspace(0, 1, 62) < 0.3).sum())
    assert fit["decided"] == 62 - below and fit["kept"] == round(0.25 * 62)
    assert fit["removed_by_fit"] == fit["decided"] - fit["kept"]


def test_a_threshold_that_would_empty_a_layer_keeps_its_largest_mask_and_says_so():
    method = build_method("concave-mask", settings={"selection": "threshold", "threshold": 0.5, "budget": 1.0,
                                                    "rounds": 1})  # fmt: skip
    model = method.prepare(_mlp())
    method.before_run(model, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        last = list(method.masks().values())[-1]
        last.fill_(0.1)
        last[1, 2] = 0.2
    result = method.finish(model)
    assert result.kept["5"] == 1 and bool(method.alive["5"][1, 2])
    assert any("'5'" in note and "method.lam" in note for note in result.notes)


def test_concave_mask_on_heads_prunes_whole_heads_and_compacts_exactly():
    from equiprune.models import create_model

    torch.manual_seed(0)
    vit = create_model("vit", input_shape=(1, 28, 28), depth=2, dim=32, heads=4, mlp=48)
    method = build_method("concave-mask", settings={"budget": 0.5, "rounds": 1}, players="head")
    gated = method.prepare(vit)
    x = torch.randn(3, 1, 28, 28)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        for m in method.masks().values():  # a learned preference: the later heads of every block
            m.copy_(torch.tensor([0.1, 0.2, 0.8, 0.9]))
    result = method.finish(gated)
    assert set(result.kinds.values()) == {"head"} and sum(result.kept.values()) == 4
    assert all(bool(a.tolist() == [False, False, True, True]) for a in method.alive.values())
    # the ticket: the survivors at their rewound weights, the dropped heads' gates at 0 (the mask itself dropped)
    with torch.no_grad():
        for s, keep in zip(gated.gates, method.alive.values()):
            s.copy_(keep.float())
    assert torch.allclose(result.model(x), gated(x), atol=1e-5)


def test_structured_concave_mask_prunes_whole_neurons():
    method = build_method("concave-mask", settings={"budget": 0.5, "rounds": 2}, players="neuron")
    model = method.prepare(_mlp())
    method.before_run(model, steps_per_epoch=2, epochs=2)
    _steps(method, model, 4)
    result = method.finish(model)
    assert result.kinds and set(result.kinds.values()) == {"neuron"}
    assert sum(result.kept.values()) == round(0.5 * 9)
    assert [m.out_features for m in result.model if isinstance(m, nn.Linear)][:2] == [
        result.kept["1"],
        result.kept["3"],
    ]


# --- runs, tickets.pt and the ticket method -------------------------------------------------------


def _run_config(data_root, method_body, epochs=4, finetune=0):
    return parse_config(mlp_config(data_root, method_body, epochs=epochs, finetune=finetune,
                                   train='optimizer = "sgd"\nlr = 0.05'))  # fmt: skip


def test_imp_and_concave_mask_runs_write_every_rounds_ticket(tmp_path, data_root):
    for name, extra in (("imp", "rewind_epoch = 1"), ("concave-mask", 'regularizer = "log"')):
        body = f'name = "{name}"\nbudget = 0.1\nrounds = 2\nfractions = [0.3, 0.1]\n{extra}'
        results = train.run(_run_config(data_root, body, epochs=4, finetune=1), tmp_path / name, quiet=True)
        tickets = load_tickets(tmp_path / name)
        weights = 784 * 32 + 32 * 16 + 16 * 10
        assert tickets["fractions"] == [0.3, 0.1]
        counts = [sum(int(m.sum()) for m in masks.values()) for masks in tickets["masks"]]
        assert counts == [round(0.3 * weights), round(0.1 * weights)]
        assert sum(results["kept"].values()) == round(0.1 * weights)
        assert set(tickets["rewind"]) == set(_plain_keys())
    assert (tmp_path / "concave-mask" / "masks.png").is_file()
    rows = [json.loads(r) for r in (tmp_path / "concave-mask" / "metrics.jsonl").read_text().splitlines()]
    assert all({"mask_mean", "mask_below_threshold", "round"} <= set(r) for r in rows if r["phase"] == "prune")


def _plain_keys():
    from equiprune.models import create_model

    return create_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[32, 16]).state_dict().keys()


def test_a_rewind_point_beyond_the_first_round_is_refused(tmp_path, data_root):
    body = 'name = "concave-mask"\nbudget = 0.1\nrounds = 2\nrewind_epoch = 3'
    with pytest.raises(ConfigError, match="rewind point"):
        train.run(_run_config(data_root, body, epochs=4), tmp_path / "r", quiet=True)


def test_the_ticket_method_retrains_the_ticket_and_its_sanity_baselines(tmp_path, data_root):
    source = tmp_path / "search"
    train.run(_run_config(data_root, 'name = "imp"\nbudget = 0.1\nrounds = 2', epochs=2), source, quiet=True)
    tickets = load_tickets(source)
    models = {}
    for init, mask in (("rewind", "ticket"), ("reinit", "ticket"), ("rewind", "random")):
        method = build_method("ticket", settings={"source": str(source), "round": 1, "init": init, "mask": mask})
        torch.manual_seed(0)
        model = method.prepare(_plain_model())
        models[init, mask] = (method, model)
        kept = {n: int(m.sum()) for n, m in method.masks.masks.items()}
        assert kept == {n: int(m.sum()) for n, m in tickets["masks"][0].items()}
    method, model = models["rewind", "ticket"]
    for name, layer in method.masks.layers.items():
        want = tickets["rewind"][f"{name}.weight"] * tickets["masks"][0][name]
        assert torch.equal(layer.weight.detach(), want)
    reinit = models["reinit", "ticket"][1].get_submodule("1").weight.detach()
    assert not torch.allclose(reinit, model.get_submodule("1").weight.detach())
    random_method = models["rewind", "random"][0]
    assert not torch.equal(random_method.masks.masks["1"], tickets["masks"][0]["1"].to(torch.bool))
    results = train.run(_run_config(data_root, f'name = "ticket"\nsource = "{source}"\nround = 2', epochs=2),
                        tmp_path / "t", quiet=True)  # fmt: skip
    assert results["kept_fraction"] == pytest.approx(0.1, abs=1e-4) and results["test_accuracy"] > 0.5


def _plain_model():
    from equiprune.models import create_model

    return create_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[32, 16])


def test_random_masks_keep_every_layers_count():
    masks = {"a": torch.rand(5, 7) > 0.7, "b": torch.rand(3, 4) > 0.2}
    torch.manual_seed(1)
    drawn = random_like(masks)
    assert {n: int(m.sum()) for n, m in drawn.items()} == {n: int(m.sum()) for n, m in masks.items()}


@pytest.mark.parametrize("settings, message", [
    ({}, "method.source"),
    ({"source": "/nonexistent"}, "no tickets"),
])  # fmt: skip
def test_the_ticket_method_without_a_ticket_says_where_to_find_one(settings, message):
    with pytest.raises(ConfigError, match=message):
        build_method("ticket", settings=settings).prepare(_plain_model())


def test_a_ticket_round_that_does_not_exist_or_another_model_is_refused(tmp_path, data_root):
    source = tmp_path / "search"
    train.run(_run_config(data_root, 'name = "imp"\nbudget = 0.1\nrounds = 2', epochs=2), source, quiet=True)
    with pytest.raises(ConfigError, match="holds 2 rounds"):
        build_method("ticket", settings={"source": str(source), "round": 3}).prepare(_plain_model())
    with pytest.raises(ConfigError, match="do not fit"):
        build_method("ticket", settings={"source": str(source)}).prepare(_mlp())


# --- the study ------------------------------------------------------------------------------------


def _study_text(data_root, extra=""):
    return f"""
name = "tiny"
seeds = [0]
{extra if "ticket_epochs" in extra else "ticket_epochs = 1" + chr(10) + extra}
[base]
device = "cpu"
data = {{ root = "{data_root}", train_subset = 800, test_subset = 300 }}
model = {{ hidden = [16, 8] }}
train = {{ epochs = 2, optimizer = "sgd", lr = 0.05 }}

[[methods]]
name = "imp"
rounds = 2
budget = 0.1

[[methods]]
name = "concave-mask"
label = "log"
rounds = 2
budget = 0.1
"""


def test_a_study_retrains_every_rounds_ticket_and_its_baselines_and_resumes_without_redoing(tmp_path, data_root):
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root))
    study = load_study(path)
    rows = run_study(study, tmp_path / "out", quiet=True)
    assert len(rows) == 2 * 2 * 3  # methods x rounds x variants
    assert {r["variant"] for r in rows} == {"ticket", "reinit", "random"}
    for r in rows:
        assert r["kept_fraction"] == pytest.approx(r["target_fraction"] or 0.1 ** (r["round"] / 2), abs=1e-3)
    for name in ("lottery.json", "lottery.md", "lottery.png"):
        assert (tmp_path / "out" / name).is_file()
    assert (tmp_path / "out" / "log" / "seed0" / "search" / "masks.png").is_file()
    finished = tmp_path / "out" / "imp" / "seed0" / "round-2" / "random" / "results.json"
    stamp = finished.stat().st_mtime_ns
    assert run_study(study, tmp_path / "out", quiet=True) == rows
    assert finished.stat().st_mtime_ns == stamp


def test_a_study_lists_the_runs_whose_loss_was_no_better_than_a_uniform_guess(tmp_path, data_root, monkeypatch, capsys):
    """A search that did not train chose its tickets from masks that moved under λ alone: the report
    says which runs, and which epochs, below its table."""
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root, "variants = ['ticket']"))
    warning = "epoch 1 (prune): the mean training loss 2.303 is above 2.3, the loss of a uniform guess"

    def finished(cfg, where):
        bad = cfg.method.name == "concave-mask"  # the log search
        return {"kept_fraction": 0.1, "test_accuracy": 0.5, "params_after": 1, "nonzero_params_after": 1,
                "warnings": [warning] if bad else [],
                "diverged_epochs": [{"epoch": 1, "phase": "prune"}] if bad else []}  # fmt: skip

    monkeypatch.setattr(lottery, "_run_or_resume", finished)
    assert main(["lottery", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "1 run(s) had an epoch no better than a uniform guess: listed in" in capsys.readouterr().out
    report = (tmp_path / "out" / "lottery.md").read_text()
    assert "- `imp`: imp; rounds = 2, budget = 0.1" in report  # each label's settings, as the study gives them
    assert "- `log`: concave-mask; rounds = 2, budget = 0.1" in report
    assert "## Runs that diverged" in report
    assert "- `log/seed0/search`: 1 epoch(s): epoch 1 (prune)" in report
    assert "imp/" not in report.split("## Runs that diverged")[1]
    written = json.loads((tmp_path / "out" / "lottery.json").read_text())
    assert written["diverged"] == [{"run": "log/seed0/search", "warnings": [warning]}]


def test_a_study_whose_runs_all_trained_lists_none(tmp_path, data_root, monkeypatch, capsys):
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root, "variants = ['ticket']"))
    monkeypatch.setattr(
        lottery,
        "_run_or_resume",
        lambda cfg, where: {
            "kept_fraction": 0.1,
            "test_accuracy": 0.5,
            "params_after": 1,
            "nonzero_params_after": 1,
            "warnings": [],
        },
    )
    assert main(["lottery", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "uniform guess" not in capsys.readouterr().out
    assert "diverged" not in (tmp_path / "out" / "lottery.md").read_text()
    assert json.loads((tmp_path / "out" / "lottery.json").read_text())["diverged"] == []


@pytest.mark.parametrize("extra, message", [
    ("variants = ['ticket', 'shuffled']", "variants"),
    ("ticket_epochs = 0", "ticket_epochs"),
    ("rounds = [3]", "has 2 rounds"),
    ("budgets = [0.1]", "budgets"),
])  # fmt: skip
def test_bad_study_files_are_refused_before_any_run(tmp_path, data_root, extra, message):
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root, extra))
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_a_study_entry_that_finds_no_tickets_is_refused(tmp_path, data_root):
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root).replace('name = "imp"', 'name = "gmp"'))
    with pytest.raises(ConfigError, match="ticket-finding"):
        load_study(path)


def test_the_lottery_command_prints_every_ticket(tmp_path, data_root, capsys):
    path = tmp_path / "study.toml"
    path.write_text(_study_text(data_root, "variants = ['ticket']"))
    assert main(["lottery", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "imp round 2 weights_left=10.00% ticket test_accuracy=" in out and "log round 1" in out


# --- the convex sanity check ----------------------------------------------------------------------


def test_the_logistic_gradient_is_autograds():
    x = torch.randn(20, 5, dtype=torch.float64)
    y = (torch.rand(20) > 0.5).double()
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(x @ w, y), w)
    assert torch.allclose(_loss_grad(w.detach(), x, y), auto)


def test_the_convex_check_gives_masks_exact_zeros_that_the_subgradient_never_reaches(tmp_path, data_root):
    result = run_check(tmp_path, ConvexSettings(iterations=800, examples=600, lam=1e-2), root=data_root)
    rows = {r["way"]: r for r in result["rows"]}
    assert set(rows) == {"log-mask", "l1-mask", "l1-subgradient"}
    assert rows["log-mask"]["exact_zeros"] > 0.5 and rows["l1-subgradient"]["exact_zeros"] == 0.0
    # the subgradient chatters around zero: its weights keep changing sign; a projected mask stays at 0
    assert rows["l1-subgradient"]["flips_in_last_fifth"] > 10 * (rows["log-mask"]["flips_in_last_fifth"] + 1)
    assert all(r["test_accuracy"] > 0.95 for r in rows.values())
    for name in ("mask_convex.json", "mask_convex.md", "mask_convex.png"):
        assert (tmp_path / name).is_file()


def test_the_convex_check_refuses_bad_settings():
    with pytest.raises(ConfigError, match="digits"):
        ConvexSettings(digits=(3, 3))


@pytest.mark.parametrize("name", ["lenet300_mnist", "lenet5_fashion", "resnet20_cifar10", "vgg16_cifar10"])
def test_shipped_studies_compare_imp_log_and_l1_down_to_two_percent(name):
    from equiprune.config import shipped_config

    study = load_study(shipped_config("lottery", f"{name}.toml"))
    assert set(study.searches) == {"imp", "log", "l1"} and len(study.seeds) == 3
    assert {study.searches[k].get("regularizer") for k in ("log", "l1")} == {"log", "l1"}
    assert all(s["fractions"][-1] == s["budget"] == 0.02 for s in study.searches.values())


def test_the_threshold_study_sweeps_alpha_from_0_001_to_0_1():
    from equiprune.config import shipped_config

    study = load_study(shipped_config("lottery", "lenet300_mnist_threshold.toml"))
    assert {s["threshold"] for s in study.searches.values()} == {0.001, 0.01, 0.1}
    assert all(s["selection"] == "threshold" for s in study.searches.values())


@pytest.mark.parametrize("model", ["resnet20", "vgg16"])
def test_the_cifar10_studies_run_on_cifar_format_files(cifar10_files, tmp_path, model):
    import tomllib

    import tomli_w

    from equiprune.config import shipped_config

    shipped = tomllib.loads(shipped_config("lottery", f"{model}_cifar10.toml").read_text())
    small = {**shipped, "seeds": [0], "ticket_epochs": 1, "rounds": [2], "variants": ["ticket", "random"]}
    small["base"] = {**shipped["base"], "device": "cpu", "threads": 1}
    small["base"]["data"] = {**shipped["base"]["data"], "root": str(cifar10_files), "batch_size": 4}
    small["base"]["model"] = {**shipped["base"]["model"], "width": 0.25}
    small["base"]["train"] = {**shipped["base"]["train"], "epochs": 2}
    small["methods"] = [{**m, "rounds": 2, "fractions": [0.2, 0.02], "rewind_epoch": 0}
                        for m in shipped["methods"] if m.get("label") == "log"]  # fmt: skip
    path = tmp_path / "study.toml"
    path.write_text(tomli_w.dumps(small))
    rows = run_study(load_study(path), tmp_path / "out", quiet=True)
    assert [(r["label"], r["round"], r["variant"]) for r in rows] == [("log", 2, "random"), ("log", 2, "ticket")]
    assert all(r["kept_fraction"] == pytest.approx(0.02, abs=1e-3) for r in rows)


def test_a_ticket_whose_every_layer_is_sparse_exports_and_times(tmp_path):
    """Every Linear layer of a 2% ticket turns CSR, leaving the model no parameter: timing reads
    its dtype and device from a buffer instead."""
    from equiprune.experiments.sparse_export import sparse_report

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.1)
    report = sparse_report(model, (6,), tmp_path / "sparse.pt", batch_sizes=[1], repeats=1, rounds=1)
    assert report["layers"] == ["1", "3"] and report["latency"][0]["batch_size"] == 1


def test_masks_saturated_alike_rank_by_the_weights_they_gate_not_by_position():
    method = build_method("concave-mask", settings={"budget": 0.5, "rounds": 1, "mask_init": 1.0})
    model = method.prepare(_mlp())
    method.before_run(model, steps_per_epoch=1, epochs=1)
    weights = {
        n: model.get_submodule(n).parametrizations.weight.original.detach().abs().clone() for n in method.reparams
    }
    method.finish(model)  # every mask still at 1: the largest |θ| stay
    assert sum(int(method.alive[n].sum()) for n in weights) == 31
    for name, w in weights.items():  # in every layer the kept weights are its largest
        kept = method.alive[name]
        assert not bool((~kept).any()) or float(w[kept].min()) >= float(w[~kept].max())

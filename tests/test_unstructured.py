"""Unstructured baselines (single weights as players) against independent references."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.config import parse_config
from equiprune.core.weight_players import WeightMasks, compact_unstructured
from equiprune.errors import ConfigError
from equiprune.experiments import loop as train
from equiprune.methods import build_method
from equiprune.methods.base import Calibration


class _Data:
    def __init__(self, n=48, shape=(1, 2, 2), classes=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.y)


def _tiny(act=nn.ReLU):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), act(), nn.Linear(3, 2))


def _prepared(name, budget, model=None, **settings):
    method = build_method(name, settings={"budget": budget, **settings})
    model = method.prepare(model if model is not None else _tiny())
    return method, model


def test_global_magnitude_keeps_exactly_the_largest_weights_of_all_layers():
    method, model = _prepared("weight-magnitude", 0.5)
    method.before_run(model, 1, 1)
    everything = torch.cat([model[1].weight.flatten(), model[3].weight.flatten()]).abs()
    threshold = everything.sort(descending=True).values[8]  # 18 weights, keep 9
    method.prune_to(model, 0.5)
    kept = torch.cat([m.flatten() for m in method.masks.masks.values()])
    assert int(kept.sum()) == 9
    assert bool((everything[kept] >= threshold).all()) and bool((everything[~kept] < threshold).all())


def test_layerwise_magnitude_keeps_the_same_fraction_in_each_layer():
    method, model = _prepared("weight-magnitude", 0.5, allocation="layerwise")
    method.before_run(model, 1, 1)
    method.prune_to(model, 0.5)
    assert method.masks.kept() == {"1": 6, "3": 3}
    w = model[1].weight.detach().abs().flatten()
    assert set(w.topk(6).indices.tolist()) == set(method.masks.masks["1"].flatten().nonzero().flatten().tolist())


def test_snip_scores_are_gradient_times_weight_averaged_over_batches():
    method, model = _prepared("snip", 0.5, calibration_batches=2)
    calibration = Calibration(_Data(), batch_size=8, seed=0)
    scores = method.scores(model, calibration)
    expected = [torch.zeros(3, 4), torch.zeros(2, 3)]
    for x, y in calibration.batches(2):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected[0] += (model[1].weight.grad * model[1].weight).abs().detach() / 2
        expected[1] += (model[3].weight.grad * model[3].weight).abs().detach() / 2
    torch.testing.assert_close(scores["1"], expected[0])
    torch.testing.assert_close(scores["3"], expected[1])


def test_grasp_hessian_gradient_product_matches_a_dense_hessian():
    method, model = _prepared("grasp", 0.5, calibration_batches=1, temperature=2.0)
    model = model.double()
    method.masks = WeightMasks(model)
    data = _Data()
    data.x = data.x.double()
    calibration = Calibration(data, batch_size=16, seed=0)
    scores = method.scores(model, calibration)
    (x, y), = list(calibration.batches(1))  # fmt: skip
    w1, w2 = model[1].weight.detach().clone(), model[3].weight.detach().clone()
    b1, b2 = model[1].bias.detach(), model[3].bias.detach()

    def loss(flat):
        a, b = flat[:12].view(3, 4), flat[12:].view(2, 3)
        h = F.relu(x.flatten(1) @ a.T + b1)
        return F.cross_entropy((h @ b.T + b2) / 2.0, y)

    flat = torch.cat([w1.flatten(), w2.flatten()])
    hessian = torch.autograd.functional.hessian(loss, flat)
    grad = torch.autograd.functional.jacobian(loss, flat)
    hg = hessian @ grad
    torch.testing.assert_close(scores["1"].flatten(), (flat * hg)[:12])
    torch.testing.assert_close(scores["3"].flatten(), (flat * hg)[12:])


def test_synflow_first_round_scores_follow_the_closed_form():
    # For Flatten→Linear→ReLU→Linear with |θ| and an all-ones input, R = 1ᵀ|W2|(|W1|1 + |b1|) + ..., so
    # ∂R/∂W1_ij = colsum(|W2|)_i and ∂R/∂W2_ki = (|W1|1 + |b1|)_i: scores |W1_ij|·colsum(|W2|)_i, |W2_ki|·h_i.
    method, model = _prepared("synflow", 0.5, iterations=1)
    calibration = Calibration(_Data(), batch_size=8, seed=0)
    method.before_run(model, 1, 1, calibration)
    a1, a2, c1 = model[1].weight.detach().abs(), model[3].weight.detach().abs(), model[1].bias.detach().abs()
    s1 = a1 * a2.sum(0).unsqueeze(1)
    s2 = a2 * (a1.sum(1) + c1).unsqueeze(0)
    everything = torch.cat([s1.flatten(), s2.flatten()])
    top = set(everything.topk(9).indices.tolist())
    kept = torch.cat([method.masks.masks["1"].flatten(), method.masks.masks["3"].flatten()])
    assert set(kept.nonzero().flatten().tolist()) == top
    assert float(model[1].weight.detach()[~method.masks.masks["1"]].abs().sum()) == 0.0  # pruned at init


def test_gmp_follows_the_cubic_schedule_and_lands_on_the_budget():
    method, model = _prepared("gmp", 0.2, start=0.0, end=1.0, every=1)
    method.before_run(model, steps_per_epoch=10, epochs=1)
    assert method.keep_fraction(0) == 1.0 and method.keep_fraction(10) == pytest.approx(0.2)
    assert method.keep_fraction(5) == pytest.approx(1 - 0.8 * (1 - 0.5**3))
    kept = []
    for _ in range(10):
        method.after_step(model)
        kept.append(sum(method.masks.kept().values()))
    assert kept == sorted(kept, reverse=True) and kept[-1] == round(0.2 * 18)
    assert sum(method.finish(model).kept.values()) == round(0.2 * 18)


def test_imp_rewinds_survivors_to_initialisation_and_restarts_the_optimizer():
    method, model = _prepared("imp", 0.25, rounds=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    method.before_run(model, steps_per_epoch=4, epochs=2)  # rounds of 4 steps
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = _Data()
    restarts = []
    for _ in range(8):  # the training loop's order
        method.before_step(model)
        restarts.append(method.optimizer_restart())
        opt.zero_grad()
        F.cross_entropy(model(data.x), data.y).backward()
        opt.step()
        method.after_step(model)
    # round 1 ends with step 4; it is pruned and rewound as step 5 starts, which restarts the optimizer
    assert restarts == [None, None, None, None, 4, None, None, None]
    assert sum(method.masks.kept().values()) == round(0.5 * 18)  # 0.25^(1/2) after round 1
    result = method.finish(model)
    assert sum(result.kept.values()) == round(0.25 * 18)
    for name in ("1", "3"):
        mask = method.masks.masks[name]
        w = model.get_submodule(name).weight.detach()
        torch.testing.assert_close(w[mask], init[f"{name}.weight"][mask])  # rewound to initialisation
        assert float(w[~mask].abs().sum()) == 0.0


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid])
def test_unstructured_compaction_removes_cut_off_neurons_and_keeps_the_outputs(act):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), act(), nn.Linear(5, 3), act(), nn.Linear(3, 2))
    masks = WeightMasks(model)
    m1 = torch.ones(5, 4, dtype=torch.bool)
    m1[1] = False  # neuron 1 of layer 1 has no input left: it outputs act(b_1), folded into layer 3's bias
    m3 = torch.ones(3, 5, dtype=torch.bool)
    m3[:, 2] = False  # neuron 2 of layer 1 has no output left
    m3[0, 0] = False  # an ordinary sparse weight
    masks.set({"1": m1, "3": m3, "5": torch.ones(2, 3, dtype=torch.bool)})
    x = torch.randn(7, 1, 2, 2)
    expected = model(x)
    result = compact_unstructured(model, masks)
    assert result.model[1].out_features == 3 and result.model[3].in_features == 3
    torch.testing.assert_close(result.model(x), expected)
    assert result.kept == {"1": 16, "3": 11, "5": 6}  # 20 − 4; 15 − 3 − 1; 6


def test_unknown_and_unsupported_player_kinds_are_refused():
    with pytest.raises(ConfigError, match="method 'snip' cannot prune 'neuron' players; it supports \\['weight'\\]"):
        parse_config('[method]\nname = "snip"\nplayers = "neuron"')
    with pytest.raises(ConfigError, match="method 'taylor' cannot prune 'weight' players"):
        parse_config('[method]\nname = "taylor"\nplayers = "weight"')


@pytest.mark.parametrize("name, extra", [("imp", "rounds = 2"), ("snip", ""), ("gmp", "every = 10")])
def test_unstructured_methods_run_end_to_end(tmp_path, data_root, name, extra):
    cfg = parse_config(f"""
seed = 0
device = "cpu"
[data]
root = "{data_root}"
train_subset = 1500
test_subset = 500
[model]
hidden = [32, 16]
[train]
epochs = 3
finetune_epochs = 1
lr = 0.003
[method]
name = "{name}"
budget = 0.1
{extra}
""")
    results = train.run(cfg, tmp_path / name, quiet=True)
    weights = 784 * 32 + 32 * 16 + 16 * 10
    assert results["players"] == "weight"
    assert sum(results["kept"].values()) == round(0.1 * weights)
    assert results["nonzero_params_after"] <= round(0.1 * weights) + 32 + 16 + 10
    assert results["test_accuracy"] > 0.3  # learned something (chance: 0.1) in 12 fine-tuning steps


def test_an_interrupted_lottery_ticket_run_resumes_to_the_same_result(tmp_path, data_root, monkeypatch):
    """Masks, the rewind snapshot, a restarted optimizer and the masked fine-tuning all survive a
    crash: interrupted during the pruning phase and again during fine-tuning, the run ends as an
    uninterrupted one does."""
    cfg = parse_config(f"""
seed = 0
device = "cpu"
[data]
root = "{data_root}"
train_subset = 1000
test_subset = 300
[model]
hidden = [16, 8]
[train]
epochs = 4
finetune_epochs = 2
[method]
name = "imp"
budget = 0.2
rounds = 2
rewind_step = 3
""")
    whole = train.run(cfg, tmp_path / "whole", quiet=True)
    real, calls = train.Trainer._train_epoch, []

    def crash_on(*which):
        def epoch(self, *args, **kw):
            calls.append(1)
            if len(calls) in which:
                raise KeyboardInterrupt
            return real(self, *args, **kw)

        return epoch

    monkeypatch.setattr(train.Trainer, "_train_epoch", crash_on(2, 5))  # epoch 2; then epoch 4 of the resumed run
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "cut", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "cut", resume=True, quiet=True)
    monkeypatch.setattr(train.Trainer, "_train_epoch", real)
    resumed = train.run(cfg, tmp_path / "cut", resume=True, quiet=True)
    for r in (whole, resumed):
        r.pop("seconds")
    assert resumed == whole


def test_the_epoch_that_ends_a_lottery_round_reports_the_network_the_round_trained(tmp_path, data_root):
    """A round's prune and rewind wait for the next step: the epoch's evaluation between them sees
    what the round trained (its accuracy, all its players), not the rewound network at chance."""
    cfg = parse_config(f"""
seed = 0
device = "cpu"
[data]
root = "{data_root}"
train_subset = 3000
test_subset = 500
[model]
hidden = [32, 16]
[train]
epochs = 2
finetune_epochs = 0
lr = 0.003
[method]
name = "imp"
budget = 0.25
rounds = 2
""")
    run_dir = tmp_path / "imp"
    train.run(cfg, run_dir, quiet=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = 784 * 32 + 32 * 16 + 16 * 10
    assert rows[0]["players_alive"] == weights  # round 1 ended here, not yet pruned
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["test_accuracy"] > 0.6  # trained; rewound to the initialisation it scores about 0.1
    assert rows[1]["players_alive"] == round(0.5 * weights)  # round 2 trained the survivors of round 1

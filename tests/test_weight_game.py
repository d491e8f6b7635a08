"""Single weights as players of the game: one participation per weight, updated element-wise."""

import torch
import torch.nn.functional as F

from equiprune.config import parse_config
from equiprune.core.weight_players import WeightGatedModel
from equiprune.experiments.loop import run
from equiprune.methods import build_method
from equiprune.methods.game_settings import GameSettings
from equiprune.models import create_model, mlp

from .helpers import small_config


def test_a_step_moves_every_weights_participation_by_its_own_utility_gradient():
    torch.manual_seed(0)
    model = mlp(input_shape=(6,), hidden=(5,), num_classes=3).double()
    settings = {"beta": 0.2, "gamma": 0.03, "eta": 0.01, "lr_s": 0.5}
    method = build_method("game", settings=settings, players="weight")
    gated = method.prepare(model)
    assert isinstance(gated, WeightGatedModel) and [g.shape for g in gated.gates] == [(5, 6), (3, 5)]
    with torch.no_grad():
        for s in gated.gates:
            s.uniform_(0.2, 0.9)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    F.cross_entropy(gated(x), y).backward()
    before = [s.detach().clone() for s in gated.gates]
    weights = [w.detach().clone() for w in gated.weights()]
    # independently: the loss as a function of the effective weights W ⊙ S, by autograd
    eff = [(w * s).requires_grad_() for w, s in zip(weights, before)]
    (w1, w2), (b1, b2) = eff, (model[1].bias.detach(), model[3].bias.detach())
    loss = F.cross_entropy(F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2), y)
    grads = torch.autograd.grad(loss, eff)
    method.after_step(gated)
    cfg = GameSettings(**settings)
    for s0, w, g_eff, s1 in zip(before, weights, grads, gated.gates):
        g = w * g_eff  # ∂L/∂s_i
        flat_w, flat_s = w.flatten(), s0.flatten()
        comp = torch.stack([sum(flat_s[j] * flat_w[i] * flat_w[j] for j in range(len(flat_w)) if j != i)
                            for i in range(len(flat_w))]).view_as(w)  # fmt: skip
        expected = (s0 + cfg.lr_s * (-g - 2 * cfg.beta * w**2 * s0 - cfg.gamma - cfg.eta * comp)).clamp(0, 1)
        torch.testing.assert_close(s1.detach(), expected)


def test_compaction_folds_participations_and_drops_weights_below_epsilon():
    torch.manual_seed(0)
    model = create_model("lenet5").double()
    gated = WeightGatedModel(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in gated.gates:
            s.copy_(torch.rand(s.shape, generator=g, dtype=torch.float64))
            s[s < 0.3] = 0.0
    ids, before = [id(w) for w in gated.weights()], [w.detach().clone() for w in gated.weights()]
    result = gated.compact(epsilon=0.01)
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), gated(x), rtol=1e-9, atol=1e-12)
    assert result.kept == {n: int((s >= 0.01).sum()) for n, s in zip(gated.names, gated.gates)}
    # the gated model is left as it was: the same Parameter objects (an optimizer holds them), unchanged
    assert [id(w) for w in gated.weights()] == ids
    assert all(torch.equal(a, b) for a, b in zip(before, gated.weights()))
    assert set(result.weight_masks) == {f"{n}.weight" for n, m in result.model.named_modules() if hasattr(m, "weight")
                                        and m.weight is not None and m.weight.dim() > 1}  # fmt: skip


def test_weight_game_runs_end_to_end(tmp_path, data_root):
    text = small_config(data_root, epochs=2, finetune=1, train_subset=2000, hidden="32, 16", gamma=0.0002, lr_s=500.0)
    cfg = parse_config(text.replace('name = "game"', 'name = "game"\nplayers = "weight"'))
    results = run(cfg, tmp_path / "run", quiet=True)
    assert results["players"] == "weight" and 0 < results["kept_fraction"] < 1
    assert results["nonzero_params_after"] < results["params_before"]


def test_mac_weighted_costs_are_for_structured_players_and_average_to_one():
    import pytest

    from equiprune.core.measure import macs_per_player
    from equiprune.core.players import attach
    from equiprune.data import Split
    from equiprune.errors import ConfigError
    from equiprune.methods.base import Calibration

    calibration = Calibration(Split(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), 4, 0)
    method = build_method("game", settings={"cost_weighting": "macs"})
    gated = method.prepare(create_model("lenet5"))
    method.before_run(gated, steps_per_epoch=2, epochs=1, calibration=calibration)
    sizes = [g.size for g in gated.groups]
    weights = method._gamma_weights
    assert sum(w * n for w, n in zip(weights, sizes)) / sum(sizes) == pytest.approx(1.0)
    macs = macs_per_player(attach(create_model("lenet5")), (1, 28, 28))
    assert weights[0] / weights[2] == pytest.approx(macs[0] / macs[2])  # a conv1 filter vs an FC neuron
    weight_players = build_method("game", settings={"cost_weighting": "macs"}, players="weight")
    with pytest.raises(ConfigError, match="structured players"):
        weight_players.before_run(weight_players.prepare(mlp()), 1, 1, calibration)

"""Players are found, gated and removed correctly; compaction keeps the gated model's outputs."""

import pytest
import torch
import torch.nn as nn

from equiprune.core.compact import compact, keep_masks
from equiprune.core.players import attach, find_players
from equiprune.errors import PruningError
from equiprune.methods import build_method
from equiprune.methods import game_math as game
from equiprune.methods.game_settings import GameSettings
from equiprune.models import lenet5, mlp


def _random_participations(gated, zero_fraction=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in gated.gates:
            s.copy_(torch.rand(s.shape, generator=g))
            s[torch.rand(s.shape, generator=g) < zero_fraction] = 0.0
            s[0] = 0.9  # never empty a layer here


def test_mlp_players_are_the_hidden_neurons():
    model = mlp(hidden=(32, 16))
    groups = find_players(model)
    assert [(g.name, g.size, g.consumer_name) for g in groups] == [("1", 32, "3"), ("3", 16, "5")]
    assert [type(m) for m in groups[0].between] == [nn.ReLU]


def test_gate_multiplies_each_neurons_output():
    model = mlp(input_shape=(6,), hidden=(5,), num_classes=3)
    gated = attach(model)
    x = torch.randn(4, 6)
    with torch.no_grad():
        gated.gates[0].copy_(torch.tensor([1.0, 0.0, 0.5, 0.25, 1.0]))
    lin1, lin2 = model[1], model[3]
    # F.linear, not lin2(...): calling the module would apply its gate hook a second time.
    hidden = torch.relu(torch.nn.functional.linear(x, lin1.weight, lin1.bias))
    expected = torch.nn.functional.linear(hidden * gated.gates[0], lin2.weight, lin2.bias)
    torch.testing.assert_close(gated(x), expected)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
def test_compacted_model_equals_gated_model_with_dropped_players_zeroed(activation):
    model = mlp(input_shape=(1, 8, 8), hidden=(40, 24, 12), activation=activation).double()
    gated = attach(model)
    _random_participations(gated)
    with torch.no_grad():
        gated.gates[1][3] = 0.004  # below epsilon: removed, its small contribution dropped too
    result = compact(gated, keep_masks(gated, 0.01))
    with torch.no_grad():
        for s in gated.gates:
            s[s < 0.01] = 0.0
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(result.model(x), gated(x), rtol=1e-10, atol=1e-12)
    assert result.kept == {g.name: int((s >= 0.01).sum()) for g, s in zip(gated.groups, gated.gates)}
    widths = [m.out_features for m in result.model if isinstance(m, nn.Linear)]
    assert widths == [result.kept["1"], result.kept["3"], result.kept["5"], 10]
    assert not any(m._forward_pre_hooks for m in result.model.modules()), "compacted model must be plain"


def test_compaction_leaves_the_gated_model_working():
    gated = attach(mlp(hidden=(8, 4)))
    _random_participations(gated)
    x = torch.randn(3, 1, 28, 28)
    before = gated(x)
    compact(gated, keep_masks(gated, 0.01))
    torch.testing.assert_close(gated(x), before)


def test_a_layer_losing_every_player_keeps_its_best_one_and_says_so(caplog):
    gated = attach(mlp(hidden=(8, 4)))
    with torch.no_grad():
        gated.gates[1].copy_(torch.tensor([0.001, 0.004, 0.002, 0.003]))
    notes = []
    with caplog.at_level("WARNING", logger="equiprune"):
        masks = keep_masks(gated, 0.01, notes=notes)
    assert masks["3"].tolist() == [False, True, False, False]
    assert len(notes) == 1 and "every player would leave layer '3'" in notes[0] and "0.004 < epsilon=0.01" in notes[0]
    assert notes[0] in caplog.text
    result = compact(gated, masks)
    assert result.kept["3"] == 1 and result.kept["1"] == 8
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        gated.gates[1].mul_(masks["3"])  # what the kept player computes: the gated model, the others at 0
    torch.testing.assert_close(result.model(x), gated(x))


def test_excluded_layers_keep_all_their_neurons():
    model = mlp(hidden=(8, 4))
    gated = attach(model, exclude=["3"])
    assert [g.name for g in gated.groups] == ["1"]
    with pytest.raises(PruningError, match="exclude names no layer"):
        attach(model, exclude=["nope"])


def test_unsupported_model_layout_names_the_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Softmax(-1), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(PruningError, match=r"'1': layer '2' \(Softmax\).*[Ee]xclude"):
        find_players(model)
    assert [g.name for g in find_players(model, exclude=["1"])] == ["3"]
    # normalising across the channels fixes them: no error, the layer is simply not prunable
    normed = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert [g.name for g in find_players(normed)] == ["3"]
    with pytest.raises(PruningError, match="no hidden layer"):
        find_players(nn.Linear(3, 3))


def _one_step(benefit_grad):
    torch.manual_seed(0)
    model = mlp(input_shape=(10,), hidden=(7, 5), num_classes=3).double()
    method = build_method("game", settings={"beta": 0.1, "gamma": 0.02, "eta": 0.05, "lr_s": 0.1,
                                            "benefit_grad": benefit_grad})  # fmt: skip
    gated = method.prepare(model)
    _random_participations(gated, zero_fraction=0.0)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    x, y = torch.randn(9, 10, dtype=torch.float64), torch.randint(0, 3, (9,))
    torch.nn.functional.cross_entropy(gated(x), y).backward()
    before = [s.detach().clone() for s in gated.gates]
    grads_s = [s.grad.clone() for s in gated.gates]
    method.after_step(gated)
    return gated, before, grads_s


@pytest.mark.parametrize("benefit_grad", ["gated", "theta"])
def test_after_step_is_one_projected_ascent_step(benefit_grad):
    gated, before, grads_s = _one_step(benefit_grad)
    cfg = GameSettings(beta=0.1, gamma=0.02, eta=0.05, lr_s=0.1, benefit_grad=benefit_grad)
    for group, s0, gs, s1 in zip(gated.groups, before, grads_s, gated.gates):
        w, b = group.producer.weight.detach(), group.producer.bias.detach()
        theta = torch.cat([w, b[:, None]], 1)
        if benefit_grad == "gated":
            g = gs
        else:  # ⟨∇_θ L, θ⟩ computed independently from the parameter gradients
            g = (group.producer.weight.grad * w).sum(1) + group.producer.bias.grad * b
        sq = (theta**2).sum(1)
        comp = torch.stack([sum(s0[j] * theta[i] @ theta[j] for j in range(len(s0)) if j != i)
                            for i in range(len(s0))])  # fmt: skip
        expected = (s0 + cfg.lr_s * (-g - 2 * cfg.beta * sq * s0 - cfg.gamma - cfg.eta * comp)).clamp(0, 1)
        torch.testing.assert_close(s1.detach(), expected)


@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
def test_the_game_reads_the_parameters_as_they_are_after_module_to_replaces_them(arch):
    """The pruner looks a model's gates and rows up once; ``Module.to`` then swaps every
    parameter's data. The next step must use the new weights, not a view of the old storage
    (LeNet's filters are read through views, the MLP's rows are its parameters)."""
    torch.manual_seed(0)
    model = mlp(input_shape=(1, 28, 28), hidden=(7, 5)) if arch == "mlp" else lenet5(hidden=(12, 8))
    method = build_method("game", settings={"beta": 0.1, "gamma": 0.02, "lr_s": 0.1})
    gated = method.prepare(model)
    method.before_run(gated, steps_per_epoch=1, epochs=2)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    torch.nn.functional.cross_entropy(gated(x), y).backward()
    method.after_step(gated)  # the first step: the look-ups are made here
    gated.double()
    with torch.no_grad():
        for p in gated.model.parameters():
            p.mul_(1.5)  # stale copies of the old data would now differ from the parameters
    gated.zero_grad()
    torch.nn.functional.cross_entropy(gated(x.double()), y).backward()
    s0, grads = [s.detach().clone() for s in gated.gates], [s.grad.clone() for s in gated.gates]
    method.after_step(gated)
    sqs = game.squared_norms_of_rows([group.rows() for group in gated.groups])
    for s1, s, g, sq in zip(gated.gates, s0, grads, sqs):
        assert s1.dtype == torch.float64
        torch.testing.assert_close(s1.detach(), (s + 0.1 * (-g - 2 * 0.1 * sq * s - 0.02)).clamp(0, 1))


def test_theta_reading_is_participation_times_gated_reading_for_relu():
    """⟨∇_θ L, θ⟩ = s·∂L/∂s for a ReLU neuron (positive homogeneity): the two readings differ by s."""
    gated, before, grads_s = _one_step("gated")
    for group, s0, gs in zip(gated.groups, before, grads_s):
        theta_inner = game.inner_with_grad(group.blocks(), group.grad_blocks())
        torch.testing.assert_close(theta_inner, s0 * gs)


@pytest.mark.parametrize("activation, balanced", [("relu", True), ("tanh", False)])
def test_balanced_folding_keeps_the_function_and_equalises_norms_where_exact(activation, balanced):
    model = mlp(input_shape=(1, 8, 8), hidden=(40, 24), activation=activation).double()
    gated = attach(model)
    _random_participations(gated)
    with torch.no_grad():
        model[1].weight.mul_(30.0)  # the lopsidedness the game produces: big rows, small participations
    plain = compact(gated, keep_masks(gated, 0.01))
    balanced_result = compact(gated, keep_masks(gated, 0.01), balance=True)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(balanced_result.model(x), plain.model(x), rtol=1e-9, atol=1e-12)
    m = balanced_result.model
    rows = (m[1].weight.square().sum(1) + m[1].bias.square()).sqrt()
    cols = m[3].weight.square().sum(0).sqrt()
    if balanced:
        torch.testing.assert_close(rows, cols, rtol=1e-5, atol=0)
        rows2 = (m[3].weight.square().sum(1) + m[3].bias.square()).sqrt()
        torch.testing.assert_close(rows2, m[5].weight.square().sum(0).sqrt(), rtol=1e-5, atol=0)
    else:  # tanh is not positively homogeneous: nothing may move across it
        torch.testing.assert_close(m[1].weight, plain.model[1].weight)


def _per_example_gate_grads_then_batch_backward(method, gated, n=9):
    """∂ℓ_n/∂s for each of ``n`` random examples of the 10-input, 3-class MLP, one backward each (the
    recording hooks run, their result is cleared after); then the batch's backward, which leaves
    the gate gradients and the per-example record that ``after_step`` reads."""
    x, y = torch.randn(n, 10, dtype=torch.float64), torch.randint(0, 3, (n,))
    per_example = []
    for i in range(n):
        gated.zero_grad()
        torch.nn.functional.cross_entropy(gated(x[i : i + 1]), y[i : i + 1]).backward()
        per_example.append([s.grad.clone() for s in gated.gates])
    method._recorder.clear()
    gated.zero_grad()
    torch.nn.functional.cross_entropy(gated(x), y).backward()
    return per_example


def test_newton_after_step_divides_the_utility_gradient_by_fisher_plus_l2_curvature():
    """One step of ``update = 'newton'`` against a reference built from one backward per example."""
    torch.manual_seed(0)
    model = mlp(input_shape=(10,), hidden=(7, 5), num_classes=3).double()
    settings = {"beta": 0.1, "gamma": 0.02, "eta": 0.05, "lr_s": 0.1, "update": "newton"}
    method = build_method("game", settings=settings)
    gated = method.prepare(model)
    _random_participations(gated, zero_fraction=0.0)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    per_example = _per_example_gate_grads_then_batch_backward(method, gated)
    before = [s.detach().clone() for s in gated.gates]
    method.after_step(gated)
    cfg = GameSettings(**settings)
    for i, (group, s0, s1) in enumerate(zip(gated.groups, before, gated.gates)):
        grads = torch.stack([p[i] for p in per_example])
        g, fisher = grads.mean(0), (grads**2).mean(0)
        theta = torch.cat([group.producer.weight.detach(), group.producer.bias.detach()[:, None]], 1)
        sq = (theta**2).sum(1)
        comp = torch.stack([sum(s0[j] * theta[k] @ theta[j] for j in range(len(s0)) if j != k)
                            for k in range(len(s0))])  # fmt: skip
        slope = -g - 2 * cfg.beta * sq * s0 - cfg.gamma - cfg.eta * comp
        expected = (s0 + cfg.lr_s * slope / (fisher + 2 * cfg.beta * sq)).clamp(0, 1)
        torch.testing.assert_close(s1.detach(), expected)
        assert not torch.allclose(expected, (s0 + cfg.lr_s * slope).clamp(0, 1))  # not the plain ascent step


def test_an_anchored_step_plays_the_profile_and_moves_the_participations_on_its_second_order_model():
    """``anchored``: the network runs with every alive player fully in and the rest out; g and F are
    measured there (one backward per example here), the participations take the Newton step of the
    loss's second-order model about that profile, and the gates then hold the next step's profile."""
    torch.manual_seed(0)
    model = mlp(input_shape=(10,), hidden=(7, 5), num_classes=3).double()
    settings = {"beta": 0.1, "gamma": 0.05, "lr_s": 0.5, "update": "newton", "anchored": True, "epsilon": 0.05}
    method = build_method("game", settings=settings)
    gated = method.prepare(model)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    strategies = [torch.tensor([0.9, 0.0, 0.3, 0.02, 1.0, 0.06, 0.5], dtype=torch.float64),
                  torch.tensor([0.04, 0.7, 0.0, 1.0, 0.2], dtype=torch.float64)]  # fmt: skip
    with torch.no_grad():
        for s, gate, value in zip(method._strategies, gated.gates, strategies):
            s.copy_(value)
            gate.copy_(value >= 0.05)  # the profile the network plays
    per_example = _per_example_gate_grads_then_batch_backward(method, gated)
    method.after_step(gated)
    cfg = GameSettings(**settings)
    for i, (group, s0) in enumerate(zip(gated.groups, strategies)):
        grads = torch.stack([p[i] for p in per_example])
        g, fisher = grads.mean(0), (grads**2).mean(0)
        theta = torch.cat([group.producer.weight.detach(), group.producer.bias.detach()[:, None]], 1)
        sq = (theta**2).sum(1)
        played = (s0 >= 0.05).double()
        slope = -g - fisher * (s0 - played) - 2 * cfg.beta * sq * s0 - cfg.gamma
        expected = (s0 + cfg.lr_s * slope / (fisher + 2 * cfg.beta * sq)).clamp(0, 1)
        torch.testing.assert_close(method._strategies[i], expected)
        torch.testing.assert_close(gated.gates[i].detach(), (expected >= 0.05).double())
    metrics = method.epoch_metrics(gated)  # the strategies, not the 0/1 profile, are what is reported
    assert metrics["players_alive"] == int(sum((s >= 0.05).sum() for s in method._strategies))
    assert metrics["undecided_fraction"] > 0

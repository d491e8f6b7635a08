"""The game's mathematics against independent references: autograd, naive loops, grid search."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equiprune.errors import ConfigError
from equiprune.methods import game_math as game
from equiprune.methods.game_settings import PRESETS, GameSettings


@pytest.fixture(params=["per-tensor", "foreach"])
def kernels(request, monkeypatch):
    """Run a test with both ways of updating many groups: one op per tensor (CPU's) and torch's
    multi-tensor foreach ops (an accelerator's), forced on CPU here."""
    if request.param == "foreach":
        monkeypatch.setattr(game, "fused_kernels", lambda tensors: True)
    return request.param


def _players(n=6, dims=(5, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(n, d, generator=g, dtype=torch.float64) for d in dims]
    s = torch.rand(n, generator=g, dtype=torch.float64)
    grad = torch.randn(n, generator=g, dtype=torch.float64)
    return blocks, s, grad


def test_competition_matches_naive_double_loop():
    blocks, s, _ = _players(n=7, dims=(4, 3, 1))
    theta = torch.cat(blocks, dim=1)
    naive = torch.zeros(7, dtype=torch.float64)
    for i in range(7):
        for j in range(7):
            if j != i:
                naive[i] += s[j] * torch.dot(theta[i], theta[j])
    sq = game.squared_norms(blocks)
    torch.testing.assert_close(game.competition(blocks, s, sq), naive)
    torch.testing.assert_close(sq, (theta * theta).sum(1))


@pytest.mark.parametrize("sign", ["loss_reduction", "as_written"])
@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_utility_grad_matches_autograd(sign, eta):
    blocks, s, g = _players()
    cfg = GameSettings(alpha=0.7, beta=0.2, gamma=0.05, eta=eta, benefit_sign=sign)
    sq = game.squared_norms(blocks)
    comp = game.competition(blocks, s, sq)  # the others' play, held fixed for player i
    s_var = s.clone().requires_grad_(True)
    u = game.utility(s_var, g, sq, comp, cfg, cost_scale=0.8)
    # Each U_i depends on its own s_i only (others fixed): the gradient of the sum is ∂U_i/∂s_i.
    (auto,) = torch.autograd.grad(u.sum(), s_var)
    torch.testing.assert_close(game.utility_grad(s, g, sq, comp, cfg, cost_scale=0.8), auto)


def test_utility_grad_matches_autograd_through_a_real_loss():
    """g_i = ∂L/∂s_i from a network, then the full U gradient against autograd of U."""
    torch.manual_seed(1)
    w1, w2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64)
    s = torch.rand(4, dtype=torch.float64, requires_grad=True)
    loss = ((torch.relu(x @ w1.T) * s) @ w2.T).pow(2).mean()
    (g,) = torch.autograd.grad(loss, s)
    cfg = GameSettings(beta=0.1, gamma=0.01, eta=0.05)
    sq = game.squared_norms([w1])
    comp = game.competition([w1], s.detach(), sq)
    s2 = s.detach().clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(game.utility(s2, g, sq, comp, cfg).sum(), s2)
    torch.testing.assert_close(game.utility_grad(s.detach(), g, sq, comp, cfg), auto)


@settings(max_examples=60, deadline=None)
@given(
    g=st.floats(-3, 3),
    sq=st.floats(0, 4),
    comp=st.floats(-2, 2),
    beta=st.floats(0, 1),
    gamma=st.floats(0, 1),
    eta=st.floats(0, 1),
)
def test_best_response_maximises_utility_on_a_grid(g, sq, comp, beta, gamma, eta):
    cfg = GameSettings(beta=beta, gamma=gamma, eta=eta)
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    best = game.best_response(t(g), t(sq), t(comp), cfg)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    u_grid = game.utility(grid, t(g), t(sq), t(comp), cfg)
    u_best = game.utility(best, t(g), t(sq), t(comp), cfg)
    assert 0.0 <= float(best) <= 1.0
    assert float(u_best) >= float(u_grid.max()) - 1e-9


def test_best_response_is_a_fixed_point_of_projected_ascent():
    blocks, s, g = _players(n=20)
    cfg = GameSettings(beta=0.3, gamma=0.1)
    sq = game.squared_norms(blocks)
    br = game.best_response(g, sq, 0.0, cfg)
    step = game.project(br + 0.01 * game.utility_grad(br, g, sq, 0.0, cfg))
    torch.testing.assert_close(step, br)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30))
def test_projection_stays_in_unit_interval_and_is_idempotent(values):
    s = game.project(torch.tensor(values, dtype=torch.float64))
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    torch.testing.assert_close(game.project(s), s)
    inside = [(v, float(p)) for v, p in zip(values, s) if 0 <= v <= 1]
    assert all(v == p for v, p in inside)


def test_presets_are_the_papers_table2():
    assert PRESETS["l1-l2-combined"]["beta"] == 0.05 and PRESETS["l1-l2-combined"]["gamma"] == 0.05
    assert PRESETS["extreme-beta"]["beta"] == 0.5 and PRESETS["extreme-beta"]["gamma"] == 0.0
    assert all(p["alpha"] == 1.0 and p["lr_s"] == 0.001 and p["eta"] == 0.0 for p in PRESETS.values())


@pytest.mark.parametrize(
    "field,value,needle",
    [("beta", -0.1, "method.beta"), ("epsilon", 1.5, "method.epsilon"), ("lr_s", 0.0, "method.lr_s"),
     ("gamma", float("nan"), "method.gamma"), ("benefit_sign", "up", "method.benefit_sign"),
     ("cost_ramp", 2.0, "method.cost_ramp")],
)  # fmt: skip
def test_bad_settings_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        dataclasses.replace(GameSettings(), **{field: value})


@pytest.mark.parametrize(
    "costs",
    [
        dict(beta=0.3, gamma=0.1),
        dict(beta=0.0, gamma=0.2),
        dict(beta=0.05, gamma=0.0, eta=0.02),
        dict(gamma=0.0, beta=0.0),
    ],
)
def test_fused_ascent_step_equals_projected_utility_gradient_step(costs, kernels):
    """The training loop's multi-group step, on either path (``kernels``), against the plain
    per-group formula."""
    cfg = GameSettings(lr_s=0.7, **costs)  # a large step, so that projection clips some players
    groups = [_players(n=n, dims=dims, seed=n) for n, dims in ((9, (5, 1)), (4, (3,)))]
    gates = [s.clone() for _, s, _ in groups]
    sqs = [game.squared_norms(b) for b, _, _ in groups]
    comps = [game.competition(b, s, sq) for (b, s, _), sq in zip(groups, sqs)]
    expected = [
        game.project(s + cfg.lr_s * game.utility_grad(s, g, sq, comp, cfg, cost_scale=0.6))
        for (_, s, g), sq, comp in zip(groups, sqs, comps)
    ]
    game.ascent_step_(gates, [g for _, _, g in groups], sqs, comps, cfg, cost_scale=0.6)
    for got, want in zip(gates, expected):
        torch.testing.assert_close(got, want)
    assert any(((w == 0) | (w == 1)).any() for w in expected)  # the projection was exercised


def test_squared_norms_of_rows_matches_the_definition_for_groups_with_and_without_bias(kernels):
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(5, 7, generator=g), torch.randn(5, generator=g)), (torch.randn(3, 4, generator=g), None),
             (torch.randn(3, 1, generator=g), torch.randn(3, generator=g))]  # fmt: skip
    groups = [[pairs[0]], [pairs[1], pairs[2]]]  # the second: a conv producer and its BatchNorm
    got = game.squared_norms_of_rows(groups)
    naive = [torch.tensor([sum(sum(float(v) ** 2 for v in w[i]) + (float(b[i]) ** 2 if b is not None else 0.0)
                               for w, b in rows) for i in range(rows[0][0].shape[0])]) for rows in groups]  # fmt: skip
    for a, b in zip(got, naive):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got[0], game.squared_norms([pairs[0][0], pairs[0][1].unsqueeze(1)]))


def test_gamma_weights_scale_the_l1_cost_group_by_group(kernels):
    cfg = GameSettings(beta=0.0, gamma=0.1, lr_s=0.5)
    gates = [torch.full((3,), 0.8), torch.full((2,), 0.8)]
    grads = [torch.zeros(3), torch.zeros(2)]
    game.ascent_step_(gates, grads, None, None, cfg, cost_scale=1.0, gamma_weights=[2.0, 0.5])
    torch.testing.assert_close(gates[0], torch.full((3,), 0.8 - 0.5 * 0.1 * 2.0))
    torch.testing.assert_close(gates[1], torch.full((2,), 0.8 - 0.5 * 0.1 * 0.5))


def test_per_tensor_and_foreach_updates_agree_bit_for_bit(monkeypatch):
    """CPU updates one tensor at a time; an accelerator uses foreach ops. Both must give the same
    participations to the last bit, so a run's result does not depend on which path it took."""
    g = torch.Generator().manual_seed(5)
    rows = [[(torch.randn(7, 11, generator=g), torch.randn(7, generator=g))], [(torch.randn(4, 3, generator=g), None)]]
    start = [torch.rand(7, generator=g), torch.rand(4, generator=g)]
    grads = [torch.randn(7, generator=g), torch.randn(4, generator=g)]
    comps = [torch.randn(7, generator=g), torch.randn(4, generator=g)]
    cfg = GameSettings(beta=0.3, gamma=0.1, eta=0.05, lr_s=0.4)
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(game, "fused_kernels", lambda tensors, fused=fused: fused)
        sqs = game.squared_norms_of_rows(rows)
        gates = [s.clone() for s in start]
        game.ascent_step_(gates, grads, sqs, comps, cfg, cost_scale=0.7, gamma_weights=[1.5, 0.25])
        results[fused] = (sqs, gates)
    for per_tensor, foreach in zip(results[False], results[True]):  # the squared norms, then the gates
        assert all(torch.equal(a, b) for a, b in zip(per_tensor, foreach))
    assert any(((s == 0) | (s == 1)).any() for s in results[False][1])  # the projection was exercised


def test_the_game_starts_after_the_dense_fraction_and_ramps_its_costs_from_there():
    from equiprune.methods import build_method
    from equiprune.models import mlp

    method = build_method("game", settings={"start": 0.5, "cost_ramp": 0.5, "gamma": 0.1, "lr_s": 0.1})
    gated = method.prepare(mlp(input_shape=(4,), hidden=(3,), num_classes=2))
    method.before_run(gated, steps_per_epoch=4, epochs=2)  # 8 steps: 4 dense, then 2 of ramp, then full
    scales = []
    for _ in range(8):
        method.after_step(gated)
        scales.append(method.cost_scale())
    assert scales == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    method2 = build_method("game", settings={"start": 0.5, "beta": 0.0, "gamma": 0.1, "lr_s": 0.1})
    g2 = method2.prepare(mlp(input_shape=(4,), hidden=(3,), num_classes=2))
    method2.before_run(g2, steps_per_epoch=2, epochs=1)
    with torch.no_grad():
        g2.gates[0].fill_(0.5)
    g2.gates[0].grad = torch.zeros(3)
    method2.after_step(g2)  # step 1 of 2: dense, no update
    torch.testing.assert_close(g2.gates[0].detach(), torch.full((3,), 0.5))
    method2.after_step(g2)  # step 2: the game, full costs (no ramp): s -= lr_s·γ
    torch.testing.assert_close(g2.gates[0].detach(), torch.full((3,), 0.5 - 0.1 * 0.1))


def test_newton_records_per_example_gradients_only_for_steps_the_game_plays_also_after_resume():
    from equiprune.methods import build_method
    from equiprune.models import mlp

    def build():
        method = build_method("game", settings={"start": 0.5, "update": "newton", "lr_s": 0.1})
        gated = method.prepare(mlp(input_shape=(4,), hidden=(3,), num_classes=2))
        method.before_run(gated, steps_per_epoch=2, epochs=2)  # 4 steps: 2 dense, then 2 of the game
        return method, gated

    def step(method, gated) -> bool:
        """One training step; whether its backward recorded per-example gradients."""
        gated.zero_grad()
        torch.nn.functional.cross_entropy(gated(torch.randn(5, 4)), torch.tensor([0, 1, 0, 1, 1])).backward()
        recorded = any(g is not None for g in method._recorder.grads)
        method.after_step(gated)
        return recorded

    torch.manual_seed(0)
    method, gated = build()
    assert [step(method, gated) for _ in range(4)] == [False, False, True, True]
    for done, expected in [(1, [False, True, True]), (2, [True, True])]:  # resumed after `done` steps
        method, gated = build()
        method.load_state_dict({"step": done, "initial": None})
        assert [step(method, gated) for _ in range(4 - done)] == expected


def test_an_anchored_game_resumed_from_a_checkpoint_continues_exactly():
    """The participations of an anchored game live in the method, not in the gates (which hold the
    0/1 profile): a checkpoint must carry them, or a resumed run would restart every player at 1."""
    from equiprune.methods import build_method
    from equiprune.models import mlp

    settings = {"update": "newton", "anchored": True, "gamma": 0.003, "lr_s": 0.2}
    torch.manual_seed(0)
    batches = [(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])) for _ in range(5)]

    def build(model):
        method = build_method("game", settings=settings)
        gated = method.prepare(model)
        method.before_run(gated, steps_per_epoch=5, epochs=1)
        return method, gated

    def step(method, gated, batch):
        gated.zero_grad()
        torch.nn.functional.cross_entropy(gated(batch[0]), batch[1]).backward()
        method.after_step(gated)

    model = mlp(input_shape=(4,), hidden=(6,), num_classes=2)
    copy = mlp(input_shape=(4,), hidden=(6,), num_classes=2)
    copy.load_state_dict(model.state_dict())
    method, gated = build(model)
    for batch in batches[:3]:
        step(method, gated, batch)
    saved, gates = torch.load(_saved(method.state_dict()), weights_only=False), gated.gates[0].detach().clone()
    assert ((gates == 0) | (gates == 1)).all() and gates.sum() > 1
    assert ((method._strategies[0] > 0) & (method._strategies[0] < 1)).any()
    resumed, gated2 = build(copy)
    with torch.no_grad():
        gated2.gates[0].copy_(gates)  # the trainer restores the gates with the model's state
    resumed.load_state_dict(saved)
    for batch in batches[3:]:
        step(method, gated, batch)
        step(resumed, gated2, batch)
    torch.testing.assert_close(resumed._strategies[0], method._strategies[0], rtol=0, atol=0)


@pytest.mark.parametrize("weighting", ["uniform", "width"])
def test_cost_taper_scales_each_layers_l1_cost_by_its_mean_participation(weighting):
    """No benefit, no L2: one step lowers s by lr_s·γ·w·mean(s)^taper, group by group."""
    from equiprune.methods import build_method
    from equiprune.models import mlp

    settings = {"beta": 0.0, "gamma": 0.1, "lr_s": 0.5, "cost_taper": 2.0, "cost_weighting": weighting}
    method = build_method("game", settings=settings)
    gated = method.prepare(mlp(input_shape=(4,), hidden=(8, 16), num_classes=2))
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    before = [torch.linspace(0.2, 0.6, 8), torch.full((16,), 0.9)]
    with torch.no_grad():
        for s, b in zip(gated.gates, before):
            s.copy_(b)
            s.grad = torch.zeros_like(s)
    method.after_step(gated)
    width = [12 / 8, 12 / 16] if weighting == "width" else [1.0, 1.0]
    for s, b, w in zip(gated.gates, before, width):
        expected = b - 0.5 * 0.1 * w * float(b.mean()) ** 2
        torch.testing.assert_close(s.detach(), expected)


@pytest.mark.parametrize("players", [None, "weight"])
def test_width_weighted_costs_charge_each_player_its_share_of_its_layer(players):
    """With no benefit, one step lowers every participation by lr_s·γ·w, w = mean size / group size:
    the 8-neuron layer's players pay twice what the 16-neuron layer's do, and w averages to 1."""
    from equiprune.methods import build_method
    from equiprune.models import mlp

    settings = {"cost_weighting": "width", "beta": 0.0, "gamma": 0.1, "lr_s": 0.1}
    method = build_method("game", settings=settings, players=players)
    gated = method.prepare(mlp(input_shape=(4,), hidden=(16, 8), num_classes=2))
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    sizes = [s.numel() for s in gated.gates]
    expected = [sum(sizes) / len(sizes) / n for n in sizes]
    if players is None:
        assert sizes == [16, 8] and expected == [0.75, 1.5]
    assert sum(w * n for w, n in zip(expected, sizes)) == pytest.approx(sum(sizes))
    with torch.no_grad():
        for s in gated.gates:
            s.fill_(0.5)
    method.after_step(gated)  # no backward ran: every benefit is zero
    for s, w in zip(gated.gates, expected):
        torch.testing.assert_close(s.detach(), torch.full_like(s, 0.5 - 0.1 * 0.1 * w))


def _rewound_reference(initial: dict, gates: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The initial MLP with every dropped neuron silenced by zeroing its incoming row and bias (ReLU
    then gives exactly 0): what a ticket of the survivors at their initial weights computes."""
    from equiprune.models import mlp

    ref = mlp(hidden=(8, 6))
    ref.load_state_dict(initial)
    linears = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer, s in zip(linears, gates):
            dropped = s < 0.01
            layer.weight[dropped] = 0.0
            layer.bias[dropped] = 0.0
    return ref(x)


def test_rewind_compacts_the_survivors_with_their_initial_weights_and_survives_a_checkpoint():
    from equiprune.methods import build_method
    from equiprune.models import mlp

    torch.manual_seed(0)
    model = mlp(hidden=(8, 6))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("game", settings={"gamma": 0.1, "rewind": True})
    trained = method.prepare(model)
    method.before_run(trained, steps_per_epoch=2, epochs=1)
    state = method.state_dict()
    with torch.no_grad():  # what training leaves: moved weights, some players out, some part-way
        for p in trained.weight_parameters():
            p.add_(0.3 * torch.randn_like(p))
        trained.gates[0].copy_(torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.2, 0.0, 1.0]))
        trained.gates[1].copy_(torch.tensor([0.0, 0.7, 1.0, 0.0, 0.0, 1.0]))
    gates = [s.detach().clone() for s in trained.gates]
    x = torch.randn(5, 1, 28, 28)
    expected = _rewound_reference(initial, gates, x)
    unrewound = trained(x).detach()  # what compaction without rewinding would reproduce

    # A resumed run: the trainer calls before_run (on weights that are not the initial ones here),
    # then loads the method's state from the checkpoint.
    resumed = build_method("game", settings={"gamma": 0.1, "rewind": True})
    resumed.before_run(trained, steps_per_epoch=2, epochs=1)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=False))
    result = resumed.finish(trained)

    assert result.kept == {"1": 5, "3": 3}
    torch.testing.assert_close(result.model(x), expected)
    assert not torch.allclose(unrewound, expected)  # so the check above tells the two apart


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_rewind_refuses_single_weight_players():
    from equiprune.methods import build_method
    from equiprune.models import mlp

    method = build_method("game", settings={"rewind": True}, players="weight")
    trained = method.prepare(mlp(hidden=(8, 6)))
    with pytest.raises(ConfigError, match=r"method.rewind: .*players = 'weight'.*'imp'"):
        method.before_run(trained, steps_per_epoch=2, epochs=1)


@settings(max_examples=60, deadline=None)
@given(
    s0=st.floats(0, 1),
    g=st.floats(-3, 3),
    fisher=st.floats(0.01, 5),
    sq=st.floats(0, 4),
    comp=st.floats(-2, 2),
    beta=st.floats(0, 1),
    gamma=st.floats(0, 1),
    eta=st.floats(0, 1),
    scale=st.floats(0, 1),
    played=st.one_of(st.none(), st.sampled_from([0.0, 1.0])),
)
def test_undamped_newton_step_maximises_the_second_order_utility_on_a_grid(s0, g, fisher, sq, comp, beta, gamma,
                                                                             eta, scale, played):  # fmt: skip
    """With lr_s = 1 the step lands on the maximiser over [0,1] of U_i with the benefit taken to second
    order about the point m where g and F were measured (s0 itself, or the profile an anchored game
    played), written out here independently as α(−g(s − m) − ½F(s − m)²) minus the costs."""
    cfg = GameSettings(beta=beta, gamma=gamma, eta=eta, lr_s=1.0, update="newton", alpha=0.8)
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    s = t(s0)
    m = s0 if played is None else played
    game.newton_step_(s, t(g), t(fisher), t(sq), t(comp), cfg, cost_scale=scale, gamma_weight=1.5,
                      played=None if played is None else t(played))  # fmt: skip
    grid = torch.linspace(0, 1, 4001, dtype=torch.float64)

    def u(v):
        benefit = cfg.alpha * (-g * (v - m) - 0.5 * fisher * (v - m) ** 2)
        return benefit - scale * (beta * sq * v**2 + 1.5 * gamma * v + eta * comp * v)

    assert 0.0 <= float(s) <= 1.0
    assert float(u(s)) >= float(u(grid).max()) - 1e-9


def test_newton_steps_are_damped_and_move_players_with_little_fisher_information_fastest():
    cfg = GameSettings(beta=0.0, gamma=0.1, lr_s=0.01, update="newton")
    s = torch.full((3,), 0.9, dtype=torch.float64)
    fisher = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    game.newton_step_(s, zeros, fisher, zeros, 0.0, cfg)
    torch.testing.assert_close(s, 0.9 - 0.01 * 0.1 / fisher)  # lr_s·slope/curvature, slope = −γ


@pytest.mark.parametrize(
    "settings_, needle",
    [(dict(update="newton", lr_s=2.0), r"method.lr_s: with update='newton' it is a damping in \(0, 1\]"),
     (dict(update="newton", benefit_grad="theta"), r"method.update = 'newton' .*benefit_grad = 'gated'"),
     (dict(anchored=True), r"method.anchored: .*Fisher information: set update = 'newton'"),
     (dict(anchored=True, update="newton", benefit_sign="as_written"), r"method.anchored: .*'loss_reduction'"),
     (dict(update="gradient"), r"method.update: got 'gradient', expected one of \['ascent', 'best_response', "
                               r"'newton'\]")],
)  # fmt: skip
def test_newton_settings_that_cannot_work_are_refused(settings_, needle):
    with pytest.raises(ConfigError, match=needle):
        GameSettings(**settings_)


def test_newton_refuses_single_weight_players():
    from equiprune.methods import build_method
    from equiprune.models import mlp

    method = build_method("game", settings={"update": "newton"}, players="weight")
    with pytest.raises(ConfigError, match=r"method.update = 'newton' needs structured players"):
        method.prepare(mlp(hidden=(8, 6)))

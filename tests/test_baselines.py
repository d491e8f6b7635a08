"""Budgets and the structured baselines against hand-computed expectations on tiny models."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from equiprune.core.selection import kept_total, layerwise_counts, top_k_masks
from equiprune.errors import ConfigError
from equiprune.methods import build_method
from equiprune.methods.base import Calibration
from equiprune.models import mlp


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 600), min_size=1, max_size=5),
    st.floats(0.0005, 1.0),
)
def test_layerwise_counts_hit_the_budget_exactly(sizes, budget):
    named = {str(i): n for i, n in enumerate(sizes)}
    counts = layerwise_counts(budget, named)
    assert sum(counts.values()) == kept_total(budget, named)
    assert all(1 <= counts[k] <= named[k] for k in named)
    if round(budget * sum(sizes)) >= len(sizes):  # no per-layer floor in play: exactly round(b·N)
        assert sum(counts.values()) == round(budget * sum(sizes))


def test_the_papers_mlp_at_two_percent_keeps_15_of_768():
    assert layerwise_counts(0.02, {"1": 512, "3": 256}) == {"1": 10, "3": 5}


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
def test_a_budget_outside_the_unit_interval_is_refused(budget):
    with pytest.raises(ConfigError, match=r"budget: must lie in \(0, 1\]"):
        build_method("magnitude-l1", settings={"budget": budget})


def test_global_allocation_ranks_all_players_together_but_keeps_one_per_layer():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 0.1]), "b": torch.tensor([0.2, 0.3])}
    masks = top_k_masks(scores, 0.5, "global")  # 3 of 6: the best of b, then 5 and 4 from a
    assert masks["a"].tolist() == [True, True, False, False]
    assert masks["b"].tolist() == [False, True]


def _tiny_model():
    """784 → 3 → 2 → 10 with hand-set incoming weights, so norms are known exactly."""
    model = mlp(hidden=(3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[1].weight[0, :2] = torch.tensor([3.0, 4.0])  # L1 7, L2 5
        model[1].weight[1, :3] = torch.tensor([1.0, 1.0, 1.0])  # L1 3, L2 √3
        model[1].weight[2, 0] = 6.0  # L1 6, L2 6
        model[1].bias[:] = torch.tensor([0.0, 0.0, 0.0])
        model[3].weight[:, :] = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 0.1]])
        model[3].bias[:] = torch.tensor([0.0, -3.0])  # the second neuron of layer 3 has L1 4.1
    return model


def _select(name, budget, **extra):
    method = build_method(name, settings={"budget": budget, **extra})
    gated = method.prepare(_tiny_model())
    method.before_run(gated, steps_per_epoch=10, epochs=1)
    return method, gated, method.finish(gated)


def test_magnitude_l1_and_l2_rank_by_the_norms_computed_by_hand():
    # budget 0.6 of 5 players = 3: layer "1" keeps 2 of 3, layer "3" keeps 1 of 2 (largest remainders)
    _, gated, l1 = _select("magnitude-l1", 0.6)
    _, _, l2 = _select("magnitude-l2", 0.6)
    assert l1.kept == {"1": 2, "3": 1} == l2.kept
    # L1 norms of layer 1: 7, 3, 6 → keep neurons 0 and 2; L2 norms: 5, √3, 6 → also 0 and 2.
    assert l1.model[1].weight.shape == (2, 784)
    torch.testing.assert_close(l1.model[1].weight[:, 0], torch.tensor([3.0, 6.0]))
    # Layer 3: neuron 0 has L1 1+2+0.5 = 3.5 (L2 √5.25 ≈ 2.29); neuron 1 has L1 1+0.1+3 = 4.1 (L2 √10.01 ≈ 3.16).
    torch.testing.assert_close(l1.model[3].bias, torch.tensor([-3.0]))
    torch.testing.assert_close(l2.model[3].bias, torch.tensor([-3.0]))


def test_l1_and_l2_disagree_where_the_hand_computation_says_they_must():
    model = mlp(hidden=(2, 1))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0, :4] = 1.0  # L1 4, L2 2
        model[1].weight[1, 0] = 3.0  # L1 3, L2 3
    for name, winner in (("magnitude-l1", 1.0), ("magnitude-l2", 3.0)):
        method = build_method(name, settings={"budget": 0.5})  # 3 players → keep 2: one per layer
        gated = method.prepare(model)
        method.before_run(gated, 1, 1)
        assert float(method.finish(gated).model[1].weight[0, 0].detach()) == winner


def test_random_pruning_follows_the_seeded_rng_and_hits_the_budget():
    def kept(seed):
        torch.manual_seed(seed)
        method = build_method("random", settings={"budget": 0.25})
        gated = method.prepare(mlp(hidden=(40, 20)))
        method.before_run(gated, 1, 1)
        masks = method._select(gated, 0.25)
        return {k: v.nonzero().flatten().tolist() for k, v in masks.items()}

    a, b, c = kept(1), kept(1), kept(2)
    assert a == b and a != c
    assert [len(v) for v in a.values()] == [10, 5]


class _Data:
    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.y)


def test_taylor_scores_equal_activation_times_gradient_computed_directly():
    torch.manual_seed(0)
    model = mlp(hidden=(6, 4))
    data = _Data()
    calibration = Calibration(data, batch_size=16, seed=0)
    method = build_method("taylor", settings={"budget": 0.5, "calibration_batches": 3})
    gated = method.prepare(model)
    scores = method.scores(gated, calibration)
    # Reference without any gates: hidden activations h, loss gradient ∂L/∂h, score |Σ_batch h·∂L/∂h|.
    expected = {"1": torch.zeros(6), "3": torch.zeros(4)}
    for x, y in calibration.batches(3):
        h1 = model[2](model[1](model[0](x)))
        h2 = model[4](model[3](h1))
        loss = F.cross_entropy(model[5](h2), y)
        g1, g2 = torch.autograd.grad(loss, (h1, h2))
        expected["1"] += (h1 * g1).sum(0).abs() / 3
        expected["3"] += (h2 * g2).sum(0).abs() / 3
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name])


def test_iterative_schedule_prunes_in_rounds_and_lands_on_the_budget():
    method = build_method("magnitude-l2", settings={"budget": 0.125, "schedule": "iterative", "rounds": 3})
    gated = method.prepare(mlp(hidden=(64, 32)))
    method.before_run(gated, steps_per_epoch=10, epochs=3)  # rounds after steps 10 and 20, last at the end
    alive = []
    for _ in range(30):
        method.after_step(gated)
        alive.append(method.epoch_metrics(gated)["players_alive"])
    # fractions 0.125^(1/3) = 0.5 and 0.125^(2/3) = 0.25 of 96 players
    assert alive[8] == 96 and alive[9] == 48 and alive[19] == 24 and alive[29] == 24
    result = method.finish(gated)
    assert sum(result.kept.values()) == 12 and result.kept == {"1": 8, "3": 4}
    # a player pruned in an earlier round never comes back
    first = method._masks
    for name, keep in method._select(gated, 0.125).items():
        assert not bool((keep & ~first[name]).any())


def test_slimming_penalises_the_l1_norm_of_the_gates_and_keeps_the_largest():
    method = build_method("slimming", settings={"budget": 0.5, "l1": 0.01})
    gated = method.prepare(mlp(hidden=(4, 2)))
    with torch.no_grad():
        gated.gates[0].copy_(torch.tensor([0.5, -2.0, 0.1, 1.0]))
        gated.gates[1].copy_(torch.tensor([0.3, -0.4]))
    torch.testing.assert_close(method.penalty(gated), torch.tensor(0.01 * (3.6 + 0.7)))
    assert any(p is gated.gates[0] for p in method.weight_parameters(gated))
    method.before_run(gated, 1, 1)
    result = method.finish(gated)
    assert result.kept == {"1": 2, "3": 1}
    # the kept gates (-2 and 1; -0.4) fold into the consumer's columns
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        gated.gates[0].mul_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
        gated.gates[1].mul_(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(result.model(x), gated(x))


def test_scratch_builds_the_budget_widths_freshly_initialised():
    torch.manual_seed(0)
    method = build_method("scratch", settings={"budget": 0.02})
    small = method.prepare(mlp(hidden=(512, 256)))
    linears = [m for m in small if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 10), (10, 5), (5, 10)]
    bound = 1 / 10**0.5  # PyTorch's default init for fan-in 10, not the original fan-in 512
    largest = float(linears[1].weight.detach().abs().max())
    assert 1 / 512**0.5 < largest <= bound
    assert method.finish(small).kept == {"1": 10, "3": 5}


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'magnitude'.*magnitude-l1"):
        build_method("magnitude")


@pytest.mark.parametrize("name, trains_gates", [("magnitude-l1", False), ("taylor", False), ("slimming", True)])
def test_only_slimming_hands_its_gates_to_the_weight_optimizer(name, trains_gates):
    method = build_method(name, settings={"budget": 0.5})
    gated = method.prepare(mlp(hidden=(4, 2)))
    params = method.weight_parameters(gated)
    assert any(p is gated.gates[0] for p in params) == trains_gates
    assert len([p for p in params if p.dim() == 2]) == 3  # every weight matrix is trained


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 40),
    kept=st.integers(1, 40),
    dead=st.integers(0, 40),
    multiple=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 10_000),
)
def test_rounded_widths_are_the_nearest_multiple_with_the_best_live_players(size, kept, dead, multiple, seed):
    from equiprune.core.selection import round_widths

    generator = torch.Generator().manual_seed(seed)
    score = torch.randn(size, generator=generator)
    alive = torch.ones(size, dtype=torch.bool)
    alive[torch.randperm(size, generator=generator)[: min(dead, size - 1)]] = False
    live = int(alive.sum())
    keep = torch.zeros(size, dtype=torch.bool)
    live_order = [int(i) for i in torch.argsort(score, descending=True) if alive[i]]
    keep[live_order[: min(kept, live)]] = True
    k = int(keep.sum())
    got = round_widths({"g": keep}, {"g": score}, {"g": alive}, multiple)["g"]
    n = int(got.sum())
    if live < multiple:
        assert torch.equal(got, keep)
        return
    # the nearest multiple (half-way up), at least one multiple, at most the live players
    candidates = [m for m in range(multiple, live + 1, multiple)]
    best = min(candidates, key=lambda m: (abs(m - k), -m))
    assert n == best
    assert not (got & ~alive).any()  # never revives a dead player
    if n >= k:  # every kept player stays, and the best live ones join
        assert bool((got | ~keep).all())
        joined, passed = score[got & ~keep], score[alive & ~got]
    else:  # only kept players stay: the best of them
        assert not bool((got & ~keep).any())
        joined, passed = score[got], score[keep & ~got]
    if len(joined) and len(passed):
        assert joined.min() >= passed.max()


def test_round_to_keeps_hardware_friendly_widths_in_every_layer():
    torch.manual_seed(0)
    model = mlp(hidden=(30, 20))
    method = build_method("magnitude-l1", settings={"budget": 0.5, "round_to": 8})
    result = method.finish(method.prepare(model))
    assert list(result.kept.values()) == [16, 8]  # 15 -> 16, 10 -> 8
    with pytest.raises(ConfigError, match="round_to"):
        build_method("magnitude-l1", settings={"budget": 0.5, "round_to": 0})


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("taylor", {"budget": 0.5}),
        ("snip", {"budget": 0.5}),
        ("grasp", {"budget": 0.5}),
        ("synflow", {"budget": 0.5}),
        ("game", {"cost_weighting": "macs"}),
        ("game", {"budget": 0.5, "budget_unit": "macs"}),
    ],
)
def test_a_data_driven_method_called_without_batches_says_how_to_give_them(name, settings):
    method = build_method(name, settings=settings)
    gated = method.prepare(mlp(hidden=(6, 4)))
    with pytest.raises(ConfigError, match=r"training batch.*none were given.*Calibration\.from_loader\(train_loader\)"):
        method.before_run(gated, steps_per_epoch=2, epochs=1)
        method.finish(gated)


def test_taylor_from_python_prunes_with_the_users_own_data_loader():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    method = build_method("taylor", settings={"budget": 0.5, "calibration_batches": 2})
    calibration = Calibration.from_loader(loader)
    gated = method.prepare(mlp(hidden=(8, 6)))
    method.before_run(gated, steps_per_epoch=len(loader), epochs=1, calibration=calibration)
    small = method.finish(gated, calibration=calibration).model
    widths = [m.out_features for m in small.modules() if isinstance(m, nn.Linear)]
    assert widths == [4, 3, 10] and small(data.tensors[0][:2]).shape == (2, 10)

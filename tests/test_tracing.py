"""Players of any traceable model: filters, coupled residual channels, concatenations, flattens;
compaction of each model family keeps the gated model's outputs exactly."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.core.compact import compact, keep_masks
from equiprune.core.measure import count_macs
from equiprune.core.players import attach, find_players
from equiprune.errors import PruningError
from equiprune.methods import build_method
from equiprune.methods import game_math as game
from equiprune.models import create_model


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _random_participations(gated, seed: int = 0) -> None:
    """About half of every group dropped (s = 0), the rest anywhere in [0.01, 1]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in gated.gates:
            s.copy_(torch.rand(s.shape, generator=g) * 0.99 + 0.01)
            s[torch.rand(s.shape, generator=g) < 0.5] = 0.0
            s[0] = 0.7  # never empty a group


class Branches(nn.Module):
    """Two convolution branches concatenated along channels with a BatchNorm over the concatenation,
    summed with another concatenation (coupling a with c and b with d), read by one convolution, then
    a ``view(x.size(0), -1)`` flatten into a Linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 5, 1)
        self.c, self.d = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 6)

    def forward(self, x):
        y = self.bn(torch.cat([F.relu(self.a(x)), self.b(x)], dim=1))
        y = torch.relu(y + torch.cat([self.c(x), self.d(x)], 1))
        y = F.max_pool2d(self.mix(y), 2)
        return self.fc(y.view(y.size(0), -1))


def test_resnet_residual_channels_of_a_stage_are_one_player_group():
    groups = {g.name: g for g in find_players(create_model("resnet20"))}
    assert len(groups) == 3 + 9  # one coupled group per stage, one per block's inner convolution
    stage1 = groups["conv1"]
    assert [n for n, _ in stage1.producers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert sorted(f.name for f in stage1.followers) == ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    assert sorted(c.name for c in stage1.consumers) == [
        "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0",
    ]  # fmt: skip
    stage3 = groups["layer3.0.conv2"]
    assert "layer3.0.shortcut.0" in [n for n, _ in stage3.producers] and stage3.consumers[-1].name == "fc"
    inner = groups["layer2.1.conv1"]
    assert (inner.kind, inner.size, [c.name for c in inner.consumers]) == ("filter", 32, ["layer2.1.conv2"])


def test_flatten_consumers_read_each_filter_once_per_position():
    groups = find_players(create_model("lenet5"))
    assert [(g.name, g.kind, g.size) for g in groups] == [("0", "filter", 6), ("3", "filter", 16),
                                                          ("7", "neuron", 120), ("9", "neuron", 84)]  # fmt: skip
    assert [(c.name, c.offset, c.repeat) for c in groups[1].consumers] == [("7", 0, 25)]


def test_concatenated_channels_keep_their_offsets_and_sums_couple_them():
    groups = {g.name: g for g in find_players(Branches())}
    assert sorted(groups) == ["a", "b", "mix"]
    assert [n for n, _ in groups["a"].producers] == ["a", "c"] and [n for n, _ in groups["b"].producers] == ["b", "d"]
    assert [(f.name, f.offset) for f in groups["b"].followers] == [("bn", 3)]
    assert [(c.name, c.offset, c.repeat) for c in groups["b"].consumers] == [("mix", 3, 1)]
    assert [(c.name, c.offset, c.repeat) for c in groups["mix"].consumers] == [("fc", 0, 9)]


MODEL_CASES = [
    ("resnet20", dict(input_shape=(3, 32, 32), width=0.5)),
    ("vgg11", dict(input_shape=(1, 28, 28), width=0.125)),
    ("lenet5", dict(input_shape=(1, 28, 28))),
    ("mlp", dict(input_shape=(1, 8, 8), hidden=(12, 6))),
    ("vit", dict(input_shape=(3, 32, 32), depth=2, dim=32, heads=4, mlp=48)),
]


@pytest.mark.parametrize(
    "name, kwargs", MODEL_CASES + [("branches", {})], ids=lambda v: v if isinstance(v, str) else ""
)
def test_compacted_model_equals_gated_model_with_dropped_players_zeroed(name, kwargs):
    torch.manual_seed(0)
    model = (Branches() if name == "branches" else create_model(name, **kwargs)).double()
    _randomise_batchnorm(model)
    gated = attach(model)
    _random_participations(gated)
    gated.eval()
    result = compact(gated, keep_masks(gated, 0.01))
    shape = kwargs.get("input_shape", (2, 12, 12))
    x = torch.randn(5, *shape, dtype=torch.float64)
    torch.testing.assert_close(result.model.eval()(x), gated(x), rtol=1e-9, atol=1e-12)
    assert result.kept == {g.name: int((s >= 0.01).sum()) for g, s in zip(gated.groups, gated.gates)}
    assert not any(m._forward_pre_hooks for m in result.model.modules()), "compacted model must be plain"
    assert count_macs(result.model, shape) < count_macs(model, shape)
    # every layer's recorded widths agree with its tensors (a plain module others can save and reload)
    for m in result.model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features)
        elif isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape == m.weight.shape == (m.num_features,)


def test_a_pruned_resnet_trains_on():
    """The compacted residual network is a valid module: it runs forward and backward in training mode."""
    gated = attach(create_model("resnet20", width=0.25))
    _random_participations(gated)
    small = compact(gated, keep_masks(gated, 0.01)).model.train()
    loss = F.cross_entropy(small(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in small.parameters())


def test_sums_of_channels_that_do_not_line_up_are_refused_with_the_layers_named():
    class Misaligned(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 5, 1), nn.Conv2d(2, 8, 1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))

    with pytest.raises(PruningError, match="'a'.*do not line up.*[Ee]xclude"):
        find_players(Misaligned())
    with pytest.raises(PruningError, match="no hidden layer"):  # excluded, nothing prunable is left
        find_players(Misaligned(), exclude=["a", "b", "c"])


def test_unknown_operations_block_only_the_channels_they_touch():
    class Gated(nn.Module):  # a squeeze-and-excitation style product of two tensors
        def __init__(self):
            super().__init__()
            self.conv, self.se = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.conv(x)
            y = y * torch.sigmoid(self.se(y))
            return self.fc2(torch.relu(self.fc1(y.mean((2, 3)))))

    with pytest.raises(PruningError, match=r"'conv'.*'mul'.*by a tensor"):
        find_players(Gated())
    assert [g.name for g in find_players(Gated(), exclude=["conv", "se"])] == ["fc1"]


def test_untraceable_models_get_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)

    with pytest.raises(PruningError, match="torch.fx could not trace"):
        find_players(DataDependent())


def test_players_can_be_restricted_to_one_kind():
    model = create_model("lenet5")
    assert [g.kind for g in find_players(model, kinds=("filter",))] == ["filter", "filter"]
    method = build_method("magnitude-l1", settings={"budget": 0.5}, players="neuron")
    assert [g.name for g in method.prepare(model).groups] == ["7", "9"]


def test_game_costs_of_a_filter_cover_its_convolution_and_batchnorm():
    model = create_model("resnet20", width=0.25).double()
    _randomise_batchnorm(model)
    group = find_players(model)[0]  # the first stage: 4 convolutions and 4 BatchNorms
    sq = game.squared_norms_of_rows([group.rows()])[0]
    naive = torch.zeros(group.size, dtype=torch.float64)
    for i in range(group.size):
        for _, conv in group.producers:
            naive[i] += float((conv.weight[i].detach() ** 2).sum())
        for f in group.followers:
            naive[i] += float(f.module.weight[f.offset + i].detach() ** 2 + f.module.bias[f.offset + i].detach() ** 2)
    torch.testing.assert_close(sq, naive)
    torch.testing.assert_close(game.squared_norms(group.blocks()), naive)


def test_transformer_players_are_attention_heads_and_mlp_units():
    model = create_model("vit", input_shape=(1, 28, 28), depth=2, dim=32, heads=4, mlp=48)
    groups = {g.name: g for g in find_players(model)}
    assert sorted(groups) == ["blocks.0.attn", "blocks.0.fc1", "blocks.1.attn", "blocks.1.fc1"]
    heads = groups["blocks.1.attn"]
    assert (heads.kind, heads.size, heads.row_pattern) == ("head", 4, (8, 3))
    assert [(c.name, c.repeat) for c in heads.consumers] == [("blocks.1.attn.proj", 8)]
    # a head's parameters: its 8 rows of each of the query, key and value projections (and biases)
    qkv = model.blocks[1].attn.qkv
    naive = torch.tensor([sum(float(qkv.weight[t * 32 + h * 8 : t * 32 + h * 8 + 8].detach().square().sum())
                             + float(qkv.bias[t * 32 + h * 8 : t * 32 + h * 8 + 8].detach().square().sum())
                             for t in range(3)) for h in range(4)])  # fmt: skip
    torch.testing.assert_close(game.squared_norms(heads.blocks()), naive)
    assert [g.kind for g in find_players(model, kinds=("head",))] == ["head", "head"]
    assert sorted(g.name for g in find_players(model, exclude=["blocks.0.attn"])) == [
        "blocks.0.fc1", "blocks.1.attn", "blocks.1.fc1",
    ]  # fmt: skip
    # the residual stream (embedding, attention and MLP outputs) passes LayerNorms: fixed, not pruned
    assert not any(n in groups for n in ("embed", "blocks.0.attn.proj", "blocks.0.fc2"))


def test_a_pruned_transformer_has_fewer_heads_and_runs():
    gated = attach(create_model("vit", input_shape=(1, 28, 28), depth=2, dim=32, heads=4, mlp=48))
    with torch.no_grad():
        gated.gates[0].copy_(torch.tensor([0.5, 0.0, 0.0, 1.0]))
    small = compact(gated, keep_masks(gated, 0.01)).model
    assert small.blocks[0].attn.heads == 2 and small.blocks[0].attn.qkv.out_features == 3 * 2 * 8
    assert small.blocks[0].attn.proj.in_features == 16 and small.blocks[1].attn.heads == 4
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(small(x), gated(x), rtol=1e-5, atol=1e-6)


def test_balanced_folding_crosses_pooling_and_flatten_exactly():
    """LeNet-5: conv → ReLU → max-pool → conv → ReLU → max-pool → flatten → Linear; every scale may
    move across ReLU, max-pooling and flatten, so every filter ends with equal in and out norms."""
    torch.manual_seed(0)
    model = create_model("lenet5").double()
    gated = attach(model)
    _random_participations(gated)
    with torch.no_grad():
        model[3].weight.mul_(20.0)  # lopsided, as after the game
    plain = compact(gated, keep_masks(gated, 0.01))
    balanced = compact(gated, keep_masks(gated, 0.01), balance=True).model
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(balanced(x), plain.model(x), rtol=1e-9, atol=1e-12)
    conv, fc = balanced[3], balanced[7]
    n = conv.out_channels
    rows = (conv.weight.reshape(n, -1).square().sum(1) + conv.bias.square()).sqrt()
    cols = fc.weight.reshape(fc.out_features, n, -1).square().sum((0, 2)).sqrt()
    torch.testing.assert_close(rows, cols, rtol=1e-5, atol=0)
    # BatchNorm after a convolution would undo a scale: a ResNet's groups are left as folded
    resnet = attach(create_model("resnet20", width=0.25).double())
    _random_participations(resnet)
    a = compact(resnet, keep_masks(resnet, 0.01)).model
    b = compact(resnet, keep_masks(resnet, 0.01), balance=True).model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_transformer_prunes_heads_and_units_end_to_end(tmp_path, data_root):
    from equiprune.config import parse_config
    from equiprune.experiments.loop import run

    cfg = parse_config(f"""
seed = 0
device = "cpu"
[data]
dataset = "mnist"
root = "{data_root}"
train_subset = 512
test_subset = 256
[model]
name = "vit"
[train]
epochs = 2
finetune_epochs = 1
[method]
name = "magnitude-l2"
budget = 0.5
""")
    results = run(cfg, tmp_path / "run", quiet=True)
    assert results["players"] == "head+neuron"
    assert results["kept"]["blocks.0.attn"] == 2 and results["kept"]["blocks.0.fc1"] == 64
    small = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert [b.attn.heads for b in small.blocks] == [2, 2, 2, 2]
    assert results["macs_after"] < results["macs_before"]


@pytest.mark.parametrize("name, group", [("resnet20", "layer2.1.conv1"), ("vit", "blocks.0.attn")])
def test_a_residual_branch_may_lose_every_player_and_still_compacts_exactly(name, group):
    kwargs = dict(width=0.25) if name == "resnet20" else dict(input_shape=(3, 32, 32), depth=2, dim=32, mlp=48)
    model = create_model(name, **kwargs).double()
    _randomise_batchnorm(model)
    gated = attach(model)
    _random_participations(gated)
    index = [g.name for g in gated.groups].index(group)
    assert gated.groups[index].bypassed
    with torch.no_grad():
        gated.gates[index].zero_()
    gated.eval()
    result = compact(gated, keep_masks(gated, 0.01))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(result.model.eval()(x), gated(x), rtol=1e-9, atol=1e-12)
    assert result.kept[group] == 0
    # a group on the only path (a ResNet stage, an MLP layer) keeps one player, and says which
    stage = attach(create_model("resnet20", width=0.25))
    assert not stage.groups[0].bypassed
    with torch.no_grad():
        stage.gates[0].zero_()
    notes = []
    assert int(keep_masks(stage, 0.01, notes=notes)["conv1"].sum()) == 1
    assert "every player would leave layer 'conv1'" in notes[0]


@pytest.mark.parametrize(
    "name, kwargs", MODEL_CASES + [("branches", {})], ids=lambda v: v if isinstance(v, str) else ""
)
def test_per_example_gate_gradients_are_each_examples_own_backward(name, kwargs):
    """What ``update = 'newton'`` builds its Fisher information from, for every layout a gate can be
    read in (a flatten's repeated columns, attention heads, coupled residual channels read by several
    consumers): row n must be the gate gradient of example n's share of the mean loss alone."""
    torch.manual_seed(0)
    model = (Branches() if name == "branches" else create_model(name, **kwargs)).double()
    _randomise_batchnorm(model)
    gated = attach(model)
    _random_participations(gated)
    gated.eval()  # BatchNorm on running statistics: examples do not see each other
    shape = kwargs.get("input_shape", (2, 12, 12))
    x = torch.randn(4, *shape, dtype=torch.float64)
    y = torch.randint(0, 6 if name == "branches" else 10, (4,))
    recorder = gated.record_per_example(True)
    F.cross_entropy(gated(x), y).backward()
    rows = [g.clone() for g in recorder.grads]
    fisher = recorder.fisher()
    for s, r in zip(gated.gates, rows):
        torch.testing.assert_close(r.sum(0), s.grad)  # the rows add up to the batch gradient
    gated.record_per_example(False)
    own = []
    for n in range(len(x)):
        gated.zero_grad()
        F.cross_entropy(gated(x[n : n + 1]), y[n : n + 1]).backward()
        own.append([s.grad.clone() for s in gated.gates])
        for r, g in zip(rows, own[-1]):
            torch.testing.assert_close(r[n] * len(x), g)  # ∂ℓ_n/∂s, from example n alone
    for i, f in enumerate(fisher):
        torch.testing.assert_close(f, torch.stack([o[i] ** 2 for o in own]).mean(0))
    recorder.clear()
    assert all(g is None for g in recorder.grads)
    assert all(float(f.abs().sum()) == 0 for f in recorder.fisher())

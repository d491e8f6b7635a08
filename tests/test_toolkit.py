"""The selection and schedule toolkit the methods compose (core/selection.py, Calibration)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from equiprune.core.selection import alive_metrics, cubic_fraction, geometric_fraction, top_k_among_alive
from equiprune.data import Split
from equiprune.errors import ConfigError
from equiprune.methods.base import Calibration


def test_a_pruned_player_is_never_chosen_over_a_live_one():
    scores = {"a": torch.tensor([9.0, 1.0, 2.0, 3.0]), "b": torch.tensor([5.0, 0.5])}
    alive = {"a": torch.tensor([False, True, True, True]), "b": torch.tensor([True, False])}
    masks = top_k_among_alive(scores, alive, 0.5, "global")  # 3 of 6 kept; the 9 is dead
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [True, False]


@given(st.floats(0.001, 1.0), st.integers(1, 8))
def test_geometric_rounds_end_on_the_budget_and_shrink_by_one_ratio(budget, rounds):
    fractions = [geometric_fraction(budget, r, rounds) for r in range(rounds + 1)]
    assert fractions[0] == 1.0 and fractions[-1] == pytest.approx(budget)
    ratios = [b / a for a, b in zip(fractions, fractions[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)


def test_the_cubic_schedule_against_its_formula():
    for step in range(0, 120, 7):
        progress = min(1.0, max(0.0, (step - 10) / 90))
        assert cubic_fraction(0.1, step, 10, 100) == pytest.approx(1 - 0.9 * (1 - (1 - progress) ** 3))
    assert cubic_fraction(0.1, 0, 10, 100) == 1.0 and cubic_fraction(0.1, 500, 10, 100) == pytest.approx(0.1)


def test_alive_metrics():
    m = alive_metrics({"x": 1, "y": 3}, {"x": 4, "y": 4})
    assert m == {"players": 8, "players_alive": 4, "alive_fraction": 0.5, "alive_per_layer": {"x": 1, "y": 3}}


def test_mean_saliency_is_the_mean_over_batches_of_each_batchs_product():
    torch.manual_seed(0)
    split = Split(torch.randn(40, 5), torch.randint(0, 3, (40,)))
    model = nn.Linear(5, 3)
    calibration = Calibration(split, batch_size=10, seed=0)
    got = calibration.mean_saliency(model, [model.weight, model.bias], 3)
    batches = list(calibration.batches(3))
    assert len(batches) == 3
    expected = [torch.zeros_like(model.weight), torch.zeros_like(model.bias)]
    for x, y in batches:  # the naive reference: autograd on each batch, one after another
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected[0] += (model.weight * model.weight.grad).abs().detach() / 3
        expected[1] += (model.bias * model.bias.grad).abs().detach() / 3
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-7) and not math.isnan(float(g.sum()))


def _loader(n=40, batch_size=10):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(n, 5), torch.randint(0, 3, (n,)))
    return DataLoader(data, batch_size=batch_size, shuffle=False), data


def test_a_loader_calibration_gives_its_first_batches_afresh_on_every_call():
    loader, data = _loader()
    calibration = Calibration.from_loader(loader)
    assert calibration.input_shape == (5,)
    for _ in range(2):  # a fresh pass each time: a method may read its batches more than once
        batches = list(calibration.batches(3))
        assert len(batches) == 3
        for i, (x, y) in enumerate(batches):
            assert torch.equal(x, data.tensors[0][10 * i : 10 * (i + 1)])
            assert torch.equal(y, data.tensors[1][10 * i : 10 * (i + 1)])
    assert len(list(calibration.batches(99))) == 4  # no more than the loader has


def test_a_loader_calibration_scores_as_the_same_batches_from_a_split_do():
    split = Split(torch.randn(40, 5), torch.randint(0, 3, (40,)))
    model = nn.Linear(5, 3)
    from_split = Calibration(split, batch_size=10, seed=0)
    from_loader = Calibration.from_loader(list(from_split.batches(3)))
    for a, b in zip(
        from_split.mean_saliency(model, [model.weight], 3), from_loader.mean_saliency(model, [model.weight], 3)
    ):
        assert torch.equal(a, b)


def test_a_loader_calibration_moves_its_batches_to_the_device_asked_for():
    loader, _ = _loader()
    x, y = next(iter(Calibration.from_loader(loader, device="meta").batches(1)))
    assert x.device.type == y.device.type == "meta"


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ((b for b in [(torch.zeros(2, 5), torch.zeros(2))]), "can be read only once.*give a DataLoader"),
        ([], "yielded no batches"),
        ([{"x": torch.zeros(2, 5), "y": torch.zeros(2)}], r"an \(inputs, labels\) pair of tensors, got a dict"),
        ([(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2))], r"got a tuple of 3 \(Tensor, Tensor, Tensor\)"),
        ([(torch.zeros(2, 5), [0, 1])], r"got a tuple of 2 \(Tensor, list\)"),
    ],
)
def test_a_loader_that_cannot_calibrate_is_refused_with_what_would_do(loader, message):
    with pytest.raises(ConfigError, match=message):
        Calibration.from_loader(loader)

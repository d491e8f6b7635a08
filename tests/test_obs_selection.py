"""Players chosen for removal by structured OBS (equiprune.core.obs_selection), checked against
least squares solved from scratch with torch.linalg.lstsq."""

import copy

import pytest
import torch
import torch.nn as nn

from equiprune.core.compact import compact
from equiprune.core.obs_selection import reconstruction_masks, removal_order
from equiprune.core.players import attach
from equiprune.core.refit import refit_consumers
from equiprune.errors import PruningError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def refit_error(x: torch.Tensor, y: torch.Tensor, kept: list[int]) -> float:
    """The least squared error of y from x's ``kept`` columns and a constant, solved from scratch."""
    design = torch.cat([x[:, kept], torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    fit = torch.linalg.lstsq(design, y, driver="gelsd").solution
    return float(((design @ fit - y) ** 2).sum())


@pytest.mark.parametrize("width", [1, 2])
def test_each_removal_costs_what_refitting_without_it_adds_to_the_error(width):
    x = torch.randn(200, 12, dtype=torch.float64)
    weight = torch.randn(5, 12, dtype=torch.float64)
    y = x @ weight.T  # what the layer computes with every input
    gram = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = gram.T @ gram
    players = torch.arange(12).reshape(12 // width, width)
    order, costs = removal_order(weight, gram, players, ridge=0.0)
    assert len(order) == len(players) - 1 and len(set(order)) == len(order)
    removed: list[int] = []
    for player, cost in zip(order, costs):
        kept_before = [c for c in range(12) if c not in removed]
        # greedy: no other player was cheaper to lose at this point
        options = {
            p: refit_error(x, y, [c for c in kept_before if c not in players[p].tolist()])
            for p in range(len(players))
            if players[p][0].item() in kept_before
        }
        before = refit_error(x, y, kept_before)
        assert cost == pytest.approx(options[player] - before, rel=1e-6, abs=1e-8)
        assert options[player] <= min(options.values()) + 1e-8
        removed += players[player].tolist()


def test_masks_keep_the_budget_and_the_removals_a_refit_repairs_best():
    dense = nn.Sequential(nn.Linear(12, 16), nn.Identity(), nn.Linear(16, 4)).eval()
    with torch.no_grad():  # units 8..15 copy units 0..7 at another scale: losing them costs nothing
        dense[0].weight[8:] = 3.0 * dense[0].weight[:8]
        dense[0].bias[8:] = 3.0 * dense[0].bias[:8]
    batches = [torch.randn(64, 12) for _ in range(2)]
    gated = attach(copy.deepcopy(dense))
    masks = reconstruction_masks(gated, batches, budget=0.5, allocation="layerwise", ridge=1e-9)
    keep = masks[gated.groups[0].name]
    assert int(keep.sum()) == 8
    # each kept unit stands for its copy: one of every pair survives, so the refit is exact
    assert all(bool(keep[i]) != bool(keep[i + 8]) for i in range(8))
    small = compact(gated, masks).model
    refit_consumers(small, dense, batches, ridge=0.0)
    test = torch.randn(20, 12)
    with torch.no_grad():
        assert torch.allclose(small(test), dense(test), atol=1e-4)


def test_global_allocation_takes_more_from_the_layer_whose_players_cost_less():
    class Blocks(nn.Module):  # two residual MLP blocks writing into one stream
        def __init__(self):
            super().__init__()
            self.a1, self.a2 = nn.Linear(8, 16), nn.Linear(16, 8)
            self.b1, self.b2 = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            x = x + self.a2(torch.relu(self.a1(x)))
            return x + self.b2(torch.relu(self.b1(x)))

    model = Blocks().eval()
    with torch.no_grad():
        model.b2.weight.mul_(0.01)  # block b barely matters
    gated = attach(model)
    batches = [torch.randn(128, 8)]
    masks = reconstruction_masks(gated, batches, budget=0.5, allocation="global")
    kept = {name: int(m.sum()) for name, m in masks.items()}
    assert sum(kept.values()) == 16
    assert kept["a1"] > kept["b1"]


def test_bad_requests_are_named():
    gated = attach(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    batch = [torch.randn(4, 4)]
    with pytest.raises(PruningError, match=r"budget must be a fraction in \(0, 1\]"):
        reconstruction_masks(gated, batch, budget=1.5)
    with pytest.raises(PruningError, match="allocation must be one of"):
        reconstruction_masks(gated, batch, budget=0.5, allocation="uniform")
    with pytest.raises(PruningError, match="needs calibration batches"):
        reconstruction_masks(gated, [], budget=0.5)
    with pytest.raises(PruningError, match="no player group of kind 'head'"):
        reconstruction_masks(gated, batch, budget=0.5, kind="head")
    conv = attach(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)))
    with pytest.raises(PruningError, match="needs one linear layer reading group"):
        reconstruction_masks(conv, [torch.randn(1, 1, 8, 8)], budget=0.5)

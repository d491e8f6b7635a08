"""The least-squares refit of the layers that read pruned channels (equiprune.core.refit), checked
against torch.linalg.lstsq on the same data and on cases whose answer is known."""

import copy

import pytest
import torch
import torch.nn as nn

from equiprune.core.compact import compact
from equiprune.core.players import attach
from equiprune.core.refit import narrowed_linears, refit_consumers
from equiprune.errors import PruningError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mlp():
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3)).eval()


def pruned_copy(model, keep: dict[int, torch.Tensor]):
    """``model`` with the hidden neurons of the named groups (by index) outside ``keep`` removed."""
    gated = attach(copy.deepcopy(model))
    masks = {g.name: keep.get(i, torch.ones(g.size, dtype=torch.bool)) for i, g in enumerate(gated.groups)}
    return compact(gated, masks).model


def test_a_refit_layer_is_the_least_squares_fit_of_the_dense_output_on_the_pruned_inputs():
    dense = mlp()
    keep = torch.tensor([True, False] * 6)
    pruned = pruned_copy(dense, {0: keep})
    batches = [torch.randn(40, 6) for _ in range(3)]
    assert narrowed_linears(pruned, dense) == ["2"]
    x = torch.cat([torch.relu(dense[0](b))[:, keep] for b in batches]).double().detach()
    y = torch.cat([dense[2](torch.relu(dense[0](b))) for b in batches]).double().detach()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    reference = torch.linalg.lstsq(design, y).solution  # [inputs + 1, outputs]
    errors = refit_consumers(pruned, dense, batches, ridge=0.0)
    assert torch.allclose(pruned[2].weight.double(), reference[:-1].T, atol=1e-5)
    assert torch.allclose(pruned[2].bias.double(), reference[-1], atol=1e-5)
    residual = ((design @ reference - y) ** 2).sum().detach() / (y**2).sum()
    assert errors["2"] == pytest.approx(float(residual), rel=1e-4, abs=1e-7)


def test_inputs_that_the_kept_ones_predict_exactly_are_repaired_exactly():
    dense = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)).eval()
    with torch.no_grad():  # hidden units 3..5 are sums of units 0..2: removing them loses nothing
        dense[0].weight[3:] = dense[0].weight[:3] * 2.0
        dense[0].bias[3:] = dense[0].bias[:3] * 2.0
    pruned = pruned_copy(dense, {0: torch.tensor([True] * 3 + [False] * 3)})
    batches = [torch.randn(32, 4)]
    test = torch.randn(50, 4)
    with torch.no_grad():
        assert not torch.allclose(pruned(test), dense(test), atol=1e-3)
    errors = refit_consumers(pruned, dense, batches, ridge=0.0)
    with torch.no_grad():
        assert torch.allclose(pruned(test), dense(test), atol=1e-4)
    assert errors["2"] < 1e-6  # zero but for float32 rounding of the moments


def test_layers_are_refit_in_order_each_on_the_inputs_the_earlier_refits_give():
    # two bottleneck blocks, each with its hidden neurons pruned and its output whole
    dense = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 12), nn.ReLU(),
                          nn.Linear(12, 3)).eval()  # fmt: skip
    pruned = pruned_copy(dense, {0: torch.arange(12) % 3 > 0, 2: torch.arange(12) % 2 == 0})
    batches = [torch.randn(64, 6) for _ in range(2)]
    assert narrowed_linears(pruned, dense) == ["2", "6"]
    refit_consumers(pruned, dense, batches, ridge=0.0)
    # the last layer's fit is the least-squares fit on inputs computed with the first refit in place
    x = torch.cat([pruned[:6](b) for b in batches]).double().detach()
    y = torch.cat([dense(b) for b in batches]).double().detach()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    reference = torch.linalg.lstsq(design, y, driver="gelsd").solution
    assert torch.allclose(pruned[6].weight.double(), reference[:-1].T, atol=1e-5)


def test_padding_positions_are_left_out_of_the_fit():
    class Tokens(nn.Module):  # a model called with keyword tensors, as a tokenizer's output is
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, input_ids, attention_mask):
            return self.body(input_ids)

    dense = Tokens().eval()
    pruned = copy.deepcopy(dense)
    pruned.body = pruned_copy(dense.body, {0: torch.tensor([True, False] * 6)})
    ids, mask = torch.randn(2, 5, 6), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    garbage = ids.clone()
    garbage[mask == 0] = 1e6  # padding that would dominate the fit if it were counted
    refit_consumers(pruned, dense, [{"input_ids": garbage, "attention_mask": mask}], ridge=0.0)
    clean = copy.deepcopy(dense)
    clean.body = pruned_copy(dense.body, {0: torch.tensor([True, False] * 6)})
    refit_consumers(clean, dense, [{"input_ids": ids[mask.bool()].unsqueeze(0),
                                    "attention_mask": torch.ones(1, int(mask.sum()))}], ridge=0.0)  # fmt: skip
    assert torch.allclose(pruned.body[2].weight, clean.body[2].weight, atol=1e-4)


def test_a_transformer_compacted_by_a_method_comes_closer_to_the_dense_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37)  # fmt: skip
    dense = transformers.BertModel(config).eval()
    batches = [{"input_ids": torch.randint(0, 100, (8, 9)), "attention_mask": torch.ones(8, 9, dtype=torch.long)}
               for _ in range(4)]  # fmt: skip
    from equiprune.methods import build_method

    method = build_method("magnitude-l1", settings={"budget": 0.5})
    pruned = method.finish(method.prepare(copy.deepcopy(dense))).model
    names = narrowed_linears(pruned, dense)
    parts = ("attention.output.dense", "output.dense")
    assert names == [f"encoder.layer.{i}.{part}" for i in range(2) for part in parts]

    def error(model):
        with torch.no_grad():
            return sum(float(((model(**b)[0] - dense(**b)[0]) ** 2).sum()) for b in batches)

    before = error(pruned)
    refit_consumers(pruned, dense, batches)
    assert error(pruned) < 0.5 * before


def test_bad_calibration_is_named():
    dense = mlp()
    pruned = pruned_copy(dense, {0: torch.tensor([True, False] * 6)})
    with pytest.raises(PruningError, match="needs calibration batches"):
        refit_consumers(pruned, dense, [])
    with pytest.raises(PruningError, match=r"refit of 2: 5 calibration positions for 6 inputs and a bias"):
        refit_consumers(pruned, dense, [torch.randn(5, 6)])
    with pytest.raises(PruningError, match="ridge must be >= 0"):
        refit_consumers(pruned, dense, [torch.randn(4, 6)], ridge=-1.0)

    class Skips(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body[0](x)  # never reaches the layer that lost inputs

    with pytest.raises(PruningError, match="never reached it"):
        refit_consumers(Skips(pruned), Skips(dense), [torch.randn(4, 6)])

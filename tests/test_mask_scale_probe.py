"""tools/mask_scale_probe.py: one epoch of a lottery round's ticket under the masks' scale."""

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from equiprune.config import parse_config
from equiprune.data import Batches, Split
from equiprune.experiments import loop

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    return runpy.run_path(str(ROOT / "tools" / "mask_scale_probe.py"))


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))


def test_masks_fixed_at_c_train_the_weights_as_weights_scaled_by_c_at_c_squared_the_step(tool):
    """SGD with momentum on θ, computing with c·θ, is SGD on w = c·θ with the step c²·lr."""
    g = torch.Generator().manual_seed(0)
    batches = Batches(Split(torch.randn(96, 20, generator=g), torch.randint(0, 4, (96,), generator=g)), 16, True, 0)
    masks = {"1": torch.rand(16, 20, generator=g) > 0.5, "3": torch.rand(4, 16, generator=g) > 0.3}
    c, lr = 0.5, 0.2
    runs = []
    for multiplier, init, step in ((c, 1.0, lr), (1.0, c, lr * c * c)):
        net = _net(1)
        with torch.no_grad():
            for name, m in masks.items():
                net.get_submodule(name).weight.mul_(m * init)
        loss, _ = tool["masked_epoch"](net, masks, multiplier, step, 0.9, batches, 0, 12)
        runs.append((loss, {n: net.get_submodule(n).weight.detach() * m * multiplier for n, m in masks.items()}))
    (loss_a, w_a), (loss_b, w_b) = runs
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in masks:
        torch.testing.assert_close(w_a[name], w_b[name], rtol=1e-4, atol=1e-6)
        assert float(w_a[name][~masks[name]].abs().sum()) == 0.0  # the pruned stay pruned
    untouched = _net(1).get_submodule("1").weight * masks["1"] * c
    assert not torch.allclose(w_a["1"], untouched)  # it trained


def test_the_plain_treatment_is_the_imp_searchs_first_epoch_of_the_round(tool, tmp_path, data_root):
    cfg = parse_config(f"""
seed = 0
threads = 1
[data]
root = "{data_root}"
train_subset = 1200
test_subset = 200
[model]
hidden = [32, 16]
[train]
epochs = 4
optimizer = "sgd"
lr = 0.05
momentum = 0.9
schedule = "cosine"
[method]
name = "imp"
budget = 0.1
rounds = 2
""")
    loop.run(cfg, tmp_path / "imp", quiet=True)
    rows = (tmp_path / "imp" / "metrics.jsonl").read_text().splitlines()
    epochs = tool["probe"](tmp_path / "imp", 2, 0.5)
    assert [e.treatment for e in epochs] == ["plain", "masks", "signal", "step"]
    round_two = json.loads(rows[2])  # epoch 3: the first of round 2 (epochs 3 and 4)
    assert epochs[0].loss == pytest.approx(round_two["loss"], rel=1e-6)
    assert epochs[0].accuracy == pytest.approx(round_two["train_accuracy"], rel=1e-6)
    with pytest.raises(SystemExit, match="--round"):
        tool["probe"](tmp_path / "imp", 1, 0.5)

"""train.precision: autocast in bf16 or fp16 around forward and loss, fp16's gradient scaler (its
skipped steps and the gradients the optimizer does not own), the methods' state kept in fp32."""

import pytest
import torch
import torch.nn as nn

from equiprune.config import parse_config
from equiprune.errors import ConfigError
from equiprune.experiments.loop import run
from equiprune.experiments.precision import Precision, autocast_dtype

from .helpers import mlp_config

CPU = torch.device("cpu")


def test_settings_resolve_to_the_autocast_dtype():
    assert autocast_dtype(None, CPU) is None and autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype("fp16", CPU) == torch.float16
    assert autocast_dtype("mixed", CPU) == torch.bfloat16  # every CPU autocast has bf16
    with pytest.raises(ConfigError, match="expected one of"):
        autocast_dtype("fp8", CPU)
    with pytest.raises(ConfigError, match=r"train.precision: got 'fp8', expected one of \['fp32', 'bf16'"):
        parse_config('[train]\nprecision = "fp8"\n')
    # the default written out is the same run
    assert parse_config('[train]\nprecision = "fp32"\n').identity() == parse_config("").identity()
    assert parse_config('[train]\nprecision = "bf16"\n').identity() != parse_config("").identity()


def test_autocast_lowers_the_matmuls_and_leaves_the_loss_in_fp32():
    layer = nn.Linear(4, 3)
    for setting, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), (None, torch.float32)):
        with Precision(setting, CPU).autocast():
            out = layer(torch.randn(2, 4))
            loss = nn.functional.cross_entropy(out, torch.tensor([0, 1]))
        assert out.dtype == dtype and loss.dtype == torch.float32
    assert layer.weight.dtype == torch.float32


def test_fp16_scaler_unscales_every_gradient_and_skips_an_overflowing_step():
    torch.manual_seed(0)
    owned, gate = nn.Parameter(torch.randn(3)), nn.Parameter(torch.ones(3))  # gate: updated by a method
    model = nn.Module()
    model.owned, model.gate = owned, gate
    opt = torch.optim.SGD([owned], lr=0.1)
    precision = Precision("fp16", CPU)
    x = torch.tensor([1.0, 2.0, 3.0])
    precision.backward((owned * gate * x).sum())
    before = owned.detach().clone()
    assert precision.step(opt, model)
    assert torch.allclose(gate.grad, before * x) and torch.allclose(owned.detach(), before - 0.1 * x)  # true grads
    opt.zero_grad()
    gate.grad = None
    kept, scale = owned.detach().clone(), precision.scaler.get_scale()
    precision.backward((owned * torch.tensor(3e38)).sum())  # overflows once scaled
    assert not precision.step(opt, model)
    assert torch.equal(owned.detach(), kept) and precision.scaler.get_scale() < scale
    state = precision.state_dict()
    again = Precision("fp16", CPU)
    again.load_state_dict(state)
    assert again.scaler.get_scale() == precision.scaler.get_scale()


GAME = 'name = "game"\nbeta = 0.05\ngamma = 0.3\ncost_ramp = 0.5'


def game(data_root, precision: str, body: str = GAME) -> str:
    train = f'precision = "{precision}"\nlr = 0.005'
    return mlp_config(data_root, body, train_subset=1500, epochs=3, finetune=1, train=train)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_game_trains_under_autocast_with_its_participations_in_fp32(data_root, tmp_path, precision):
    out = tmp_path / precision
    results = run(parse_config(game(data_root, precision)), out, quiet=True)
    fp32 = run(parse_config(game(data_root, "fp32")), tmp_path / "fp32", quiet=True)
    assert results["environment"]["precision"] == precision
    assert results["test_accuracy"] > 0.7 and abs(results["test_accuracy"] - fp32["test_accuracy"]) < 0.05
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (checkpoint["grad_scaler"] is not None) == (precision == "fp16")
    trained = torch.load(out / "trained_state.pt")
    assert all(t.dtype == torch.float32 for t in trained.values() if t.is_floating_point())
    assert results["kept"] != fp32["kept"] or results["test_accuracy"] != fp32["test_accuracy"]  # autocast acted


def test_fp16_is_refused_to_a_method_reading_per_example_gradients(data_root, tmp_path):
    body = 'name = "game"\nupdate = "newton"'
    with pytest.raises(ConfigError, match="per-example gradients game reads; use 'bf16'"):
        run(parse_config(game(data_root, "fp16", body)), tmp_path / "x", quiet=True)
    assert run(parse_config(game(data_root, "bf16", body)), tmp_path / "y", quiet=True)["test_accuracy"] > 0.7

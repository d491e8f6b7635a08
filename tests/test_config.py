"""Configs are validated once, and every error names the field, the value and what was expected."""

import pytest
import torch

import equiprune
from equiprune.cli import _config_path, main
from equiprune.config import RunConfig, dump_toml, find_config, load_config, parse_config, shipped_config
from equiprune.errors import ConfigError
from equiprune.experiments.sweep import load_sweep

GOOD = """
seed = 1
[data]
dataset = "fashion-mnist"
batch_size = 64
[model]
hidden = [32, 16]
[train]
epochs = 4
finetune_epochs = 1
[method]
name = "game"
preset = "l1-l2-combined"
lr_s = 0.01
"""


def test_good_config_resolves_preset_and_overrides():
    cfg = parse_config(GOOD)
    s = cfg.method.build().settings
    assert (s.beta, s.gamma, s.lr_s) == (0.05, 0.05, 0.01)
    assert cfg.data.dataset == "fashion-mnist" and cfg.train.prune_epochs == 3


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = parse_config(GOOD)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert "preset" not in again.to_dict()["method"]  # resolved: the preset's values are written out


@pytest.mark.parametrize(
    "patch,needle",
    [
        (("[train]", "[train]\nepohcs = 3"), r"train: unknown key 'epohcs' \(did you mean 'epochs'\?\)"),
        (("lr_s = 0.01", "lr_s = 0.01\nbeta = -0.1"), r"method.beta: must be a finite number >= 0, got -0.1"),
        (("lr_s = 0.01", "lr_s = 0.01\nepsilon = 1.5"), r"method.epsilon: must lie in \[0, 1\]"),
        (('preset = "l1-l2-combined"', 'preset = "l2-only"'), r"method.preset: unknown preset 'l2-only'"),
        (('dataset = "fashion-mnist"', 'dataset = "svhn"'), r"data.dataset: unknown dataset 'svhn'"),
        (("batch_size = 64", 'batch_size = "64"'), r"data.batch_size: expected an integer, got str"),
        (("hidden = [32, 16]", "hidden = [32, 0]"), r"model.hidden"),
        (("finetune_epochs = 1", "finetune_epochs = 4"), r"train.finetune_epochs: must be in \[0, epochs\)"),
        (
            ("finetune_epochs = 1", "finetune_epochs = 1\nfinetune_weight_decay = -0.1"),
            r"train.finetune_weight_decay: must be >= 0, got -0.1",
        ),
        (('name = "game"', 'name = "gaem"'), r"method.name: unknown method 'gaem'"),
        (("lr_s = 0.01", "lr_s = 0.01\nbenefit_sign = 'down'"), r"method.benefit_sign: got 'down'"),
        (("lr_s = 0.01", "lr_s = 0.01\nwarmup = 2"), r"method: unknown key 'warmup'"),
        (("seed = 1", 'seed = 1\ndevice = "tpu"'), r"device: got 'tpu'"),
        (("seed = 1", "seed = 1\nthreads = 0"), r"threads: must be a whole number >= 1"),
        (("seed = 1", 'seed = 1\nthreads = "2"'), r"threads: expected an integer, got str"),
    ],
)
def test_bad_values_are_rejected_by_name(patch, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config(GOOD.replace(*patch), "bad.toml")


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        parse_config("seed = = 1", "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_defaults_are_the_papers_setup():
    from equiprune.experiments.setup import build_model

    cfg = RunConfig()
    widths = [m.out_features for m in build_model(cfg) if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 10] and cfg.data.batch_size == 128 and cfg.train.epochs == 20


@pytest.mark.parametrize("finetune_decay,expected", [("", 0.01), ("finetune_weight_decay = 0.0", 0.0)])
def test_fine_tuning_takes_its_own_weight_decay(tmp_path, finetune_decay, expected):
    from equiprune.experiments.loop import Trainer

    cfg = parse_config(GOOD.replace("[train]", f"[train]\nweight_decay = 0.01\n{finetune_decay}"))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.batches = range(5)  # the optimizers only need the number of steps per epoch
    params = [torch.nn.Parameter(torch.zeros(3))]
    trainer._new_phase_optimizer(params, "prune")
    assert trainer.opt.param_groups[0]["weight_decay"] == 0.01
    trainer._new_phase_optimizer(params, "finetune")
    assert trainer.opt.param_groups[0]["weight_decay"] == expected


@pytest.mark.parametrize(
    ("parts", "load"),
    [
        (("sweeps", "mnist_mlp_neurons.toml"), "sweep"),
        (("sweeps", "fashion_mlp_neurons.toml"), "sweep"),
        (("game_mnist", "equiprune-best.toml"), "run"),
    ],
)
def test_shipped_configs_are_found_wherever_the_package_lies(parts, load):
    path = shipped_config(*parts)
    assert path.is_file() and path.parts[-len(parts) - 1 :] == ("configs", *parts)
    loaded = load_sweep(path) if load == "sweep" else load_config(path)
    assert loaded.runs if load == "sweep" else loaded.method.name == "game"


def test_a_config_argument_is_a_file_here_else_a_shipped_configuration_of_that_name(tmp_path, monkeypatch, capsys):
    own = tmp_path / "mnist_mlp_neurons.toml"  # a user's own file wins over the shipped one of that name
    own.write_text("")
    assert find_config(own, "sweeps", "sweep file") == own
    assert capsys.readouterr().err == ""
    monkeypatch.chdir(tmp_path / "..")  # where no configs/ directory lies, as after `pip install`
    shipped = shipped_config("sweeps", "mnist_mlp_neurons.toml")
    for arg in ("mnist_mlp_neurons", "mnist_mlp_neurons.toml", "configs/sweeps/mnist_mlp_neurons.toml"):
        assert find_config(arg, "sweeps", "sweep file") == shipped
        assert capsys.readouterr().err == ""  # the library says nothing; the command line does
        assert _config_path(arg, "sweeps", "sweep file") == shipped
        assert f"using the sweep file shipped with equiprune: {shipped}" in capsys.readouterr().err
    assert _config_path(str(own), "sweeps", "sweep file") == own
    assert capsys.readouterr().err == ""
    assert find_config("equiprune-best", "game_mnist", "configuration") == shipped_config(
        "game_mnist", "equiprune-best.toml"
    )
    with pytest.raises(ConfigError, match=r"mnist_mlp_neuron does not exist, .* no sweep file .*: .*mnist_mlp_neurons"):
        find_config("mnist_mlp_neuron", "sweeps", "sweep file")
    assert main(["sweep", "mnist_mlp_neuron", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "equiprune: error: mnist_mlp_neuron does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_says_its_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"equiprune {equiprune.__version__}" != "equiprune 0+unknown"

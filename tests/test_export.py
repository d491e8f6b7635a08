"""Deployable forms of a compacted model: BatchNorm folded, torch.export and ONNX files that load
without equiprune and compute the same outputs; the before/after speed report of a run."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from equiprune.cli import main
from equiprune.core.compact import compact, keep_masks
from equiprune.core.players import attach
from equiprune.errors import EquipruneError
from equiprune.experiments.export import deployable, fold_batchnorm, save_exported, save_onnx, speed_report
from equiprune.models import create_model

from .helpers import mlp_config
from .test_tracing import _random_participations, _randomise_batchnorm


def _pruned_resnet():
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25)
    _randomise_batchnorm(model)
    gated = attach(model)
    _random_participations(gated)
    return model.eval(), compact(gated, keep_masks(gated, 0.01)).model.eval()


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_folding_batchnorm_keeps_the_outputs_and_removes_every_batchnorm(name):
    model = create_model(name, width=0.25).double()
    _randomise_batchnorm(model)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-12)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original is left alone"


def test_exported_program_loads_without_the_model_code_at_any_batch_size(tmp_path):
    _, pruned = _pruned_resnet()
    path = save_exported(fold_batchnorm(pruned), (3, 32, 32), tmp_path / "m.pt2")
    loaded = torch.export.load(path).module()
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(loaded(x), pruned(x), rtol=1e-4, atol=1e-5)


def test_onnx_model_matches_in_onnxruntime(tmp_path):
    import onnxruntime as ort  # the onnx extra, part of dev

    _, pruned = _pruned_resnet()
    path = save_onnx(fold_batchnorm(pruned), (3, 32, 32), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, pruned(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_speed_report_counts_what_compaction_removed():
    dense, pruned = _pruned_resnet()
    report = speed_report(dense, pruned, (3, 32, 32), batch_sizes=(1, 4), repeats=2)
    assert report["params_after"] < report["params_before"] and 0 < report["flop_ratio"] < 1
    assert [r["batch_size"] for r in report["latency"]] == [1, 4]
    assert all(r["dense_ms"] > 0 and r["pruned_ms"] > 0 for r in report["latency"])
    assert all(len(r["dense_rounds"]) == 5 and r["dense_ms"] == sorted(r["dense_rounds"])[2] for r in report["latency"])
    assert {"cores", "threads", "load_at_start", "torch"} <= set(report["machine"])
    assert report["trusted"] == (not report["untrusted_because"])


def _row(batch, dense, pruned):
    return {"batch_size": batch, "dense_rounds": dense, "pruned_rounds": pruned}


def test_timings_are_distrusted_for_a_busy_machine_a_wide_spread_or_a_time_slice():
    from equiprune.experiments.export import speed_markdown
    from equiprune.experiments.timing import distrust

    idle = {"cores": 2, "load_at_start": 0.1}
    steady = [_row(32, [2.6, 2.62, 2.64], [0.26, 0.26, 0.27])]
    assert distrust(steady, 0.1, idle) == []
    assert "busy at the start (load 1.80 on 2 cores)" in distrust(steady, 0.1, {"cores": 2, "load_at_start": 1.8})[0]
    wide = distrust([_row(1, [0.7, 1.4, 0.71], [0.18, 0.18, 0.18])], 0.1, idle)
    assert wide == ["batch 1: the dense model's rounds spread by 99%"]
    # the 23.99 ms for a dense and a 75x smaller MLP alike: the scheduler, not the models
    slice_ = distrust([_row(256, [23.99] * 3, [23.99] * 3)], 1 / 75, idle)
    assert "both models took 23.99 ms" in slice_[0]
    report = {"params_before": 10, "params_after": 1, "macs_before": 75, "macs_after": 1, "flop_ratio": 1 / 75,
              "threads": 2, "machine": {**idle, "threads": 2}, "trusted": False, "untrusted_because": slice_,
              "latency": [{"batch_size": 256, "dense_ms": 23.99, "pruned_ms": 23.99, "speedup": 1.0,
                           "dense_rounds": [23.99] * 3, "pruned_rounds": [23.99] * 3}]}  # fmt: skip
    text = speed_markdown(report)
    assert "cannot be trusted" in text and "speed-up ×" not in text and "– (not trusted)" in text


@pytest.mark.filterwarnings("ignore:No complete tensor found in the group")  # torch 2.13, loading channels-last weights
def test_export_command_writes_deployable_files_and_the_speed_report(tmp_path, data_root, capsys):
    config = tmp_path / "lenet.toml"
    config.write_text(f"""
seed = 0
device = "cpu"
[data]
dataset = "fashion-mnist"
root = "{data_root}"
train_subset = 1000
test_subset = 500
[model]
name = "lenet5"
[train]
epochs = 2
finetune_epochs = 1
[method]
name = "magnitude-l1"
budget = 0.5
""")
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "--out", str(run_dir), "--quiet"]) == 0
    assert main(["export", str(run_dir), "--onnx", "--batch-sizes", "1,8", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "MACs per example" in out and "latency, batch 8" in out
    report = json.loads((run_dir / "speed.json").read_text())
    assert report["flop_ratio"] < 1 and (run_dir / "speed.md").is_file()
    loaded = torch.export.load(run_dir / "export" / "model.pt2").module()
    small = torch.load(run_dir / "model.pt", weights_only=False).eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), small(x), rtol=1e-4, atol=1e-5)
    assert (run_dir / "export" / "model.onnx").stat().st_size > 0
    assert main(["export", str(run_dir), "--channels-last", "--batch-sizes", "2", "--repeats", "1"]) == 0
    assert json.loads((run_dir / "speed.json").read_text())["memory_format"] == "channels_last"
    assert "weights stored channels-last in both" in (run_dir / "speed.md").read_text()
    torch.testing.assert_close(torch.export.load(run_dir / "export" / "model.pt2").module()(x), small(x), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    for flag, bad in (("--batch-sizes", "0"), ("--batch-sizes", "1,x"), ("--batch-sizes", ","), ("--repeats", "0")):
        assert main(["export", str(run_dir), flag, bad]) == 2
        assert f"equiprune: error: {flag}" in capsys.readouterr().err


def test_sparsify_stores_only_the_sparse_linear_layers_as_csr_and_computes_the_same():
    from equiprune.experiments.sparse_export import SparseLinear, sparsify

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight.mul_(torch.rand_like(model[1].weight) < 0.2)  # about 80% zeros; layer 3 stays dense
    sparse, layers = sparsify(model)
    assert layers == ["1"] and isinstance(sparse[1], SparseLinear) and isinstance(sparse[3], torch.nn.Linear)
    assert sparse[1].weight.layout == torch.sparse_csr
    assert sparse[1].weight.values().numel() == int((model[1].weight != 0).sum())
    x = torch.randn(5, 12)
    torch.testing.assert_close(sparse(x), model(x))
    tokens = torch.randn(2, 4, 12)  # a Linear over the last dimension of a token sequence
    torch.testing.assert_close(sparse[1](tokens), model[1](tokens))


def test_export_of_an_unstructured_result_adds_the_csr_form_with_its_size_and_latency(tmp_path, data_root, capsys):
    config = tmp_path / "mlp.toml"
    method = 'name = "weight-magnitude"\nbudget = 0.05'
    config.write_text(mlp_config(data_root, method, hidden="64, 32", epochs=2, train_subset=1000, test_subset=300))
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "--out", str(run_dir), "--quiet"]) == 0
    assert main(["export", str(run_dir), "--batch-sizes", "1,32", "--repeats", "2"]) == 0
    assert "## Sparse weights (CSR)" in capsys.readouterr().out
    sparse = json.loads((run_dir / "speed.json").read_text())["sparse"]
    assert sparse["bytes_sparse"] < sparse["bytes_dense"] and [r["batch_size"] for r in sparse["latency"]] == [1, 32]
    loaded = torch.load(run_dir / "export" / "model_sparse.pt", weights_only=False)
    small = torch.load(run_dir / "model.pt", weights_only=False).eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), small(x), rtol=1e-4, atol=1e-5)
    assert "## Sparse weights" in (run_dir / "speed.md").read_text()


def test_export_of_a_missing_or_unfinished_directory_says_which(tmp_path, capsys):
    assert main(["export", str(tmp_path / "typo")]) == 2
    assert "typo does not exist; give the directory of a finished run" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()  # nothing made where nothing was
    assert main(["export", str(tmp_path)]) == 2
    assert "is not a run directory (no config.toml)" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()  # a sweep's directory
    assert main(["export", str(tmp_path)]) == 2
    assert "a sweep keeps its runs under its runs/ directory" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text("seed = 0\n")  # a run that has not finished
    assert main(["export", str(tmp_path)]) == 2
    assert (
        f"holds no finished run (no results.json): finish it first (`equiprune run CONFIG --out {tmp_path} --resume`)"
        in capsys.readouterr().err
    )


def test_channels_last_stores_convolution_weights_so_computes_the_same_and_refuses_a_model_without_them():
    dense, pruned = _pruned_resnet()
    fast = deployable(pruned, channels_last=True)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(3, 3, 32, 32)  # an ordinary NCHW batch: the weights decide the layout
    with torch.no_grad():
        torch.testing.assert_close(fast(x), fold_batchnorm(pruned)(x), rtol=1e-4, atol=1e-5)
    assert speed_report(dense, pruned, (3, 32, 32), batch_sizes=(1,), repeats=1, rounds=1,
                        channels_last=True)["memory_format"] == "channels_last"  # fmt: skip
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(EquipruneError, match="--channels-last: the model has no convolutions"):
        deployable(mlp, channels_last=True)
    assert speed_report(mlp, mlp, (1, 2, 2), batch_sizes=(1,), repeats=1, rounds=1)["memory_format"] == "contiguous"

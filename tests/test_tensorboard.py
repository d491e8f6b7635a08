"""TensorBoard event files: every metric as a scalar per epoch, participations as histograms, the
setting outside the run's identity, and a clear error when tensorboard is missing."""

import json
import sys

import pytest

from equiprune.cli import main
from equiprune.config import parse_config
from equiprune.errors import ConfigError

from .helpers import small_config


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_a_run_writes_its_metrics_and_participations_for_tensorboard(tmp_path, data_root):
    config = tmp_path / "run.toml"
    config.write_text(small_config(data_root, epochs=3, finetune=1, train_subset=1000))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--tensorboard"]) == 0
    acc = _events(out / "tensorboard")
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("test_accuracy")] == [1, 2, 3]
    assert "prune/alive_fraction" in tags["scalars"] and "finetune/train_accuracy" in tags["scalars"]
    histograms = [t for t in tags["histograms"] if t.startswith("participation/")]
    assert histograms and [e.step for e in acc.Histograms(histograms[0])] == [1, 2]  # the pruning epochs
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("test_accuracy")] == pytest.approx([m["test_accuracy"] for m in metrics])


def test_logging_is_not_part_of_a_runs_identity():
    plain = parse_config("[method]\nname = 'dense'\n")
    logged = parse_config("[method]\nname = 'dense'\n[log]\ntensorboard = true\n")
    assert logged.log.tensorboard and plain.identity() == logged.identity()


def test_a_missing_tensorboard_is_named_with_how_to_install_it(monkeypatch):
    from equiprune.experiments import tensorboard_log

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    expected = r"log.tensorboard needs the tensorboard extra \(tensorboard is not installed\): "
    expected += r"pip install 'equiprune\[tensorboard\]'"
    with pytest.raises(ConfigError, match=expected):
        tensorboard_log.summary_writer_class()

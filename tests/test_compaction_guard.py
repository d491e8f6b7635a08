"""The compaction guard: a run whose compacted model scores well below its gated model says so."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from equiprune.config import parse_config
from equiprune.errors import ConfigError
from equiprune.experiments.hooks import CompactionGuard
from equiprune.experiments.loop import run
from equiprune.experiments.sweep_report import compaction_lines
from equiprune.methods.equilibrium import EquilibriumPruner

from .helpers import small_config


def _trainer(plays: bool, tolerance: float = 0.01):
    return SimpleNamespace(method=SimpleNamespace(plays_its_decision=plays), rank=0,
                           cfg=SimpleNamespace(train=SimpleNamespace(compaction_tolerance=tolerance)))  # fmt: skip


def test_the_guard_warns_past_the_tolerance_and_only_there(caplog):
    st = SimpleNamespace(gated_test_accuracy=0.9619, compacted_test_accuracy=0.0974, run_warnings=[])
    with caplog.at_level(logging.WARNING, logger="equiprune"):
        CompactionGuard().on_compacted(_trainer(True), st)
    (warning,) = st.run_warnings
    assert warning.startswith("compaction cost 86.45 points") and "96.19% -> compacted 9.74%" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]
    within = SimpleNamespace(gated_test_accuracy=0.95, compacted_test_accuracy=0.941, run_warnings=[])
    CompactionGuard().on_compacted(_trainer(True), within)  # 0.9 points: inside 1
    one_shot = SimpleNamespace(gated_test_accuracy=0.98, compacted_test_accuracy=0.2, run_warnings=[])
    CompactionGuard().on_compacted(_trainer(False), one_shot)  # selection at finish: the drop is the pruning
    assert within.run_warnings == [] and one_shot.run_warnings == []


def test_a_run_whose_compaction_loses_accuracy_says_so_in_its_results(tmp_path, data_root, monkeypatch, caplog):
    real = EquilibriumPruner.finish

    def wrecking_finish(self, trained, calibration=None):  # a decision that cuts what the network uses
        result = real(self, trained, calibration)
        with torch.no_grad():
            for p in result.model.parameters():
                p.zero_()
        return result

    monkeypatch.setattr(EquilibriumPruner, "finish", wrecking_finish)
    cfg = parse_config(small_config(data_root, epochs=2, finetune=1, train_subset=2000))
    with caplog.at_level(logging.WARNING, logger="equiprune"):
        results = run(cfg, tmp_path / "r", quiet=True)
    assert results["compaction_flagged"] and results["test_accuracy_after_compaction"] < 0.2
    assert results["test_accuracy_before_compaction"] > 0.5
    assert any(w.startswith("compaction cost") for w in results["warnings"])
    assert any(r.getMessage().startswith(f"{tmp_path / 'r'}: compaction cost") for r in caplog.records)
    stored = json.loads((tmp_path / "r" / "results.json").read_text())
    assert stored["compaction_flagged"] is True
    lines = compaction_lines([{"run_id": "game/x/seed0", "status": "finished", "results": stored}])
    assert lines[0] == "## Runs whose compaction cost accuracy" and lines[-2].startswith("- `game/x/seed0`: ")


def test_an_honest_compaction_is_not_flagged(tmp_path, data_root):
    cfg = parse_config(small_config(data_root, epochs=2, finetune=1, train_subset=2000))
    results = run(cfg, tmp_path / "r", quiet=True)
    assert not results["compaction_flagged"]
    assert abs(results["test_accuracy_after_compaction"] - results["test_accuracy_before_compaction"]) <= 0.01


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_tolerance_out_of_range_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="train.compaction_tolerance: a fraction of test accuracy in"):
        parse_config(f"[train]\ncompaction_tolerance = {value}\n")

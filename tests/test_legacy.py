"""Run directories and sweep stores written by equiprune 0.1 (tests/fixtures/legacy-v0.1-sweep, made by
that version before the package was reorganised) still load, report and resume under today's names."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from equiprune.cli import main
from equiprune.experiments.results import SCHEMA_VERSION, RunResults
from equiprune.experiments.rundir import RunDir
from equiprune.experiments.store import ResultStore
from equiprune.experiments.sweep import parse_sweep, run_sweep

LEGACY = Path(__file__).parent / "fixtures" / "legacy-v0.1-sweep"


@pytest.fixture
def legacy(tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(LEGACY, copy)
    return copy


def test_old_results_read_under_the_current_names(legacy):
    raw = json.loads((legacy / "runs/taylor/budget=0.25/seed0/results.json").read_text())
    assert "neurons_kept" in raw and "kept_by_kind" not in raw  # truly the old layout
    results = RunDir(legacy / "runs/taylor/budget=0.25/seed0").read_results()
    assert results["kept"] == raw["neurons_kept"] and results["total"] == raw["neurons_total"]
    assert results["kept_fraction"] == raw["neurons_kept_fraction"] == 0.25
    assert results["kept_by_kind"] == {"neuron": {"kept": 3, "total": 12}}
    assert results["schema_version"] == 1 and "neurons_kept" not in results


def test_new_results_round_trip_and_carry_the_schema_version():
    fields = dict(method="taylor", seed=0, dataset="mnist", epochs=2, test_accuracy=0.9, test_loss=0.3,
                  test_accuracy_before_compaction=0.91, kept_fraction=0.5, players="filter+neuron",
                  kept={"a": 1, "b": 2}, total={"a": 2, "b": 4},
                  kept_by_kind={"filter": {"kept": 1, "total": 2}, "neuron": {"kept": 2, "total": 4}},
                  params_before=10, params_after=5, macs_before=10, macs_after=5, seconds=1.0)  # fmt: skip
    written = RunResults(**fields).to_dict()
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert RunResults.from_dict(json.loads(json.dumps(written))).to_dict() == written


def test_old_compacted_models_load_with_torch_alone(legacy):
    model = torch.load(legacy / "runs/taylor/budget=0.25/seed0/model.pt", weights_only=False)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (
        sum(p.numel() for p in model.parameters())
        == RunDir(legacy / "runs/taylor/budget=0.25/seed0").read_results()["params_after"]
    )


def test_an_old_store_reports(legacy, capsys):
    assert main(["report", str(legacy)]) == 0
    frontier = {row["method"]: row for row in json.loads((legacy / "frontier.json").read_text())}
    assert frontier["taylor"]["kept_fraction_mean"] == 0.25 and frontier["wm"]["kept_fraction_mean"] == 0.25
    assert "| taylor | 14.00 ± 0.00 | 25.00 |" in (legacy / "report.md").read_text()


def test_an_old_store_is_complete_for_the_same_sweep_today(legacy):
    """Its runs are the planned runs, though 0.1 hashed configurations another way: nothing reruns."""
    with ResultStore(legacy / "results.sqlite") as store:
        stored = {r["run_id"] for r in store.rows()}
    plan = json.loads((legacy / "sweep.json").read_text())
    sweep = _legacy_sweep()
    assert {r.run_id for r in sweep.runs} == stored == set(plan["runs"])
    assert run_sweep(sweep, legacy, quiet=True) == {"ran": 0, "resumed": 0, "skipped": 4, "failed": 0}


def _legacy_sweep():
    """The sweep file that wrote the fixture (its data root as in the fixture's run configurations)."""
    return parse_sweep({
        "name": "legacy", "seeds": [0], "budgets": [0.25],
        "base": {"data": {"dataset": "mnist", "root": "../shared/data", "train_subset": 600, "test_subset": 200},
                 "model": {"hidden": [8, 4]}, "train": {"epochs": 2, "finetune_epochs": 1, "lr": 0.003}},
        "methods": [{"name": "dense", "train": {"finetune_epochs": 0}}, {"name": "taylor"},
                    {"name": "weight-magnitude", "label": "wm", "players": "weight"},
                    {"name": "game", "points": [{"gamma": 0.3}]}],
    })  # fmt: skip

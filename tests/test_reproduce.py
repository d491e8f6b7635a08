"""`reproduce` runs every configuration over seeds, adds the dense reference, and summarises."""

import json

import pytest

from equiprune.cli import main
from equiprune.errors import ConfigError
from equiprune.experiments import reproduce as rep


def test_reproduce_writes_summary_beside_the_papers_figures(tiny_suite, tmp_path):
    summary = rep.reproduce("game-mnist", tmp_path, seeds=2, quiet=True)
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["config"] for r in rows] == ["l1-l2-combined", "equiprune-best", "dense-kept-widths"]
    keys = {"config", "alpha", "beta", "gamma", "eta", "test_accuracy_mean", "test_accuracy_std",
            "kept_fraction_mean"}  # fmt: skip
    assert all(keys <= set(r) for r in rows)
    paper = rows[0]
    assert (paper["beta"], paper["gamma"], paper["paper_test_accuracy"]) == (0.05, 0.05, 0.9154)
    assert paper["seeds"] == [0, 1] and 0 <= paper["test_accuracy_std"] < 0.2
    # The dense reference copies, seed by seed, the widths the best configuration kept.
    for seed in (0, 1):
        best = json.loads((tmp_path / "equiprune-best" / f"seed{seed}" / "results.json").read_text())
        dense = json.loads((tmp_path / "dense-kept-widths" / f"seed{seed}" / "results.json").read_text())
        assert list(dense["kept"].values()) == list(best["kept"].values())
    # Each paper row under both prune decisions, taken from the same runs' results.
    runs = [json.loads((tmp_path / "l1-l2-combined" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    decisions = paper["decisions"]
    assert decisions["participation"]["played"] and not decisions["contribution"]["played"]
    assert decisions["participation"]["test_accuracy_mean"] == pytest.approx(paper["test_accuracy_mean"])
    other = [r["other_decisions"]["contribution"]["test_accuracy_after_compaction"] for r in runs]
    assert decisions["contribution"]["test_accuracy_mean"] == pytest.approx(sum(other) / 2)
    md = (tmp_path / "summary.md").read_text()
    assert "## The paper's rows under both prune decisions" in md and "Rows that hold" in md
    assert md == summary.markdown and "| l1-l2-combined |" in md and "91.54%" in md and "Targets for" in md
    # How each configuration plays is in its row: the paper's ascent, equiprune-best's anchored Newton steps.
    assert "| 0.001 | ascent |" in md and "| 0.01 | newton, anchored |" in md
    assert (paper["update"], paper["anchored"]) == ("ascent", False) and rows[2]["update"] is None

    # Started again, it reuses every finished run instead of training anew.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/results.json")}
    rep.reproduce("game-mnist", tmp_path, seeds=2, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/results.json")} == stamps


def test_reproduce_with_two_jobs_gives_the_same_summary(tiny_suite, tmp_path):
    one = rep.reproduce("game-mnist", tmp_path / "one", seeds=2, quiet=True)
    two = rep.reproduce("game-mnist", tmp_path / "two", seeds=2, quiet=True, jobs=2)
    assert [r["config"] for r in two.rows] == ["l1-l2-combined", "equiprune-best", "dense-kept-widths"]
    # The bundled configurations pin one thread, so every run matches exactly; only the time differs.
    untimed = [[{k: v for k, v in r.items() if not k.startswith("seconds")} for r in s.rows] for s in (one, two)]
    assert untimed[1] == untimed[0] and "test_accuracy_mean" in untimed[0][0]
    with pytest.raises(ConfigError, match="--jobs"):
        rep.reproduce("game-mnist", tmp_path / "three", seeds=1, quiet=True, jobs=0)


def test_reproduce_cli_rejects_unknown_suite_and_bad_seeds(tmp_path, capsys):
    assert main(["reproduce", "game-cifar", "--out", str(tmp_path)]) == 2
    assert "unknown suite 'game-cifar'" in capsys.readouterr().err
    assert main(["reproduce", "game-mnist", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("name", rep.SUITES["game-mnist"].configs)
def test_bundled_configs_are_valid(name):
    cfg = rep.bundled_config("game-mnist", name)
    assert cfg.model.hidden == [512, 256] and cfg.train.epochs == 20 and cfg.data.batch_size == 128


def test_the_dense_reference_trains_with_the_best_configurations_small_network_recipe():
    best = rep.bundled_config("game-mnist", "equiprune-best")
    ref = rep.dense_reference(best, {"1": 10, "3": 5}, seed=2)
    assert ref.model.hidden == [10, 5] and ref.seed == 2 and ref.method.name == "dense"
    assert (ref.train.epochs, ref.train.finetune_epochs) == (best.train.epochs, 0)
    assert (ref.train.optimizer, ref.train.lr) == (best.train.finetune_optimizer, best.train.finetune_lr)


def test_a_row_holds_within_a_point_of_accuracy_and_a_quarter_more_of_size():
    from equiprune.experiments.comparison import reproduces

    assert reproduces(0.9610, 1.0, 0.9664, 1.0)  # 0.54 points below, the same size
    assert not reproduces(0.9550, 1.0, 0.9664, 1.0)  # 1.14 points below
    assert reproduces(0.92, 0.0290, 0.9154, 0.0195)  # 0.0195 × 1.25 + 0.005 = 0.0294
    assert not reproduces(0.95, 0.0300, 0.9154, 0.0195)

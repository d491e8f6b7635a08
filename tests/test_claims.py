"""docs/claims.md is generated from run directories: the verdicts follow the runs' own figures."""

import json
import runpy
from pathlib import Path

import pytest

from equiprune.experiments import reproduce as rep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def claims():
    return runpy.run_path(str(ROOT / "tools" / "claims.py"))


def _limit_dir(path: Path, predicted: float, measured: float) -> Path:
    path.mkdir(parents=True)
    result = {
        "predicted_ratio": predicted,
        "measured_ratio": measured,
        "prediction_error": abs(predicted - measured),
        "source": "configs/limit/fc_mnist.toml",
        "case": {"dataset": "mnist", "model": {"name": "mlp", "hidden": [1000, 600]}, "method": "lomp"},
    }
    (path / "limit.json").write_text(json.dumps(result))
    return path


def test_the_claims_page_reads_its_verdicts_from_the_runs(tiny_suite, tmp_path, claims):
    rep.reproduce("game-mnist", tmp_path / "repro", seeds=1, quiet=True)
    out = tmp_path / "claims.md"
    limit = _limit_dir(tmp_path / "limit", 0.965, 0.955)
    assert claims["main"](["--reproduce", str(tmp_path / "repro"), "--limit", str(limit), "--out", str(out)]) == 0
    text = out.read_text()
    run = json.loads((tmp_path / "repro" / "l1-l2-combined" / "seed0" / "results.json").read_text())
    ours = run["other_decisions"]["contribution"]
    table2 = next(line for line in text.splitlines() if "Table 2, `l1-l2-combined`" in line)
    assert f"{100 * run['test_accuracy']:.2f}% ± 0.00% at {100 * run['kept_fraction']:.2f}% kept" in table2
    assert f"{100 * ours['test_accuracy_after_compaction']:.2f}% ± 0.00%" in table2
    held = run["test_accuracy"] >= 0.9154 - 0.01 and run["kept_fraction"] <= 1.25 * 0.0195 + 0.005
    assert ("**holds**" if held else "**does not hold**") in table2
    # the bimodality verdict is the undecided share the run reported
    bimodal = next(line for line in text.splitlines() if "bimodal participations" in line)
    assert f"`l1-l2-combined` {100 * run['undecided_fraction']:.2f}%" in bimodal
    prediction = next(line for line in text.splitlines() if "Gaussian width" in line)
    assert "mlp 1000-600 on mnist: predicted 0.965, measured 0.955" in prediction and "**holds**" in prediction
    assert "## 001:" in text and "not measured yet" in text


def test_a_prediction_off_by_more_than_two_points_does_not_hold(tmp_path, claims):
    far = claims["limit_claims"]([_limit_dir(tmp_path / "a", 0.965, 0.955), _limit_dir(tmp_path / "b", 0.90, 0.95)])
    assert far[0].verdict == "does not hold" and "worst 5.0" in far[0].why
    assert claims["limit_claims"]([])[0].verdict == "not measured yet"


def test_a_directory_without_its_results_is_refused(tmp_path, claims, capsys):
    assert claims["main"](["--limit", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    assert "has no limit.json" in capsys.readouterr().err and not (tmp_path / "c.md").exists()

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


def _factors_dir(path: Path, rows: list[tuple[float, float, float, float]]) -> Path:
    """A factors.json as tools/limit_factors.py writes it: (l1, mean |w|, λ_max, measured ratio) per case."""
    lf = runpy.run_path(str(ROOT / "tools" / "limit_factors.py"))
    cases = [
        {"l1": l1, "mean_abs_weight": w, "lambda_max": lam, "mean_eigenvalue": lam / 100, "predicted_ratio": m,
         "measured_ratio": m, "dense_test_accuracy": 0.97}
        for l1, w, lam, m in rows
    ]  # fmt: skip
    measured = [c["measured_ratio"] for c in cases]
    rho = {
        k: lf["spearman"]([c[k] for c in cases], measured) for k in ("mean_abs_weight", "lambda_max", "mean_eigenvalue")
    }
    path.mkdir(parents=True)
    (path / "factors.json").write_text(
        json.dumps({"base": "base.toml", "rows": cases, "spearman_with_measured_ratio": rho})
    )
    return path


def test_the_factors_claim_holds_only_when_both_factors_fall_as_the_limit_rises(tmp_path, claims):
    both = _factors_dir(tmp_path / "both", [(0, 0.05, 20, 0.80), (1e-5, 0.03, 15, 0.85), (1e-4, 0.01, 9, 0.95)])
    held = claims["factors_claim"](both)
    assert held.verdict == "holds" and "mean_abs_weight -1.00" in held.figure and "--l1 0 1e-05 0.0001" in held.command
    # sharper loss with a higher limit: magnitude alone goes with it, so the claim as stated does not hold
    one = _factors_dir(tmp_path / "one", [(0, 0.05, 9, 0.80), (1e-5, 0.03, 15, 0.85), (1e-4, 0.01, 20, 0.95)])
    partial = claims["factors_claim"](one)
    assert partial.verdict == "does not hold" and "magnitude does" in partial.why
    assert claims["factors_claim"](None).verdict == "not measured yet"


def test_lomp_is_judged_against_imp_budget_by_budget_by_the_tie_rule(tmp_path, claims):
    def row(method, budget, acc, std):
        return {"method": method, "budget": budget, "test_accuracy_mean": acc, "test_accuracy_std": std}

    rows = [row("imp", 0.01, 0.90, 0.002), row("imp", 0.1, 0.97, 0.001), row("dense", None, 0.98, 0.001),
            row("lomp-one-shot", 0.01, 0.905, 0.002), row("lomp-one-shot", 0.1, 0.969, 0.002),
            row("lomp", 0.01, 0.92, 0.001), row("lomp", 0.1, 0.95, 0.001)]  # fmt: skip
    (tmp_path / "frontier.json").write_text(json.dumps(rows))
    claim = claims["lomp_claim"](tmp_path)
    # one-shot: 0.905 vs 0.900 (5 points of 0.1% apart > 0.2 std: win), 0.969 vs 0.970 (tie)
    assert claim.verdict == "holds" and "1 wins, 1 ties, 0 losses over 2 budgets" in claim.why
    assert "fine-tuning: win, loss" in claim.why
    rows[4] = row("lomp-one-shot", 0.1, 0.90, 0.001)
    (tmp_path / "frontier.json").write_text(json.dumps(rows))
    assert claims["lomp_claim"](tmp_path).verdict == "does not hold"
    rows[4] = row("lomp-one-shot", 0.1, 0.968, 0.0005)  # 0.2 points below imp: what another CPU could make
    (tmp_path / "frontier.json").write_text(json.dumps(rows))
    claim = claims["lomp_claim"](tmp_path)
    assert claim.verdict == "holds" and "(tie)" in claim.figure and "or 0.3 points" in claim.why


def test_the_slq_claim_reads_every_benchmark_record(tmp_path, claims):
    results = tmp_path / "results.jsonl"

    def rec(name, ratio, l1):
        return json.dumps({"benchmark": name, "figures": {"time_ratio": {"median": ratio}, "density_l1": l1}})

    lines = [rec("slq_vs_pyhessian", 0.6, 0.0), rec("step_overhead", 9.0, 9.0), rec("slq_vs_pyhessian", 0.7, 0.001),
             rec("slq_vs_pyhessian", 0.65, 0.0)]  # fmt: skip
    results.write_text("\n".join(lines) + "\n")
    claim = claims["slq_claim"](results)
    assert claim.verdict == "holds" and "median 0.650 over 3 runs (range 0.600-0.700)" in claim.figure
    results.write_text(rec("slq_vs_pyhessian", 1.1, 0.0) + "\n")
    assert claims["slq_claim"](results).verdict == "does not hold"


def test_the_plateau_claims_follow_the_studys_table(tmp_path, claims):
    def entry(scorer, kappa, sparsity, mean, std, escape=None, verdict=None, players="weight"):
        e = {"players": players, "scorer": scorer, "kappa": kappa, "sparsity": sparsity,
             "test_accuracy_finetuned_mean": mean, "test_accuracy_finetuned_std": std}  # fmt: skip
        if escape is not None:
            e.update(test_accuracy_finetuned_escape=escape, test_accuracy_finetuned_verdict=verdict)
        return e

    table = [entry("magnitude", 0, 0.7, 0.80, 0.01), entry("squared", 0, 0.7, 0.80, 0.01),
             entry("magnitude", 0, 0.8, 0.70, 0.01), entry("squared", 0, 0.8, 0.70, 0.01),
             entry("bump", 1, 0.7, 0.83, 0.01, 0.03, "win"), entry("bump", 1, 0.8, 0.70, 0.01, 0.0, "tie"),
             entry("chaos", 2, 0.7, 0.80, 0.01, 0.0, "tie"), entry("chaos", 2, 0.8, 0.75, 0.01, 0.05, "win"),
             entry("fake-control", "control", 0.8, 0.69, 0.01, -0.01, "tie")]  # fmt: skip
    study = tmp_path / "study"
    study.mkdir()
    result = {"source": "configs/plateau/vit_fashion.toml", "rank_monotone_min_overlap": 1.0, "table": table}
    (study / "plateau.json").write_text(json.dumps(result))
    rows = claims["plateau_claims"]([study])
    assert [c.verdict for c in rows] == ["holds", "holds", "holds", "holds", "does not hold"]  # chaos < bump at 0.7
    assert "bump (weight) +3.00 (win)" in rows[1].figure
    result["rank_monotone_min_overlap"] = 0.98
    (study / "plateau.json").write_text(json.dumps(result))
    assert claims["plateau_claims"]([study])[0].verdict == "does not hold"
    assert claims["plateau_claims"]([])[0].verdict == "not measured yet"


def _continuous_sweep(path: Path, pilot: float, positions: dict[str, list[float]]) -> Path:
    def row(method, budget, acc, std=0.001):
        return {"method": method, "budget": budget, "test_accuracy_mean": acc, "test_accuracy_std": std}

    rows = [row(m, b, acc) for b in (0.05, 0.02) for m, acc in (("pilot", pilot), ("spred", 0.97), ("str", 0.97))]
    path.mkdir(parents=True)
    (path / "frontier.json").write_text(json.dumps(rows))
    (path / "sweep.json").write_text(json.dumps({"name": "lenet300-mnist-continuous"}))
    for label, path_of_positions in positions.items():
        run = path / "runs" / label / "budget=0.05" / "seed0"
        run.mkdir(parents=True)
        lines = [json.dumps({"epoch": i + 1, "l1_position": p}) for i, p in enumerate(path_of_positions)]
        (run / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"epoch": 9, "phase": "finetune"})]))
    return path


def test_paper_003_claims_follow_the_sweeps_and_the_mirror_flow(tmp_path, claims):
    won = _continuous_sweep(tmp_path / "won", 0.98, {"pilot": [0.0, 0.6], "spred": [0.0, 0.1]})
    pilot, transition, mirror = claims["continuous_claims"]([won], None)
    assert pilot.verdict == "holds" and "4 wins, 0 ties, 0 losses" in pilot.why
    assert "configs/sweeps/lenet300_mnist_continuous.toml" in pilot.command
    assert transition.verdict == "holds" and "`pilot`: 0.000 → 0.600" in transition.figure
    assert mirror.verdict == "not measured yet"
    lost = _continuous_sweep(tmp_path / "lost", 0.96, {"pilot": [0.3, 0.2]})
    pilot, transition, _ = claims["continuous_claims"]([lost], None)
    assert pilot.verdict == "does not hold" and transition.verdict == "does not hold"
    tied = _continuous_sweep(tmp_path / "tied", 0.9705, {})
    assert claims["continuous_claims"]([tied], None)[0].verdict == "does not hold"  # ties only: no win
    assert claims["continuous_claims"]([tied], None)[1].verdict == "not measured yet"

    def mirror_dir(path, l1s, gap):
        path.mkdir()
        rows = [{"beta": b, "relative_gap": gap, "l1_gd": l1, "error_to_sparse_truth": 0.1}
                for b, l1 in zip((0.01, 1.0, 10.0), l1s)]  # fmt: skip
        (path / "mirror_flow.json").write_text(json.dumps({"rows": rows, "l1_true": 4.0}))
        return path

    assert claims["mirror_claim"](mirror_dir(tmp_path / "m1", [5.0, 8.0, 9.0], 1e-3)).verdict == "holds"
    assert claims["mirror_claim"](mirror_dir(tmp_path / "m2", [5.0, 8.0, 9.0], 0.1)).verdict == "does not hold"
    assert claims["mirror_claim"](mirror_dir(tmp_path / "m3", [9.0, 8.0, 5.0], 1e-3)).verdict == "does not hold"


def _lottery_dir(path: Path, cells: dict) -> Path:
    """A lottery.json whose summary holds ``cells``: (label, variant, fraction) -> (mean, std)."""
    path.mkdir(parents=True)
    summary = [{"label": label, "variant": variant, "round": 1, "seeds": 3, "kept_fraction": f,
                "accuracy_mean": mean, "accuracy_std": std}
               for (label, variant, f), (mean, std) in cells.items()]  # fmt: skip
    (path / "lottery.json").write_text(json.dumps({"name": "lenet300-mnist-lottery", "rows": [], "summary": summary}))
    return path


def test_lottery_claims_follow_the_studys_means_and_spreads(tmp_path, claims):
    cells = {}
    for f, (imp, log, l1) in {
        0.2: (0.980, 0.981, 0.975),
        0.05: (0.975, 0.978, 0.970),
        0.02: (0.965, 0.970, 0.960),
    }.items():
        cells.update({("imp", "ticket", f): (imp, 0.001), ("log", "ticket", f): (log, 0.001),
                      ("l1", "ticket", f): (l1, 0.001)})  # fmt: skip
        for label, acc in (("imp", imp), ("log", log)):
            cells.update({(label, "reinit", f): (acc - 0.01, 0.001), (label, "random", f): (acc - 0.02, 0.001)})
    rows = claims["lottery_claims"]([_lottery_dir(tmp_path / "a", cells)])
    assert [c.verdict for c in rows] == ["holds"] * 4
    assert "log ticket 97.00 ± 0.10 against imp ticket 96.50 ± 0.10 (win)" in rows[1].figure
    cells[("log", "ticket", 0.02)] = (0.960, 0.001)  # now a loss to imp at 2% and a tie with l1
    rows = claims["lottery_claims"]([_lottery_dir(tmp_path / "b", cells)])
    assert rows[1].verdict == "does not hold" and "1 losses" in rows[1].why
    assert rows[0].verdict == "holds"  # 20% unchanged


def test_the_log_against_l1_claim_names_the_strength_each_study_gave_them(tmp_path, claims):
    cells = {(label, "ticket", 0.2): (0.98, 0.001) for label in ("imp", "log", "l1")}
    study = _lottery_dir(tmp_path / "lottery-mnist", cells)
    assert "the studies' λ unknown" in claims["lottery_claims"]([study])[2].why
    for label, lam in (("log", 1e-4), ("l1", 1.6667e-5)):
        search = study / label / "seed0" / "search"
        search.mkdir(parents=True)
        (search / "config.toml").write_text(f"seed = 0\n[method]\nname = 'concave-mask'\nlam = {lam}\n")
    why = claims["lottery_claims"]([study])[2].why
    assert "lottery-mnist: λ log 0.0001, ℓ1 1.67e-05 (ℓ1's λ·ε/(ε + 0.5)" in why


def test_lottery_claims_name_the_searches_that_sat_at_a_uniform_guess(tmp_path, claims):
    cells = {(label, "ticket", f): (0.98, 0.001) for label in ("imp", "log", "l1") for f in (0.2, 0.05, 0.02)}
    study = _lottery_dir(tmp_path / "lottery-fashion", cells)
    losses = {("log", 0): [1.7, 0.5, 2.3018, 0.8], ("log", 1): [1.6, 0.5, 0.9, 0.4], ("imp", 0): [0.7, 0.3, 0.7, 0.3]}
    for (label, seed), epoch_losses in losses.items():
        search = study / label / f"seed{seed}" / "search"
        search.mkdir(parents=True)
        (search / "config.toml").write_text('seed = 0\n[data]\ndataset = "fashion-mnist"\n[method]\nname = "imp"\n'
                                            "budget = 0.1\n")  # fmt: skip
        rows = [{"epoch": i + 1, "phase": "prune", "loss": loss} for i, loss in enumerate(epoch_losses)]
        rows.append({"epoch": 5, "phase": "finetune", "loss": 2.31})  # not a search epoch
        (search / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rows = claims["lottery_claims"]([study])
    assert rows[1].why.endswith("did not learn): lottery-fashion log 1 of 2")  # 2.3018 is within 1% of ln 10
    assert "imp" not in rows[1].why.split("did not learn):")[1]


def test_the_threshold_claim_interpolates_the_percentage_curve_in_log_fraction(tmp_path, claims):
    pct = _lottery_dir(tmp_path / "p", {("log", "ticket", 0.1): (0.98, 0.001), ("log", "ticket", 0.01): (0.96, 0.001)})
    thr = _lottery_dir(tmp_path / "t", {("log-a", "ticket", 0.0316): (0.975, 0.001)})
    claim = claims["threshold_claim"](thr, [pct])
    assert "against percentage 97.00 (win)" in claim.figure and claim.verdict == "holds"


def test_the_convex_claim_reads_the_check(tmp_path, claims):
    row = {
        "train_accuracy": 0.99,
        "test_accuracy": 0.99,
        "sparsity": 0.95,
        "exact_zeros": 0.95,
        "flips_in_last_fifth": 0,
    }
    rows = [{"way": "log-mask", **row}, {"way": "l1-mask", **row},
            {"way": "l1-subgradient", **row, "exact_zeros": 0.0, "sparsity": 0.9,
             "flips_in_last_fifth": 500}]  # fmt: skip
    (tmp_path / "mask_convex.json").write_text(json.dumps({"rows": rows}))
    assert claims["convex_claim"](tmp_path).verdict == "holds"
    rows[0]["test_accuracy"] = 0.97
    (tmp_path / "mask_convex.json").write_text(json.dumps({"rows": rows}))
    assert claims["convex_claim"](tmp_path).verdict == "does not hold"


def test_the_headline_says_when_equiprune_best_sits_at_the_edge_of_two_percent(claims):
    def rows(kept: float) -> dict:
        return {"equiprune-best": {"test_accuracy_mean": 0.94, "test_accuracy_std": 0.004, "kept_fraction_mean": kept}}

    missed = claims["_headline"](rows(0.0208), "cmd")
    assert missed.verdict == "does not hold" and "nor with ours" in missed.why
    assert "at the edge (2.08% against 2%)" in missed.why and "can change with the machine" in missed.why
    met = claims["_headline"](rows(0.0191), "cmd").why
    assert "it holds with equiprune-best's" in met and "at the edge (1.91% against 2%)" in met
    assert "at the edge" not in claims["_headline"](rows(0.015), "cmd").why


def test_a_difference_another_cpu_could_make_is_a_tie_in_the_published_verdicts(tmp_path, claims):
    from equiprune.experiments.comparison import CPU_SHIFT, judge

    # the MNIST lottery study's 20% cell on two machines: a 0.06-point loss on one, a tie on the other
    assert judge(0.9819, 0.0004, 0.9825, 0.0003) == "loss"
    assert judge(0.9819, 0.0004, 0.9825, 0.0003, CPU_SHIFT) == "tie"
    assert judge(0.9819, 0.0004, 0.9825 + CPU_SHIFT, 0.0003, CPU_SHIFT) == "loss"  # beyond the floor it counts
    cells = {("log", "ticket", 0.2): (0.9819, 0.0004), ("imp", "ticket", 0.2): (0.9825, 0.0003)}
    row = claims["lottery_claims"]([_lottery_dir(tmp_path / "a", cells)])[0]
    assert row.verdict == "holds" and "(tie)" in row.figure and "or 0.3 points, what another CPU moves them" in row.why

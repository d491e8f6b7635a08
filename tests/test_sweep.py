"""Sweeps: the grid, the store, resumption, shared training, the report and bad sweep files."""

import json

import pytest
import torch

from equiprune.cli import main
from equiprune.config import run_config_from_dict
from equiprune.errors import ConfigError
from equiprune.experiments import loop as train
from equiprune.experiments import sweep as sweep_module
from equiprune.experiments.store import ResultStore
from equiprune.experiments.sweep import lanes, load_sweep, parse_sweep, run_sweep
from equiprune.experiments.sweep_report import frontier_rows, render_markdown, write_report


def _sweep_text(data_root, methods: str, budgets="[0.25]", seeds="[0]") -> str:
    return f"""
name = "tiny"
seeds = {seeds}
budgets = {budgets}
[base.data]
dataset = "mnist"
root = "{data_root}"
train_subset = 1200
test_subset = 500
[base.model]
hidden = [16, 8]
[base.train]
epochs = 2
finetune_epochs = 1
lr = 0.003
{methods}
"""


TINY_METHODS = """
[[methods]]
name = "dense"
train = { finetune_epochs = 0 }
[[methods]]
name = "magnitude-l2"
[[methods]]
name = "random"
[[methods]]
name = "game"
beta = 0.05
lr_s = 0.02
points = [{ gamma = 0.3 }, { gamma = 0.05 }]
"""


def _write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_sweep_runs_the_grid_stores_every_run_once_and_reports(tmp_path, data_root):
    sweep = load_sweep(_write(tmp_path, _sweep_text(data_root, TINY_METHODS)))
    assert [r.run_id for r in sweep.runs] == [
        "dense/default/seed0", "magnitude-l2/budget=0.25/seed0", "random/budget=0.25/seed0",
        "game/gamma=0.3/seed0", "game/gamma=0.05/seed0",
    ]  # fmt: skip
    out = tmp_path / "out"
    assert run_sweep(sweep, out, quiet=True) == {"ran": 5, "resumed": 0, "skipped": 0, "failed": 0}
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows()
    assert sorted(r["run_id"] for r in rows) == sorted(r.run_id for r in sweep.runs)
    by_id = {r["run_id"]: r["results"] for r in rows}
    # a budgeted method keeps exactly round(0.25 × 24) = 6 players
    assert by_id["magnitude-l2/budget=0.25/seed0"]["kept"] == {"1": 4, "3": 2}
    # random shared the dense training phase that magnitude-l2 trained first
    assert not by_id["magnitude-l2/budget=0.25/seed0"]["shared_training"]
    assert by_id["random/budget=0.25/seed0"]["shared_training"]
    assert by_id["dense/default/seed0"]["macs_after"] == 784 * 16 + 16 * 8 + 8 * 10

    # started again, nothing runs twice
    assert run_sweep(sweep, out, quiet=True) == {"ran": 0, "resumed": 0, "skipped": 5, "failed": 0}
    with ResultStore(out / "results.sqlite") as store:
        assert len(store) == 5

    report = write_report(out)
    text = report.read_text()
    assert "## Budget 25% of players kept" in text and "**" in text
    threads = by_id["dense/default/seed0"]["environment"]["threads"]
    assert f"All 5 runs: torch {torch.__version__}, {threads} CPU thread(s), device cpu." in text
    frontier = json.loads((out / "frontier.json").read_text())
    keys = {"method", "budget", "kept_fraction_mean", "test_accuracy_mean", "test_accuracy_std", "seeds"}
    assert all(keys <= set(row) for row in frontier)
    l2 = next(r for r in frontier if r["method"] == "magnitude-l2")
    assert l2["budget"] == 0.25 and l2["kept_fraction_mean"] == 0.25 and l2["seeds"] == 1
    for name in ("frontier_kept.png", "frontier_params.png", "frontier_macs.png"):
        assert (out / name).stat().st_size > 1000


def test_sharing_the_dense_phase_gives_the_same_result_as_training_it(tmp_path, data_root):
    text = _sweep_text(data_root, '[[methods]]\nname = "magnitude-l1"')
    cfg = load_sweep(_write(tmp_path, text)).runs[0].config
    alone = train.run(cfg, tmp_path / "alone", quiet=True)
    train.run(cfg, tmp_path / "first", quiet=True, shared=tmp_path / "shared")
    reused = train.run(cfg, tmp_path / "second", quiet=True, shared=tmp_path / "shared")
    assert reused["shared_training"] and not alone["shared_training"]
    assert reused["test_accuracy"] == alone["test_accuracy"]
    assert reused["test_loss"] == alone["test_loss"]


def test_an_interrupted_sweep_resumes_without_losing_or_repeating_runs(tmp_path, data_root, monkeypatch):
    sweep = load_sweep(_write(tmp_path, _sweep_text(data_root, TINY_METHODS)))
    out = tmp_path / "out"
    real_run, calls = train.run, []

    def dies_on_the_third(cfg, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(cfg, path, **kw)

    monkeypatch.setattr(sweep_module, "run", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, quiet=True)
    with ResultStore(out / "results.sqlite") as store:
        assert len(store) == 2
    monkeypatch.setattr(sweep_module, "run", real_run)
    assert run_sweep(sweep, out, quiet=True) == {"ran": 3, "resumed": 0, "skipped": 2, "failed": 0}
    with ResultStore(out / "results.sqlite") as store:
        assert sorted(r["run_id"] for r in store.rows()) == sorted(r.run_id for r in sweep.runs)


def test_a_parallel_sweep_stores_the_same_results_as_one_run_after_another(tmp_path, data_root):
    text = _sweep_text(data_root, TINY_METHODS, seeds="[0, 1]")
    sweep = load_sweep(_write(tmp_path, text.replace("[base.data]", "[base]\nthreads = 1\n[base.data]")))
    # the one-shot methods of a seed share one training phase, so they run in one lane, in order
    assert [[r.run_id for r in lane] for lane in lanes(sweep.runs)][:4] == [
        ["dense/default/seed0"], ["magnitude-l2/budget=0.25/seed0", "random/budget=0.25/seed0"],
        ["game/gamma=0.3/seed0"], ["game/gamma=0.05/seed0"],
    ]  # fmt: skip
    assert len(lanes(sweep.runs)) == 8
    counts = {"ran": 10, "resumed": 0, "skipped": 0, "failed": 0}
    assert run_sweep(sweep, tmp_path / "one", quiet=True) == counts
    assert run_sweep(sweep, tmp_path / "two", quiet=True, jobs=2) == counts
    stored = []
    for out in ("one", "two"):
        with ResultStore(tmp_path / out / "results.sqlite") as store:
            stored.append({r["run_id"]: r["results"] for r in store.rows()})
    assert sorted(stored[0]) == sorted(stored[1]) == sorted(r.run_id for r in sweep.runs)
    for run_id, alone in stored[0].items():
        side_by_side = stored[1][run_id]
        for key in ("test_accuracy", "test_loss", "kept", "shared_training", "environment"):
            assert side_by_side[key] == alone[key], (run_id, key)
    assert sum(r["shared_training"] for r in stored[1].values()) == 2  # random reused each seed's phase
    assert run_sweep(sweep, tmp_path / "two", quiet=True, jobs=2) == {**counts, "ran": 0, "skipped": 10}
    with pytest.raises(ConfigError, match="--jobs"):
        run_sweep(sweep, tmp_path / "two", quiet=True, jobs=0)


def test_a_diverging_setting_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, data_root):
    methods = """
[[methods]]
name = "game"
lr_s = 0.5
points = [{ gamma = 0.0 }]
[[methods]]
name = "game"
label = "game-exploding"
train = { lr = 1e12 }
points = [{ gamma = 0.0 }]
"""
    out = tmp_path / "out"
    sweep = load_sweep(_write(tmp_path, _sweep_text(data_root, methods)))
    assert run_sweep(sweep, out, quiet=True) == {"ran": 2, "resumed": 0, "skipped": 0, "failed": 1}
    with ResultStore(out / "results.sqlite") as store:
        status = {r["label"]: r["status"] for r in store.rows()}
    assert status == {"game-exploding": "failed", "game": "finished"}
    text = write_report(out).read_text()
    assert "## Failed runs" in text and "game-exploding/gamma=0.0/seed0" in text and "training loss became" in text
    frontier = json.loads((out / "frontier.json").read_text())
    assert [(r["method"], r["point"]) for r in frontier] == [("game", "gamma=0.0")]
    # a failure is an outcome: started again, the sweep does not retry it
    assert run_sweep(sweep, out, quiet=True)["skipped"] == 2


def test_a_sweep_directory_refuses_a_changed_plan(tmp_path, data_root):
    out = tmp_path / "out"
    text = _sweep_text(data_root, '[[methods]]\nname = "scratch"\ntrain = { finetune_epochs = 0 }', budgets="[0.5]")
    run_sweep(load_sweep(_write(tmp_path, text)), out, quiet=True)
    changed = load_sweep(_write(tmp_path, text.replace("lr = 0.003", "lr = 0.01"), "changed.toml"))
    with pytest.raises(ConfigError, match="another configuration.*--rerun scratch"):
        run_sweep(changed, out, quiet=True)
    with pytest.raises(ConfigError, match="no method labelled so"):
        run_sweep(changed, out, quiet=True, rerun=("scrach",))
    assert run_sweep(changed, out, quiet=True, rerun=("scratch",))["ran"] == 1
    with ResultStore(out / "results.sqlite") as store:
        assert [r["run_id"] for r in store.rows()] == ["scratch/budget=0.5/seed0"]
    assert "lr = 0.01" in (out / "runs" / "scratch" / "budget=0.5" / "seed0" / "config.toml").read_text()


def test_only_runs_the_named_labels_and_the_report_still_covers_the_whole_sweep(tmp_path, data_root, capsys):
    methods = '[[methods]]\nname = "scratch"\ntrain = { finetune_epochs = 0 }\n[[methods]]\nname = "random"\n'
    out = tmp_path / "out"
    first = load_sweep(_write(tmp_path, _sweep_text(data_root, methods, budgets="[0.5]")))
    assert run_sweep(first, out, quiet=True)["ran"] == 2
    # two more seeds, spent on one label: the other's new runs wait
    more = _write(tmp_path, _sweep_text(data_root, methods, budgets="[0.5]", seeds="[0, 1, 2]"), "more.toml")
    done = run_sweep(load_sweep(more), out, quiet=True, only=("scratch",))
    assert done == {"ran": 2, "resumed": 0, "skipped": 2, "failed": 0, "left": 2}
    with ResultStore(out / "results.sqlite") as store:
        stored = sorted(r["run_id"] for r in store.rows())
    assert stored == ["random/budget=0.5/seed0"] + [f"scratch/budget=0.5/seed{s}" for s in range(3)]
    write_report(out)
    seeds = {r["method"]: r["seeds"] for r in json.loads((out / "frontier.json").read_text())}
    assert seeds == {"scratch": 3, "random": 1}
    with pytest.raises(ConfigError, match=r"--only 'scrach': the sweep has no method labelled so"):
        run_sweep(load_sweep(more), out, quiet=True, only=("scrach",))
    # the command line says what is left; without --only the rest runs
    assert main(["sweep", str(more), "--out", str(out), "--quiet", "--only", "scratch"]) == 0
    assert "(0 ran, 0 resumed, 4 already done, 0 failed, 2 of other labels left to run)" in capsys.readouterr().out
    assert run_sweep(load_sweep(more), out, quiet=True) == {"ran": 2, "resumed": 0, "skipped": 4, "failed": 0}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('name = "random"', 'name = "randm"'), "unknown method 'randm'"),
        (
            lambda t: t.replace("budgets = [0.25]", "budgets = [0.25, 1.5]"),
            r"budgets: expected a list of fractions in \(0, 1\]",
        ),
        (lambda t: t.replace("seeds = [0]", "seed = [0]"), "unknown key 'seed' .*did you mean 'seeds'"),
        (
            lambda t: t.replace("lr_s = 0.02", "lr_s = 0.02\ncost_rmp = 0.5"),
            "unknown key 'cost_rmp'.*did you mean 'cost_ramp'",
        ),
        (
            lambda t: t.replace('name = "random"', 'name = "random"\nplayers = "filters"'),
            "unknown player kind 'filters'",
        ),
        (lambda t: t.replace("hidden = [16, 8]", "hidden = [16, 8]\nlayers = 3"), "unknown key 'layers'"),
        (lambda t: t.replace("hidden = [16, 8]", "hidden = [16, 8]\ndepth = 3"), "model 'mlp' has no such setting"),
    ],
)
def test_bad_sweep_files_fail_before_any_training(tmp_path, data_root, edit, message, capsys):
    path = _write(tmp_path, edit(_sweep_text(data_root, TINY_METHODS)))
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "equiprune: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_duplicate_labels_are_refused():
    with pytest.raises(ConfigError, match="label 'random' is used twice"):
        parse_sweep({"budgets": [0.5], "methods": [{"name": "random"}, {"name": "random"}]})


def _row(label, method, point, budget, kept, acc, seed=0):
    results = {"kept_fraction": kept, "test_accuracy": acc, "params_after": 100, "macs_after": 90}
    return {"run_id": f"{label}/{point}/seed{seed}", "label": label, "method": method, "point": point,
            "budget": budget, "seed": seed, "results": results}  # fmt: skip


def test_the_report_warns_when_runs_ran_with_different_thread_counts():
    from equiprune.experiments.sweep_report import environment_lines

    rows = [_row("taylor", "taylor", "budget=0.1", 0.1, 0.1, 0.9, seed=s) for s in range(3)]
    rows.append(_row("game", "game", "gamma=0.1", None, 0.1, 0.9))
    for r, threads in zip(rows, (1, 1, 2)):
        r["results"]["environment"] = {"torch": "2.13.0", "threads": threads, "device": "cpu"}
    rows.append({**_row("game", "game", "gamma=0.2", None, 0.1, 0.9), "status": "failed"})  # not counted
    text = "\n".join(environment_lines(rows))
    assert "different environments" in text and "Pin `threads`" in text
    assert "| 2.13.0 | 1 | cpu | 2 | taylor |" in text
    assert "| 2.13.0 | 2 | cpu | 1 | taylor |" in text
    # the game run stored before equiprune recorded its environment
    assert "| not recorded | not recorded | not recorded | 1 | game |" in text
    same = "\n".join(environment_lines(rows[:2]))
    assert "All 2 runs: torch 2.13.0, 1 CPU thread(s), device cpu." in same and "different" not in same
    assert "The 1 runs do not record their environment" in "\n".join(environment_lines(rows[3:4]))


def test_the_report_names_runs_whose_loss_was_worse_than_a_uniform_guess():
    from equiprune.experiments.sweep_report import diverged_lines

    calm = _row("taylor", "taylor", "budget=0.1", 0.1, 0.1, 0.9)
    calm["results"]["warnings"] = []
    wrecked = _row("game", "game", "gamma=1.2", None, 0.01, 0.8, seed=1)
    wrecked["results"]["warnings"] = ["epoch 6 (prune): the mean training loss 21 is above 2.3, ...",
                                      "epoch 7 (prune): the mean training loss 9 is above 2.3, ..."]  # fmt: skip
    wrecked["results"]["diverged_epochs"] = [{"epoch": 6, "phase": "prune"}, {"epoch": 7, "phase": "prune"}]
    older = _row("game", "game", "gamma=1.3", None, 0.01, 0.8, seed=2)  # stored before diverged_epochs
    older["results"]["warnings"] = ["epoch 9 (finetune): the mean training loss 3 is above 2.3, ..."]
    failed = {**_row("game", "game", "gamma=2", None, 0.01, 0.8), "status": "failed"}
    failed["results"]["warnings"] = ["epoch 1 (prune): ..."]  # a failed run is listed with the failures
    text = "\n".join(diverged_lines([calm, wrecked, older, failed]))
    assert "## Runs that diverged" in text
    assert "- `game/gamma=1.2/seed1`: 2 epoch(s): epoch 6 (prune), epoch 7 (prune)" in text
    assert "- `game/gamma=1.3/seed2`: 1 epoch(s): epoch 9 (finetune)" in text
    wrecked["results"]["warnings"] = ["a message worded some other way", "and another"]
    assert "epoch 6 (prune), epoch 7 (prune)" in "\n".join(diverged_lines([wrecked]))  # the data, not the text
    assert "taylor" not in text and "gamma=2" not in text
    assert diverged_lines([calm]) == []


def test_budget_free_settings_join_the_nearest_budget_only_when_close():
    rows = [
        _row("game", "game", "gamma=0.35", None, 0.021, 0.9),
        _row("game", "game", "gamma=0.05", None, 0.5, 0.97),
        _row("taylor", "taylor", "budget=0.02", 0.02, 0.02, 0.88, 0),
        _row("taylor", "taylor", "budget=0.02", 0.02, 0.02, 0.90, 1),
    ]
    frontier = {(r.method, r.point): r for r in frontier_rows(rows, [0.02, 0.1])}
    assert frontier[("game", "gamma=0.35")].budget == 0.02
    assert frontier[("game", "gamma=0.05")].budget is None  # 5x away from 0.1: placed nowhere
    taylor = frontier[("taylor", "budget=0.02")]
    assert taylor.seeds == 2 and taylor.test_accuracy_mean == pytest.approx(0.89)
    assert taylor.test_accuracy_std == pytest.approx(0.0141421, rel=1e-4)


def test_budget_key_in_a_run_config_reaches_the_method():
    cfg = run_config_from_dict({"method": {"name": "taylor", "budget": 0.05, "schedule": "iterative"}})
    method = cfg.method.build()
    assert method.settings.budget == 0.05 and method.settings.schedule == "iterative"


def test_interpolation_at_equal_parameters_is_linear_in_log_parameters():
    from equiprune.experiments.sweep_report import FrontierRow, interpolate_accuracy

    def row(params, acc):
        return FrontierRow("m", "m", "baseline", "p", 0.1, 1, 0.1, 0.0, acc, 0.0, params, None)

    rows = [row(1000, 0.90), row(100000, 0.98)]
    assert interpolate_accuracy(rows, 10000) == pytest.approx(0.94)  # halfway in log(parameters)
    assert interpolate_accuracy(rows, 1000) == pytest.approx(0.90)
    assert interpolate_accuracy(rows, 500) is None and interpolate_accuracy(rows, 200000) is None


def test_the_verdict_judges_each_game_label_as_it_is_where_no_two_settings_bracket_the_budget():
    from equiprune.experiments.sweep_report import FrontierRow, render_markdown

    def row(label, name, point, acc, std):
        role = "candidate" if name == "game" else "baseline"
        return FrontierRow(label, name, role, point, 0.1, 3, 0.1, 0.0, acc, std, 1000, None)

    frontier = [
        row("magnitude-l2", "magnitude-l2", "budget=0.1", 0.900, 0.010),
        row("taylor", "taylor", "budget=0.1", 0.930, 0.001),
        row("game", "game", "gamma=0.3", 0.880, 0.001),
        row("game-width", "game", "gamma=0.1", 0.905, 0.002),
    ]
    text = render_markdown("t", frontier, [0.1])
    verdict = [line for line in text.splitlines() if line.startswith("- budget 10%")]
    # one line per label; game-width: +0.5 within magnitude-l2's std, -2.5 against taylor
    assert verdict == [
        "- budget 10%, game (gamma=0.3, kept 10.00%): 88.00 ± 0.10%; magnitude-l2 -2.00 (LOSS), taylor -5.00 (LOSS)",
        "- budget 10%, game-width (gamma=0.1, kept 10.00%): 90.50 ± 0.20%; "
        "magnitude-l2 +0.50 (tie), taylor -2.50 (LOSS)",
    ]
    assert "| game-width gamma=0.1 |" in text and "| game gamma=0.3 |" in text


def test_the_report_judges_whatever_the_sweep_names_a_candidate(tmp_path):
    """Roles come from the sweep file (else the method's own): the report knows no method by name."""
    sweep = parse_sweep({
        "budgets": [0.5],
        "methods": [{"name": "taylor", "role": "candidate"}, {"name": "random"}, {"name": "scratch"},
                    {"name": "game", "points": [{"gamma": 0.1}], "role": "baseline"}],
    })  # fmt: skip
    assert sweep.roles == {"taylor": "candidate", "random": "baseline", "scratch": "reference", "game": "baseline"}
    rows = [
        _row("taylor", "taylor", "budget=0.5", 0.5, 0.5, 0.95),
        _row("random", "random", "budget=0.5", 0.5, 0.5, 0.9),
        _row("scratch", "scratch", "budget=0.5", 0.5, 0.5, 0.93),
        _row("game", "game", "gamma=0.1", None, 0.5, 0.97),
    ]
    frontier = frontier_rows(rows, [0.5], sweep.roles)
    text = render_markdown("t", frontier, [0.5])
    verdict = [line for line in text.splitlines() if line.startswith("- budget 50%")]
    assert verdict == ["- budget 50%, taylor (budget=0.5, kept 50.00%): 95.00 ± 0.00%; "
                       "game -2.00 (LOSS), random +5.00 (win), scratch +2.00 (win)"]  # fmt: skip
    assert "| **game** | **97.00 ± 0.00** |" in text and "| scratch (reference) |" in text
    with pytest.raises(ConfigError, match="role: got 'judge'"):
        parse_sweep({"budgets": [0.5], "methods": [{"name": "taylor", "role": "judge"}]})


def test_the_verdict_interpolates_a_game_label_to_the_baselines_kept_fraction():
    from equiprune.experiments.sweep_report import FrontierRow, render_markdown

    def row(label, name, point, budget, kept, acc, std):
        role = "candidate" if name == "game" else "baseline"
        return FrontierRow(label, name, role, point, budget, 3, kept, 0.0, acc, std, 1000, None)

    frontier = [
        # two settings bracketing 8% kept; 8% is halfway between them in log(kept). The better one
        # (98% at 16% kept) would beat both baselines if judged as it is; interpolated, it does not.
        row("game", "game", "gamma=0.3", 0.05, 0.04, 0.90, 0.010),
        row("game", "game", "gamma=0.1", 0.2, 0.16, 0.98, 0.030),
        row("random", "random", "budget=0.08", 0.08, 0.08, 0.95, 0.001),
        row("taylor", "taylor", "budget=0.08", 0.08, 0.08, 0.97, 0.001),
        row("taylor", "taylor", "budget=0.5", 0.5, 0.5, 0.99, 0.001),  # no game setting near 50%
    ]
    text = render_markdown("t", frontier, [0.05, 0.08, 0.2, 0.5])
    lines = [line for line in text.splitlines() if line.startswith("- budget 8%") or line.startswith("- budget 50%")]
    # interpolated: 94.00 ± 2.00; -1.00 lies within 2.00 of random, -3.00 does not of taylor
    assert lines == [
        "- budget 8%, game (interpolated between gamma=0.3 and gamma=0.1, kept 8.00%): 94.00 ± 2.00%; "
        "random -1.00 (tie), taylor -3.00 (LOSS)",
        "- budget 50%, game: no setting landed near this budget",
    ]


def test_a_setting_added_since_a_run_was_stored_does_not_make_it_run_again(tmp_path, data_root):
    """A newer equiprune adds a setting (here: the stored hash is of a config without it); the stored
    run's own config, read now, resolves to the planned one, so the sweep skips it. A real change
    of settings is still refused."""
    out = tmp_path / "out"
    text = _sweep_text(data_root, '[[methods]]\nname = "scratch"\ntrain = { finetune_epochs = 0 }', budgets="[0.5]")
    sweep = load_sweep(_write(tmp_path, text))
    run_sweep(sweep, out, quiet=True)
    with ResultStore(out / "results.sqlite") as store, store._db:
        store._db.execute("UPDATE runs SET config_hash = 'hash-under-an-older-schema'")
    assert run_sweep(sweep, out, quiet=True) == {"ran": 0, "resumed": 0, "skipped": 1, "failed": 0}
    changed = load_sweep(_write(tmp_path, text.replace("lr = 0.003", "lr = 0.01"), "changed.toml"))
    with pytest.raises(ConfigError, match="another configuration.*--rerun scratch"):
        run_sweep(changed, out, quiet=True)


def test_a_second_sweep_on_a_busy_directory_is_refused_before_any_work(tmp_path, data_root):
    import os

    from equiprune import io
    from equiprune.errors import EquipruneError

    sweep = load_sweep(_write(tmp_path, _sweep_text(data_root, TINY_METHODS)))
    out = tmp_path / "out"
    with io.exclusive(out / ".sweep.lock", "the first sweep"):  # another sweep holds the directory
        with pytest.raises(
            EquipruneError, match=f"an `equiprune sweep` on {out} is already running \\(process {os.getpid()}\\)"
        ):
            run_sweep(sweep, out, quiet=True)
        assert not (out / "results.sqlite").exists() and not (out / "runs").exists()
    # the lock goes with its holder: the directory is free again
    with io.exclusive(out / ".sweep.lock", "a later sweep"):
        pass

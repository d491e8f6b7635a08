"""End to end on real MNIST subsets: a run directory, resume after SIGKILL, divergence, bad input."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from equiprune.cli import main
from equiprune.config import parse_config
from equiprune.data import load_split
from equiprune.errors import ConfigError, TrainingDiverged
from equiprune.experiments.loop import run
from equiprune.experiments.setup import evaluate

from .helpers import small_config

RESULT_KEYS = {"test_accuracy", "kept_fraction", "kept", "params_before", "params_after", "seconds"}


def test_run_writes_a_complete_run_directory(tmp_path, data_root):
    cfg = parse_config(small_config(data_root))
    out = tmp_path / "run"
    results = run(cfg, out, quiet=True)
    assert RESULT_KEYS <= set(results)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    kept = results["kept"]
    assert 0 < results["kept_fraction"] < 1, "the game should prune some neurons here"
    assert results["kept_fraction"] == pytest.approx(sum(kept.values()) / (64 + 32))
    assert results["params_after"] < results["params_before"]
    # 5 short epochs of the game on 6,000 images, 1 of fine-tuning: far above chance (0.1), not tuned.
    assert results["test_accuracy"] > 0.5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in rows] == ["prune"] * 5 + ["finetune"]
    assert {"loss", "train_accuracy", "test_accuracy", "players_alive", "alive_fraction"} <= set(rows[0])
    assert sum(rows[0]["participation_histogram"]) == 96
    assert results["warnings"] == results["diverged_epochs"] == [] and not any("warning" in r for r in rows)
    for name in ("config.toml", "model.pt", "participation_histogram.png", "dynamics.png"):
        assert (out / name).stat().st_size > 0
    # The compacted model loads as a plain module and scores what results.json says.
    model = torch.load(out / "model.pt", weights_only=False)
    widths = [m.out_features for m in model if isinstance(m, torch.nn.Linear)]
    assert widths == [kept["1"], kept["3"], 10]
    test = load_split("mnist", "test", data_root).subset(2000)
    assert evaluate(model, test, 1000)[0] == results["test_accuracy"]


def test_a_newton_run_trains_dense_first_then_prunes_and_compacts(tmp_path, data_root):
    """``update = 'newton'`` through the real loop: the recording hooks run beside training, the dense
    start keeps every player for its epochs, and the result is a smaller plain model."""
    extra = 'update = "newton"\nstart = 0.25\nlr_s = 0.01\ncost_weighting = "width"'
    text = small_config(data_root, epochs=5, finetune=1, train_subset=3000, gamma=0.05).replace("lr_s = 0.02\n", "")
    results = run(parse_config(text + extra), tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["players_alive"] == 96  # epoch 1 of 4 in the pruning phase: still dense
    assert 0 < results["kept_fraction"] < 1 and results["params_after"] < results["params_before"]
    assert results["test_accuracy"] > 0.5 and results["warnings"] == []
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_an_anchored_run_keeps_its_survivors_at_full_strength_while_the_others_leave(tmp_path, data_root):
    """``anchored``: players leave over the game's epochs, the network plays the survivors fully in
    (its test accuracy holds during the game instead of sinking with the participations), and the
    metrics report the participations themselves, many of them between 0 and 1."""
    extra = 'update = "newton"\nanchored = true\nstart = 0.25\nlr_s = 0.05\ncost_weighting = "width"'
    text = small_config(data_root, epochs=5, finetune=1, train_subset=3000, gamma=0.03).replace("lr_s = 0.02\n", "")
    results = run(parse_config(text + extra), tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    alive = [r["players_alive"] for r in rows[:4]]
    assert alive[0] == 96 and alive[1] > alive[2] > alive[3] > 0  # dense start, then a gradual exit
    assert rows[3]["test_accuracy"] >= rows[1]["test_accuracy"] - 0.01
    assert rows[3]["undecided_fraction"] > 0.05  # a survivor's participation is its margin over its cost
    assert sum(results["kept"].values()) == alive[3] and results["warnings"] == []
    assert results["test_accuracy"] > 0.8


def test_a_run_pins_its_thread_count_records_it_and_restores_the_callers(tmp_path, data_root):
    before = torch.get_num_threads()
    pinned = 1 if before != 1 else 2
    text = small_config(data_root, epochs=2, finetune=0, train_subset=1000).replace(
        "seed = 0", f"seed = 0\nthreads = {pinned}"
    )
    results = run(parse_config(text), tmp_path / "r", quiet=True)
    assert results["environment"] == {"torch": torch.__version__, "threads": pinned, "device": "cpu", "processes": 1,
                                      "precision": "fp32"}  # fmt: skip
    assert torch.get_num_threads() == before


def test_a_run_directory_is_never_silently_reused(tmp_path, data_root):
    cfg = parse_config(small_config(data_root, epochs=1, finetune=0, train_subset=1000))
    run(cfg, tmp_path / "r", quiet=True)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(cfg, tmp_path / "r", quiet=True)
    other = parse_config(small_config(data_root, epochs=1, finetune=0, train_subset=1000, lr_s=0.1))
    with pytest.raises(ConfigError, match=r"another configuration \(method.lr_s: 0.02 there, 0.1 here\)"):
        run(other, tmp_path / "r", quiet=True)


def _equiprune(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "equiprune.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def _kill_during_epoch(cfg_path, out, finished_epochs):
    """Start a run and SIGKILL it once `finished_epochs` epochs are checkpointed (so mid-epoch)."""
    proc = _equiprune("run", str(cfg_path), "--out", str(out), "--quiet", *(["--resume"] if finished_epochs else []))
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > finished_epochs:
            time.sleep(0.15)  # inside the next epoch (each takes about half a second or more)
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()


def test_resume_after_sigkill_gives_the_same_result(tmp_path, data_root):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(small_config(data_root, epochs=4, finetune=2, train_subset=20000, hidden="256, 128", gamma=0.1))
    whole = _equiprune("run", str(cfg_path), "--out", str(tmp_path / "whole"), "--quiet")
    assert whole.wait() == 0, whole.stderr.read()

    cut = tmp_path / "cut"
    _kill_during_epoch(cfg_path, cut, 0)  # killed during epoch 2, in the pruning phase
    _kill_during_epoch(cfg_path, cut, 3)  # resumed, then killed during epoch 4, after compaction
    resumed = _equiprune("run", str(cfg_path), "--out", str(cut), "--resume", "--quiet")
    assert resumed.wait() == 0, resumed.stderr.read()

    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    sa = torch.load(tmp_path / "whole" / "model_state.pt")
    sb = torch.load(cut / "model_state.pt")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, data_root, monkeypatch):
    import equiprune.experiments.loop as train_mod

    real = train_mod.F.cross_entropy
    calls = {"n": 0}
    steps_per_epoch = 1000 // 128 + 1

    def poisoned(logits, y, **kw):
        calls["n"] += 1
        loss = real(logits, y, **kw)
        return loss * float("nan") if calls["n"] > steps_per_epoch + 2 and kw.get("reduction") is None else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    cfg = parse_config(small_config(data_root, epochs=3, finetune=0, train_subset=1000))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2.*checkpoint \(after epoch 1\)"):
        run(cfg, tmp_path / "r", quiet=True)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1 and not (tmp_path / "r" / "results.json").exists()


def test_a_loss_worse_than_a_uniform_guess_is_flagged_in_every_epoch_it_occurs(tmp_path, data_root, capsys):
    # Adam at lr 10 throws the weights about: the loss stays finite (no NaN to stop the run) but far
    # above ln(10), what predicting every class alike would cost.
    text = small_config(data_root, epochs=2, finetune=1, train_subset=1000).replace("lr = 0.002", "lr = 10.0")
    (tmp_path / "c.toml").write_text(text)
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    printed = capsys.readouterr()
    results = json.loads(printed.out)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 2.303 for r in rows)
    assert [w.split(":")[0] for w in results["warnings"]] == ["epoch 1 (prune)", "epoch 2 (finetune)"]
    assert results["diverged_epochs"] == [{"epoch": 1, "phase": "prune"}, {"epoch": 2, "phase": "finetune"}]
    assert "above 2.3, the loss of a uniform guess over 10 classes" in results["warnings"][0]
    assert "gamma, eta, lr_s" in results["warnings"][0] and "finetune_lr" in results["warnings"][1]
    assert [r.get("warning") for r in rows] == results["warnings"]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["warnings"] == results["warnings"]
    # said at once, even with quiet, naming the run (a sweep's runs warn side by side)
    assert printed.err.count(f"equiprune: warning: {tmp_path / 'r'}: epoch") == 2


def test_an_epoch_stuck_at_a_uniform_guess_is_flagged_though_its_loss_is_a_hair_below_it():
    """A network that learns nothing averages just under ln(classes) (a stalled mask search: 2.3018
    against ln 10 = 2.3026); within 1% of it counts as not learned, and a loss that learned is left."""
    from equiprune.experiments.hooks import no_better_than_chance

    def row(loss):
        return {"epoch": 9, "phase": "prune", "loss": loss}

    stuck = no_better_than_chance(row(2.3018), 10, "mask_step")
    assert stuck.startswith("epoch 9 (prune): the mean training loss 2.302 is within 1% of 2.3, the loss of a uniform")
    assert "diverged or not learned" in stuck and "mask_step" in stuck
    assert "is above 2.3" in no_better_than_chance(row(2.31), 10, "mask_step")
    assert no_better_than_chance(row(2.27), 10, "mask_step") is None  # 1.4% below: it learned something
    assert no_better_than_chance(row(0.688), 2, "x")  # two classes: 0.99 ln 2 = 0.686
    assert no_better_than_chance(row(0.68), 2, "x") is None
    # the data loss, not the penalised one, is what a uniform guess is measured against
    assert no_better_than_chance({**row(5.0), "cross_entropy": 0.4}, 10, "x") is None


def test_the_library_logs_what_goes_wrong_and_prints_nothing(tmp_path, data_root, capsys, caplog):
    text = small_config(data_root, epochs=2, finetune=1, train_subset=1000).replace("lr = 0.002", "lr = 10.0")
    with caplog.at_level(logging.INFO, logger="equiprune"):
        results = run(parse_config(text), tmp_path / "r", quiet=True)
    warned = [r.getMessage() for r in caplog.records if r.name == "equiprune" and r.levelno == logging.WARNING]
    assert warned == [f"{tmp_path / 'r'}: {w}" for w in results["warnings"]] and len(warned) == 2
    assert not [r for r in caplog.records if r.levelno == logging.INFO]  # quiet: no per-epoch lines
    assert capsys.readouterr() == ("", "")  # shown only by a handler the caller (here caplog) set up


def test_the_chance_check_ignores_a_methods_penalty(tmp_path, data_root):
    # Slimming's L1 penalty on 96 gates at weight 0.1 adds about 9.6 to the loss being minimised;
    # the network itself is fine, so nothing is flagged, and the cross-entropy is logged apart.
    text = small_config(data_root, epochs=2, finetune=1, train_subset=1000)
    text = text.replace('name = "game"', 'name = "slimming"\nl1 = 0.1\nbudget = 0.5').split("beta =")[0]
    results = run(parse_config(text), tmp_path / "r", quiet=True)
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] > 2.303 > first["cross_entropy"]
    assert results["warnings"] == []


def test_a_layer_losing_every_player_keeps_one_and_the_run_says_which(tmp_path, data_root, caplog):
    cfg = parse_config(small_config(data_root, epochs=1, finetune=0, train_subset=2000, gamma=50.0, lr_s=1.0))
    with caplog.at_level("WARNING", logger="equiprune"):
        results = run(cfg, tmp_path / "r", quiet=True)
    assert results["kept"] == {"1": 1, "3": 1}
    said = [w for w in results["warnings"] if w.startswith("every player would leave layer")]
    assert [w.split("'")[1] for w in said] == ["1", "3"] and said[0] in caplog.text
    assert json.loads((tmp_path / "r" / "results.json").read_text())["warnings"] == results["warnings"]


def test_cli_rejects_bad_config_before_training(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[method]\nname = "game"\nbeta = -1\n')
    proc = subprocess.run([sys.executable, "-m", "equiprune.cli", "run", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env={**os.environ})  # fmt: skip
    assert proc.returncode == 2
    assert "equiprune: error:" in proc.stderr and "method.beta: must be a finite number >= 0, got -1" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_runs_in_two_threads_each_name_their_own_warnings(caplog):
    import threading

    from equiprune.progress import concerning, logger

    both_inside = threading.Barrier(2)

    def run(label):
        with concerning(label):
            both_inside.wait()  # the other thread's label is set too by now
            logger.warning("epoch 1")
            both_inside.wait()

    with caplog.at_level(logging.WARNING, logger="equiprune"):
        threads = [threading.Thread(target=run, args=(f"runs/{name}",)) for name in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logger.warning("after")
    assert sorted(r.getMessage() for r in caplog.records) == ["after", "runs/a: epoch 1", "runs/b: epoch 1"]


def test_a_warning_names_what_it_concerns_and_the_innermost_label_wins(caplog):
    from equiprune.progress import concerning, logger

    with caplog.at_level(logging.INFO, logger="equiprune"):
        logger.warning("plain")
        with concerning("runs/a"):
            logger.info("an epoch line")  # only warnings: a run's own progress lines stay as they are
            logger.warning("%d%% kept", 5)
            with concerning("runs/a/100%"):  # a % in the label is text, not a format
                logger.warning("inner %s", "x")
            logger.warning("back")
        logger.warning("after")
    assert [r.getMessage() for r in caplog.records] == [
        "plain", "an epoch line", "runs/a: 5% kept", "runs/a/100%: inner x", "runs/a: back", "after",
    ]  # fmt: skip

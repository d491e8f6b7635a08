"""Data-parallel runs with 2 gloo processes on CPU (torchrun): every method trains alike on both
ranks, two ranks match one process with the same global batch, a killed run resumes, bad input
is refused on every rank. The worker that torchrun starts is tests/distributed_worker.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equiprune.config import parse_config
from equiprune.experiments import distributed
from equiprune.experiments.loop import run
from equiprune.methods import METHODS

from .distributed_worker import RecordStates
from .helpers import mlp_config

WORKER = Path(__file__).with_name("distributed_worker.py")
BEST = Path(__file__).parents[1] / "configs" / "game_mnist" / "equiprune-best.toml"


def best_game() -> str:
    """The [method] table of equiprune-best: anchored Newton play, whose Fisher information is the
    one statistic the ranks must all-reduce themselves."""
    return BEST.read_text().split("[method]")[1].strip()


def config(data_root, method: str, batch_size: int) -> str:
    text = mlp_config(data_root, method, train_subset=1024, test_subset=500, epochs=3, finetune=1)
    return text.replace("[model]", f"batch_size = {batch_size}\n[model]")


def torchrun(runs: list[dict], tmp: Path, *args: str) -> subprocess.CompletedProcess:
    spec = tmp / f"runs-{len(list(tmp.glob('runs-*.json')))}.json"
    spec.write_text(json.dumps(runs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(spec), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)


def method_bodies(out: Path) -> dict[str, str]:
    """Every registered method with its defaults, the game's equiprune-best, and a ticket of imp's run."""
    bodies = {name: f'name = "{name}"' for name in sorted(METHODS.names()) if name != "ticket"}
    bodies["game-best"] = best_game()
    bodies["ticket"] = f'name = "ticket"\nsource = "{out / "imp"}"\nround = 1'  # after imp: dicts keep order
    return bodies


@pytest.fixture(scope="module")
def two_ranks(data_root, tmp_path_factory):
    """One torchrun of 2 ranks training every method (tiny MLP, 3 epochs, 16 per rank and step)."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "runs"
    bodies = method_bodies(out)
    runs = [{"config": config(data_root, body, 32), "out": str(out / label)} for label, body in bodies.items()]
    done = torchrun(runs, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def states(run_dir: Path, rank: int) -> list[dict[str, torch.Tensor]]:
    return torch.load(run_dir / f"states-rank{rank}.pt")


def test_every_method_holds_the_same_state_on_both_ranks_after_every_epoch(two_ranks):
    labels = sorted(p.name for p in two_ranks.iterdir())
    assert set(labels) == set(METHODS.names()) | {"game-best"}
    for label in labels:
        zero, one = states(two_ranks / label, 0), states(two_ranks / label, 1)
        assert len(zero) == len(one) == 3, label
        for epoch, (a, b) in enumerate(zip(zero, one)):
            assert a.keys() == b.keys()
            unequal = [k for k in a if not torch.equal(a[k], b[k])]
            assert not unequal, f"{label}, epoch {epoch + 1}: {unequal} differ between the ranks"
        results = json.loads((two_ranks / label / "results.json").read_text())
        assert results["environment"]["processes"] == 2


def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks, data_root, tmp_path):
    """2 ranks of 32 against 1 process of 64: the same batches, sums in another order only."""
    one = RecordStates(None, None)
    results = run(parse_config(config(data_root, best_game(), 64)), tmp_path / "one", quiet=True, hooks=[one])
    two = json.loads((two_ranks / "game-best" / "results.json").read_text())
    assert results["kept"] == two["kept"]
    assert abs(results["test_accuracy"] - two["test_accuracy"]) <= 0.005
    for a, b in zip(one.states, states(two_ranks / "game-best", 0)):
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    lines = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (two_ranks / "game-best" / "metrics.jsonl").read_text().splitlines()]
    for mine, other in zip(lines, theirs):  # the whole global batch's loss, not rank 0's share
        assert mine["loss"] == pytest.approx(other["loss"], rel=1e-5)
        assert mine["train_accuracy"] == pytest.approx(other["train_accuracy"])


def test_a_killed_distributed_run_resumes_to_the_uninterrupted_result(two_ranks, data_root, tmp_path):
    out = tmp_path / "killed"
    runs = [{"config": config(data_root, best_game(), 32), "out": str(out)}]
    died = torchrun(runs, tmp_path, "--die-rank", "1", "--die-after", "2")
    assert died.returncode != 0
    assert not (out / "results.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2
    resumed = torchrun(runs, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    mine = json.loads((out / "results.json").read_text())
    uninterrupted = json.loads((two_ranks / "game-best" / "results.json").read_text())
    assert (mine["test_accuracy"], mine["kept"]) == (uninterrupted["test_accuracy"], uninterrupted["kept"])
    last, reference = states(out, 0)[-1], states(two_ranks / "game-best", 0)[-1]
    assert all(torch.equal(last[k], reference[k]) for k in reference)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "equiprune", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_equiprune_run_nproc_writes_one_result_and_refuses_a_finished_directory_on_every_rank(data_root, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(config(data_root, 'name = "game"', 32))
    out = tmp_path / "run"
    done = cli("run", str(cfg), "--out", str(out), "--nproc", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"test_accuracy"') == 1  # rank 0 alone prints
    assert json.loads((out / "results.json").read_text())["environment"]["processes"] == 2
    again = cli("run", str(cfg), "--out", str(out), "--nproc", "2", "--quiet")  # rank 0 refuses, rank 1 follows
    assert again.returncode != 0
    assert "already holds a finished run" in again.stderr and "--resume" in again.stderr


def test_nproc_beyond_the_machine_is_refused(data_root, tmp_path, capsys):
    from equiprune.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(config(data_root, 'name = "game"', 32))
    slots, what = distributed.available_slots("cpu")
    for n in (0, slots + 1):
        assert main(["run", str(cfg), "--out", str(tmp_path / "x"), "--nproc", str(n)]) == 2
        err = capsys.readouterr().err
        assert f"--nproc {n}" in err and f"{slots} {what}" in err
    assert not (tmp_path / "x").exists()


def test_a_distributed_run_without_a_rendezvous_says_how_to_start_one(data_root, tmp_path, monkeypatch, capsys):
    from equiprune.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(config(data_root, 'name = "game"', 32))
    for key in distributed.RENDEZVOUS_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "MASTER_ADDR" in err and "torchrun --nproc_per_node" in err and "--nproc N" in err


def test_a_failed_rank_under_nproc_says_where_the_run_stands(data_root, tmp_path, monkeypatch, capsys):
    from equiprune.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(config(data_root, 'name = "game"', 32))
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda n, device, argv: launched.append((n, argv)) or 1)
    assert main(["run", str(cfg), "--out", str(tmp_path / "x"), "--nproc", "2", "--resume"]) == 2
    assert launched == [(2, ["run", str(cfg), "--out", str(tmp_path / "x"), "--resume"])]
    err = capsys.readouterr().err
    assert "a rank of the 2-process run exited with status 1" in err and "--resume" in err

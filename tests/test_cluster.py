"""Sweeps as cluster jobs through submitit (its local executor stands in for Slurm here): results
gathered by the submitting process, a killed submitter resumed with no run lost or run twice, a
job that waits for the run another job holds, requeue on preemption, and the errors."""

import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from equiprune import io
from equiprune.errors import ConfigError, EquipruneError
from equiprune.experiments import cluster
from equiprune.experiments.store import ResultStore
from equiprune.experiments.sweep import _execute, _execute_claimed, load_sweep, run_sweep


def sweep_file(tmp_path: Path, data_root: Path, gammas=(0.1, 0.2, 0.3, 0.4), seeds=(0, 1, 2)) -> Path:
    points = ", ".join(f"{{ gamma = {g} }}" for g in gammas)
    path = tmp_path / "sweep.toml"
    path.write_text(f"""
name = "cluster"
seeds = {list(seeds)}
[base]
device = "cpu"
data = {{ dataset = "mnist", root = "{data_root}", train_subset = 500, test_subset = 300 }}
model = {{ hidden = [16] }}
train = {{ epochs = 2, finetune_epochs = 1 }}
[[methods]]
name = "game"
points = [{points}]
""")
    return path


def outcomes(folder: Path) -> list[tuple]:
    """Every (what to count, status, results) that a job of ``folder`` returned."""
    found = []
    for path in sorted(folder.glob("*_result.pkl")):
        with open(path, "rb") as f:
            status, value = pickle.load(f)
        assert status == "success", value
        found += value
    return found


def test_a_killed_submitter_resumes_with_no_run_lost_or_run_twice(data_root, tmp_path):
    spec, out = sweep_file(tmp_path, data_root), tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "equiprune",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--executor",
        "local",
        "--quiet",
    ]
    submitter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("runs/**/results.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    submitter.send_signal(signal.SIGKILL)  # no clean-up: its jobs go on without it
    submitter.wait()
    with ResultStore(out / "results.sqlite") as store:
        assert len(store) < 12  # it died before gathering everything
    done = run_sweep(load_sweep(spec), out, quiet=True, cluster=cluster.ClusterSettings("local"))
    assert done["ran"] + done["resumed"] + done["gathered"] + done["skipped"] == 12 and done["failed"] == 0
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows()
    assert len(rows) == 12 and {r["status"] for r in rows} == {"finished"}
    submitted = len(list((out / "submitit").glob("*_submitted.pkl")))
    while len(list((out / "submitit").glob("*_result.pkl"))) < submitted and time.monotonic() < deadline:
        time.sleep(0.2)  # the first call's last jobs write their results just after their run
    ran = [how for how, _, _ in outcomes(out / "submitit") if "ran" in how]
    assert len(ran) == 12  # every run started from scratch once, by one job of either call


def test_a_job_waits_for_the_job_that_holds_its_run_then_finds_it_finished(data_root, tmp_path):
    planned = load_sweep(sweep_file(tmp_path, data_root, gammas=(0.1,), seeds=(0,))).runs[0]
    out = tmp_path / "out"
    assert _execute(planned, out)[0] == ("ran",)
    held = threading.Event()

    def hold_the_claim():
        with io.exclusive(out / "runs" / f"{planned.run_id}.claim", "an earlier job"):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold_the_claim)
    holder.start()
    held.wait()
    start = time.monotonic()
    how, status, results = _execute_claimed(planned, out)
    assert time.monotonic() - start > 1.0  # waited for the holder
    assert (how, status) == ((), "finished") and results["seed"] == 0
    holder.join()


def test_a_preempted_job_is_requeued_with_the_same_lane():
    job = cluster.LaneJob(len, threads=None)
    assert job(["ab", "cde"]) == [2, 3]
    again = job.checkpoint(["ab", "cde"])
    assert again.function is job and again.args == (["ab", "cde"],)


def test_cluster_settings_and_a_missing_submitit_are_clear_errors(data_root, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--executor: got 'pbs', expected one of \['pool', 'local', 'slurm'\]"):
        cluster.ClusterSettings("pbs")
    with pytest.raises(ConfigError, match="--timeout-min: must be at least 1"):
        cluster.ClusterSettings("slurm", timeout_min=0)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    sweep = load_sweep(sweep_file(tmp_path, data_root, gammas=(0.1,), seeds=(0,)))
    with pytest.raises(EquipruneError, match=r"pip install 'equiprune\[cluster\]'"):
        run_sweep(sweep, tmp_path / "out", quiet=True, cluster=cluster.ClusterSettings("slurm"))
    assert not (tmp_path / "out" / "runs").exists()  # refused before any run

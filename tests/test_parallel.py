"""Lanes of work in worker processes: every item once, a lane's items in order, errors raised."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from equiprune.errors import ConfigError
from equiprune.experiments.executors import cores, run_lanes


def square(x: int) -> int:
    return x * x


def threads_of_worker(_: int) -> int:
    return torch.get_num_threads()


def fails_on_five(x: int) -> int:
    if x == 5:
        raise ValueError("item 5 is bad")
    return x


def test_every_item_runs_once_and_a_lanes_items_in_order():
    lanes = [[1, 2, 3], [4], [5, 6, 7], [8]]
    seen = []
    run_lanes(square, lanes, 2, lambda item, result: seen.append((item, result)))
    assert sorted(seen) == [(x, x * x) for x in range(1, 9)]
    for lane in lanes:
        assert [item for item, _ in seen if item in lane] == lane
    in_process = []
    run_lanes(square, lanes, 1, lambda item, result: in_process.append((item, result)))
    assert in_process == [(x, x * x) for x in range(1, 9)]


def test_workers_share_the_cores_as_threads():
    threads = []
    run_lanes(threads_of_worker, [[0], [1]], 2, lambda _, n: threads.append(n))
    assert threads == [max(1, cores() // 2)] * 2


def test_an_error_in_a_worker_is_raised_here():
    with pytest.raises(ValueError, match="item 5 is bad"):
        run_lanes(fails_on_five, [[1, 2], [5], [6]], 2, lambda *_: None)
    with pytest.raises(ConfigError, match="--jobs"):
        run_lanes(square, [[1]], 0, lambda *_: None)


def report_pid_and_wait(folder: str) -> None:
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(120)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_when_the_sweep_process_is_killed(tmp_path, sig):
    script = (
        "from equiprune.experiments.executors import run_lanes\n"
        "from tests.test_parallel import report_pid_and_wait\n"
        f"run_lanes(report_pid_and_wait, [[{str(tmp_path)!r}], [{str(tmp_path)!r}]], 2, lambda *_: None)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 180  # spawned workers import torch: slow on a loaded machine
    while len(list(tmp_path.iterdir())) < 2:  # both workers are inside an item
        assert parent.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    parent.send_signal(sig)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), f"workers {workers} outlived their parent killed by {sig.name}"

"""Lanes of work in worker processes: every item once, a lane's items in order, errors raised."""

import pytest
import torch

from equiprune.errors import ConfigError
from equiprune.parallel import cores, run_lanes


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

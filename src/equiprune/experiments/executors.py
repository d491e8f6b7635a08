"""Runs side by side: lanes of work items in worker processes, each item's result back as it ends.

A lane is a list of items that must run in order in one process (runs that share a training
phase: the first trains it, the others reuse it); lanes are independent of each other. On a small
CPU, small models gain more from runs side by side than from threads within a run (an MLP's step is
many small kernels, where a second thread adds synchronisation more than speed), so each worker
gets the machine's cores divided among the workers as its torch threads; a run's own ``threads``
setting still wins inside it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from equiprune.errors import ConfigError
from equiprune.progress import show_messages, shown_level

T = TypeVar("T")

_EVENTS = None  # in a worker: the queue back to the parent


def check_jobs(jobs: Any) -> int:
    if not (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
        raise ConfigError(f"--jobs: expected a whole number of runs at once >= 1, got {jobs!r}")
    return jobs


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_lanes(
    fn: Callable[[T], Any], lanes: Sequence[Sequence[T]], jobs: int, on_result: Callable[[T, Any], None]
) -> None:
    """Call ``fn(item)`` for every item, the lanes spread over ``jobs`` processes in the order given;
    ``on_result(item, result)`` runs in this process as each item ends. ``fn`` and the items must
    pickle (a module-level function, ``functools.partial`` of one). An exception in a worker stops
    the lanes not yet started and is raised here; with ``jobs == 1`` everything runs in this process."""
    check_jobs(jobs)
    if jobs == 1:
        for lane in lanes:
            for item in lane:
                on_result(item, fn(item))
        return
    ctx = multiprocessing.get_context("spawn")  # no forked copy of this process's torch threads
    events = ctx.Queue()
    threads = max(1, cores() // jobs)
    expected = sum(len(lane) for lane in lanes)
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads, events, shown_level())
    ) as pool:
        futures = [pool.submit(_run_lane, fn, list(lane), i) for i, lane in enumerate(lanes)]
        try:
            for _ in range(expected):
                lane, pos, result = _next_event(events, futures)
                on_result(lanes[lane][pos], result)
            for f in futures:
                f.result()
        except BaseException:
            # Stop now rather than after the other workers' lanes: a run killed mid-way resumes
            # from its last checkpoint next time. (ProcessPoolExecutor has no public way to do it.)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)  # lanes not started never start
            raise


def _next_event(events, futures) -> tuple[int, int, Any]:
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            pass
        # A worker that raised reports nothing more: raise its error here.
        crashed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if crashed is not None:
            raise crashed.exception()


def _init_worker(threads: int, events, message_level: int | None) -> None:
    global _EVENTS
    _EVENTS = events
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    if message_level is not None:  # a spawned worker starts unconfigured: show what the parent shows
        show_messages(message_level)
    torch.set_num_threads(threads)


def _exit_with_parent() -> None:
    """End this worker as soon as the parent process is gone. A parent killed by a signal it cannot
    handle (SIGKILL, or SIGTERM from a job scheduler) never terminates its workers, and they would go
    on training for nobody, holding the cores and the run directories; the runs they leave resume
    from their last checkpoint, as after any kill."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _run_lane(fn: Callable[[T], Any], lane: list[T], index: int) -> None:
    for pos, item in enumerate(lane):
        _EVENTS.put((index, pos, fn(item)))

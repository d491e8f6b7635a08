"""Lanes of work as cluster jobs through submitit: one job per lane (a lane of one run is a job per
run), submitted as one job array, each item's result gathered back here as its job ends.

A job that Slurm preempts or times out is requeued (submitit calls :meth:`LaneJob.checkpoint`)
and runs its lane again; the work items themselves must make that cheap, as a sweep's runs do by
resuming from their last epoch's checkpoint. ``local`` runs the same jobs as processes on this
machine (submitit's local executor): the way to try a cluster sweep, and the tests' way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from equiprune.errors import ConfigError, EquipruneError
from equiprune.experiments.executors import cores
from equiprune.extras import require_extra

T = TypeVar("T")

EXECUTORS = ("pool", "local", "slurm")  # pool: this machine's process pool (experiments.executors)


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how the jobs run. ``threads``: torch threads per job (None: the job's CPUs on
    Slurm, this machine's cores shared among the jobs when local)."""

    executor: str = "slurm"  # "local" or "slurm"
    partition: str | None = None
    timeout_min: int = 24 * 60
    cpus_per_job: int = 1
    gpus_per_job: int = 0
    array_parallelism: int = 64
    threads: int | None = None

    def __post_init__(self):
        if self.executor not in EXECUTORS[1:]:
            raise ConfigError(f"--executor: got {self.executor!r}, expected one of {list(EXECUTORS)}")
        for name in ("timeout_min", "cpus_per_job", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_job < 0:
            raise ConfigError(f"--gpus-per-job: must be at least 0, got {self.gpus_per_job}")


def submitit_module():
    """submitit, or an error saying how to get it."""
    return require_extra("cluster", "--executor local/slurm (jobs submitted through submitit)", "submitit")


class LaneJob:
    """What one job runs: ``fn`` on every item of its lane, in order. Picklable; ``checkpoint``
    tells submitit to requeue the same lane after a preemption or a time-out."""

    def __init__(self, fn: Callable[[T], Any], threads: int | None):
        self.fn, self.threads = fn, threads

    def __call__(self, lane: list[T]) -> list[Any]:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return [self.fn(item) for item in lane]

    def checkpoint(self, lane: list[T]):
        return submitit_module().helpers.DelayedSubmission(self, lane)


def _executor(settings: ClusterSettings, folder: Path):
    submitit = submitit_module()
    executor = submitit.AutoExecutor(folder=folder, cluster=settings.executor)
    executor.update_parameters(timeout_min=settings.timeout_min, cpus_per_task=settings.cpus_per_job,
                               gpus_per_node=settings.gpus_per_job, slurm_array_parallelism=settings.array_parallelism,
                               **({"slurm_partition": settings.partition} if settings.partition else {}))  # fmt: skip
    return executor


def submit_lanes(
    fn: Callable[[T], Any],
    lanes: Sequence[Sequence[T]],
    settings: ClusterSettings,
    folder: Path,
    on_result: Callable[[T, Any], None],
) -> None:
    """Run ``fn`` on every item, one job per lane, the jobs' logs in ``folder``; ``on_result(item,
    result)`` runs here as each job ends. A job that failed is named, with its log, after the others
    have been gathered."""
    if not lanes:
        return
    submitit = submitit_module()
    threads = settings.threads
    if threads is None:
        threads = max(1, cores() // len(lanes)) if settings.executor == "local" else settings.cpus_per_job
    executor = _executor(settings, folder)
    try:
        jobs = executor.map_array(LaneJob(fn, threads), [list(lane) for lane in lanes])
    except Exception as exc:  # sbatch missing or refusing: say so in our words
        raise EquipruneError(f"submitting {len(lanes)} job(s) to {settings.executor} failed: {exc}") from exc
    lane_of = {job.job_id: list(lane) for job, lane in zip(jobs, lanes)}
    failed = []
    poll = 1.0 if settings.executor == "local" else 30.0  # Slurm's accounting is asked, not a process
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
        try:
            results = job.result()
        except Exception as exc:  # noqa: BLE001 - every failure is reported below, after the others
            failed.append(f"job {job.job_id} ({exc.__class__.__name__}; log {job.paths.stderr})")
            continue
        for item, result in zip(lane_of[job.job_id], results):
            on_result(item, result)
    if failed:
        raise EquipruneError(f"{len(failed)} of {len(jobs)} job(s) failed: " + "; ".join(failed)
                             + ". Call the same command again to run what is missing")  # fmt: skip

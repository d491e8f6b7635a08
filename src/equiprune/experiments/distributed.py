"""Data-parallel runs: one process per rank, started by torchrun or by ``equiprune run --nproc N``.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts;
:func:`process_group` joins that run (gloo on CPU, NCCL on GPUs), :func:`data_parallel` wraps the
model being trained in DistributedDataParallel, and :func:`agree` lets rank 0 decide what every
rank must do alike (resume or not; a refusal). Everything the methods read besides the averaged
gradients is either computed from data every rank holds in full (calibration, the test split), or
all-reduced where it is made (the game's Fisher information: ``PerExampleGateGrads.fisher``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from equiprune.errors import ConfigError, EquipruneError
from equiprune.experiments.executors import cores
from equiprune.experiments.setup import dist_info

T = TypeVar("T")

#: what torchrun puts into every process's environment; a distributed run cannot start without it
RENDEZVOUS_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: how long a rank waits for the others at start-up and at every collective: long enough for rank
#: 0 to write a checkpoint, short enough that a wedged run ends with an error the same day
COLLECTIVE_TIMEOUT = timedelta(minutes=15)


def launched_world_size() -> int:
    """The number of processes torchrun started, 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} in the environment is not a number") from None


def uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


@contextmanager
def process_group(device: str):
    """Join the distributed run torchrun started, for the duration of the block (nothing when this
    process was not started by torchrun, or already belongs to a process group)."""
    if launched_world_size() <= 1 or dist.is_initialized():
        yield
        return
    missing = [key for key in RENDEZVOUS_KEYS if key not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run, but {', '.join(missing)} "
            "is not set; start it with `torchrun --nproc_per_node=N -m equiprune run ...` or "
            "`equiprune run --nproc N ...`, which set the rendezvous"
        )
    cuda = uses_cuda(device)
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def several_ranks() -> bool:
    return dist_info()[1] > 1


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel inside a process group of more than one rank,
    else ``model`` itself. The graph is declared static (the parameters a step uses are the same in
    every step, as in every method here): DDP then finds any unused ones once, in the first step,
    instead of searching the graph at every step; gradients live in DDP's buckets (one copy less)."""
    if not several_ranks():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True, gradient_as_bucket_view=True)


def agree(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 alone and its value given to every rank; a refusal (an
    EquipruneError) on rank 0 is raised on every rank, so that none waits for the others forever."""
    if not several_ranks():
        return decide()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", decide())
        except EquipruneError as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank (``values`` themselves outside a distributed run): an
    epoch's loss and accuracy are the whole global batch's, not rank 0's share."""
    if not several_ranks():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def available_slots(device: str) -> tuple[int, str]:
    """How many ranks this machine can give a run on ``device``, and what they are."""
    if uses_cuda(device):
        return torch.cuda.device_count(), "GPUs"
    return cores(), "CPU cores"


def launch(nproc: int, device: str, argv: list[str]) -> int:
    """Start ``equiprune ARGV`` as ``nproc`` ranks on this machine through torchrun (standalone
    rendezvous); returns its exit status. Each CPU rank gets cores/nproc threads."""
    slots, what = available_slots(device)
    if nproc < 1 or nproc > slots:
        raise ConfigError(f"--nproc {nproc}: this machine has {slots} {what} (device {device!r}); "
                          f"use --nproc between 1 and {slots}")  # fmt: skip
    env = dict(os.environ)
    if not uses_cuda(device):
        env.setdefault("OMP_NUM_THREADS", str(max(1, slots // nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "equiprune", *argv]  # fmt: skip
    return subprocess.run(command, env=env).returncode

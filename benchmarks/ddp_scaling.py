"""Data-parallel scaling on CPU: one step of a global batch on one process against the same global
batch split over two gloo ranks (torchrun), the game (equiprune-best's anchored Newton play) on
the paper's MLP 784-512-256-10.

Each round starts both sides afresh, one after the other, the order reversed every other round:
one process with all the machine's cores as threads, and two ranks of half the batch with half the
cores each. Each side times ``--steps`` steps after a warm-up, in blocks of 10, and reports the
median block's mean step. The two-rank side also checks that every rank holds the same weights,
gates and participations after the last step.
``speedup`` is the one-process step over the two-rank step, ``scaling_efficiency`` that over 2
(1.0: two processes do the work in half the time).

    python benchmarks/ddp_scaling.py [--rounds 5] [--steps 60] [--batch 256]

The last line printed is ``scaling_efficiency=<median over rounds>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from equiprune.experiments.distributed import data_parallel, process_group
from equiprune.experiments.executors import cores
from equiprune.experiments.reproduce import bundled_config
from equiprune.experiments.timing import alternating, paired_ratios
from equiprune.methods import build_method
from equiprune.models import mlp
from protocol import add_results_argument, print_machine, record

BLOCK = 10  # steps per timed block


def state_tensors(gated, method) -> list[torch.Tensor]:
    """Everything the game plays with: weights, gates, and the method's own state (strategies)."""
    own = [v for value in method.state_dict().values() for v in (value if isinstance(value, list) else [value])]
    return [*gated.state_dict().values(), *(t for t in own if isinstance(t, torch.Tensor))]


def worker(batch: int, steps: int) -> None:
    """One side: time ``steps`` steps of ``batch`` examples per rank; rank 0 prints the figures."""
    with process_group("cpu"):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        torch.manual_seed(0)
        settings = {**dataclasses.asdict(bundled_config("game-mnist", "equiprune-best").method.settings), "start": 0.0}
        method = build_method("game", settings=settings)
        gated = method.prepare(mlp(hidden=(512, 256)))
        method.before_run(gated, steps_per_epoch=469, epochs=20)
        forward = data_parallel(gated, torch.device("cpu"))
        opt = torch.optim.Adam(method.weight_parameters(gated), lr=1e-3)
        g = torch.Generator().manual_seed(rank)
        x, y = torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)

        def step():
            gated.zero_grad(set_to_none=True)
            F.cross_entropy(forward(x), y).backward()
            opt.step()
            method.after_step(gated)

        for _ in range(10):  # warm-up: allocator, Adam state, DDP buckets
            step()
        times = []
        for _ in range(steps // BLOCK):  # blocks of steps: a barrier per step would time the barrier
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            for _ in range(BLOCK):
                step()
            times.append((time.perf_counter() - start) / BLOCK)
        state = torch.cat([t.detach().float().flatten() for t in state_tensors(gated, method)])
        equal = True
        if world > 1:
            low, high = state.clone(), state.clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            equal = bool(torch.equal(low, high))
        if rank == 0:
            print(json.dumps({"step_ms": 1e3 * statistics.median(times), "equal": equal, "world": world,
                              "threads": torch.get_num_threads()}))  # fmt: skip


def side(ranks: int, global_batch: int, steps: int) -> dict:
    """Start one side in fresh processes and return rank 0's figures."""
    threads = max(1, cores() // ranks)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    here = str(Path(__file__).resolve())
    args = ["--worker", "--batch", str(global_batch // ranks), "--steps", str(steps)]
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={ranks}"]  # fmt: skip
    done = subprocess.run([*launcher, here, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per side and round")
    ap.add_argument("--batch", type=int, default=256, help="the global batch (even)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_results_argument(ap)
    args = ap.parse_args()
    if args.worker:
        return worker(args.batch, args.steps)
    if args.rounds < 1 or args.steps < BLOCK or args.batch < 2 or args.batch % 2:
        ap.error(f"--rounds must be >= 1, --steps >= {BLOCK}, --batch even and >= 2")
    machine = print_machine()
    sides: dict[str, list[dict]] = {"one": [], "two": []}
    for name in alternating(["one", "two"], args.rounds):
        sides[name].append(side(1 if name == "one" else 2, args.batch, args.steps))
    one = [f["step_ms"] for f in sides["one"]]
    two = [f["step_ms"] for f in sides["two"]]
    speedup = paired_ratios(one, two)
    equal = all(f["equal"] for f in sides["two"])
    print(f"MLP 784-512-256-10 under the game (equiprune-best), global batch {args.batch}, {args.steps} steps per "
          f"side, {args.rounds} rounds; one process with {sides['one'][0]['threads']} threads against 2 gloo "
          f"ranks with {sides['two'][0]['threads']} each")  # fmt: skip
    print(f"step: one process {statistics.median(one):.2f} ms (rounds {min(one):.2f}-{max(one):.2f}), "
          f"two ranks {statistics.median(two):.2f} ms (rounds {min(two):.2f}-{max(two):.2f})")  # fmt: skip
    print(f"weights, gates and participations equal on both ranks after the last step: "
          f"{'yes, every round' if equal else 'NO'}")  # fmt: skip
    print(f"speedup={speedup['median']:.3f} (rounds {speedup['min']:.3f}-{speedup['max']:.3f})")
    efficiency = speedup["median"] / 2
    figures = {"speedup": speedup, "scaling_efficiency": efficiency, "one_ms": one, "two_ms": two, "equal": equal}
    record(args.results, "ddp_scaling", machine, figures)
    print(f"scaling_efficiency={efficiency:.3f}")


if __name__ == "__main__":
    main()

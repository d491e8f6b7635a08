"""Time a training step with the equilibrium pruner against the same step without it.

Both steps run side by side in one process on the paper's MLP (784-512-256-10), batch 128, with
the same optimizer. Every variant is built ``--copies`` times (same seed, tensors in different
places in memory: on a 2-core machine one instance alone can sit a few percent fast or slow), and
each round times a block of steps of every instance in a shuffled order; a round's ratio is the
mean game block over the mean plain block of that round, so drift hits both alike, and the figure
is the median of the rounds' ratios. ``noise=`` is the same statistic for one plain instance
against another: how far from 1 a ratio of two identical steps lands on this machine.

The last line printed is ``ratio=<game step time / plain step time>`` for the paper's
configuration (η = 0); lines above give it for the settings of ``equiprune-best``
(``ratio_best=``) and for the Newton update of the sweeps' ``game-newton`` (``ratio_newton=``:
per-example gate gradients recorded in every backward pass for the Fisher information; timed with
the game on from the first step).

    python benchmarks/step_overhead.py [--rounds 40] [--block 20] [--copies 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

import torch
import torch.nn.functional as F

from equiprune.config import shipped_config
from equiprune.experiments.reproduce import bundled_config
from equiprune.experiments.sweep import load_sweep
from equiprune.experiments.timing import wait_for_device
from equiprune.methods import build_method
from equiprune.models import mlp
from protocol import add_device_argument, add_results_argument, checked_device, print_machine, record

PAPER = "game (l1-l2-combined, eta=0)"
BEST = "game (equiprune-best)"
NEWTON = "game (game-newton, update=newton)"


def sweep_settings(sweep: str, label: str, point: str) -> dict:
    """A method's settings at one point of a sweep shipped with equiprune."""
    planned = load_sweep(shipped_config("sweeps", f"{sweep}.toml")).runs
    return dataclasses.asdict(next(r for r in planned if r.label == label and r.point == point).config.method.settings)


def make_step(method_settings: dict | None, x, y):
    torch.manual_seed(0)
    model = mlp(hidden=(512, 256)).to(x.device)
    method = build_method("game", settings=method_settings) if method_settings is not None else None
    trained = method.prepare(model) if method else model
    params = method.weight_parameters(trained) if method else list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    if method:
        method.before_run(trained, steps_per_epoch=469, epochs=20)

    def step():
        trained.zero_grad(set_to_none=True)
        F.cross_entropy(trained(x), y).backward()
        opt.step()
        if method:
            method.after_step(trained)

    return step


def time_block(step, n: int) -> float:
    wait_for_device()
    start = time.perf_counter()
    for _ in range(n):
        step()
    wait_for_device()
    return (time.perf_counter() - start) / n


def round_ratios(times: dict[str, list[list[float]]], name: str, reference: str) -> list[float]:
    """Per round: the mean block time of ``name``'s instances over that of ``reference``'s."""
    return [statistics.fmean(a) / statistics.fmean(b) for a, b in zip(times[name], times[reference])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--block", type=int, default=20, help="steps per timed block")
    ap.add_argument("--copies", type=int, default=2, help="instances of every variant")
    add_device_argument(ap)
    add_results_argument(ap)
    args = ap.parse_args()
    if args.rounds < 1 or args.block < 1 or args.copies < 2:
        ap.error("--rounds and --block must be >= 1 and --copies >= 2 (noise= compares two plain instances)")
    device = checked_device(ap, args.device)
    machine = print_machine(device)
    x, y = torch.randn(128, 1, 28, 28).to(device), torch.randint(0, 10, (128,)).to(device)
    settings = {
        "plain": None,
        PAPER: {"beta": 0.05, "gamma": 0.05},
        # with the game on from the first step instead of after a dense start, so that every
        # timed step is a game step
        BEST: {**dataclasses.asdict(bundled_config("game-mnist", "equiprune-best").method.settings), "start": 0.0},
        # the sweep's γ 0.2 (about 5% kept)
        NEWTON: {**sweep_settings("mnist_mlp_neurons", "game-newton", "gamma=0.2"), "start": 0.0},
    }
    instances = [(name, make_step(cfg, x, y)) for _ in range(args.copies) for name, cfg in settings.items()]
    for _, step in instances:  # warm-up: allocator, Adam state, kernels
        time_block(step, args.block)
    order = random.Random(0)
    times: dict[str, list[list[float]]] = {name: [] for name in settings}  # per round, each instance's
    for _ in range(args.rounds):
        measured = [(name, time_block(step, args.block)) for name, step in order.sample(instances, len(instances))]
        for name in settings:
            times[name].append([t for n, t in measured if n == name])  # instances in their build order
    per_round = {name: round_ratios(times, name, "plain") for name in settings}
    ratios = {name: statistics.median(r) for name, r in per_round.items()}
    noise = statistics.median(ts[1] / ts[0] for ts in times["plain"])
    plain_ms = 1e3 * statistics.median(statistics.fmean(ts) for ts in times["plain"])
    print(f"MLP 784-512-256-10, batch 128, "
          f"{args.rounds} rounds x {args.block} steps x {args.copies} instances; plain step {plain_ms:.3f} ms; "
          "median over rounds of each round's ratio to the plain step:")  # fmt: skip
    spread = {}
    for name in settings:
        q = statistics.quantiles(per_round[name], n=4) if args.rounds > 1 else [ratios[name]] * 3
        spread[name] = {"median": ratios[name], "quartiles": [q[0], q[2]], "rounds": per_round[name]}
        print(f"  {name:<36} x{ratios[name]:.3f}   (rounds' quartiles {q[0]:.3f}-{q[2]:.3f})")
    record(args.results, "step_overhead", machine,
           {"ratio": ratios[PAPER], "ratio_best": ratios[BEST], "ratio_newton": ratios[NEWTON], "noise": noise,
            "plain_step_ms": plain_ms, "variants": spread})  # fmt: skip
    print(f"noise={noise:.3f}")
    print(f"ratio_newton={ratios[NEWTON]:.3f}")
    print(f"ratio_best={ratios[BEST]:.3f}")
    print(f"ratio={ratios[PAPER]:.3f}")


if __name__ == "__main__":
    main()

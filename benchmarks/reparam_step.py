"""Time a training step of each continuous sparsifier against the same plain step.

LeNet-300-100 (784-300-100-10), batch 128, SGD with momentum, one process: a plain step and a
step under ``spred``, ``pilot``, ``str`` and ``cs`` (every weight reparametrised, the method's
penalty in the loss) run in alternation (the order reversed every other round), a block of steps
each, and each round's ratio is the method's block time over the plain block's in that round. The
figures are the median ratio over the rounds and their lowest and highest.

The last line is ``ratio=<pilot step / plain step>``; ``ratio_spred=``, ``ratio_str=`` and
``ratio_cs=`` come above it.

    python benchmarks/reparam_step.py [--rounds 30] [--block 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from equiprune.experiments.timing import interleave, paired_ratios
from equiprune.methods import build_method
from equiprune.models import mlp
from protocol import add_results_argument, print_machine, record

METHODS = ("spred", "pilot", "str", "cs")


def make_step(name: str | None, x, y):
    torch.manual_seed(0)
    model = mlp(hidden=(300, 100))
    method = build_method(name) if name else None
    trained = method.prepare(model) if method else model
    params = method.weight_parameters(trained) if method else list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    if method:
        method.before_run(trained, steps_per_epoch=469, epochs=10)

    def step():
        trained.zero_grad(set_to_none=True)
        loss = F.cross_entropy(trained(x), y)
        extra = method.penalty(trained) if method else None
        (loss + extra if extra is not None else loss).backward()
        opt.step()
        if method:
            method.after_step(trained)

    return step


def block(step, n: int):
    def run():
        for _ in range(n):
            step()

    return run


def step_arguments(doc: str) -> argparse.Namespace:
    """The command line of a benchmark that times blocks of steps: --rounds, --block, --results."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=20, help="steps per timed block")
    add_results_argument(ap)
    args = ap.parse_args()
    if args.rounds < 1 or args.block < 1:
        ap.error("--rounds and --block must be >= 1")
    return args


def time_steps(names, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per block of ``steps`` steps, per round, for each method named (None: the plain
    step, reported as "plain"), on one batch of 128, warmed up and then run in alternation."""
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    sides = {name or "plain": block(make_step(name, x, y), steps) for name in names}
    for run in sides.values():  # warm-up: allocator, optimizer state, kernels
        run()
    return interleave(sides, rounds)


def median_step_ms(times: list[float], steps: int) -> float:
    return 1e3 * sorted(times)[len(times) // 2] / steps


def main() -> None:
    args = step_arguments(__doc__)
    machine = print_machine()
    times = time_steps((None, *METHODS), args.rounds, args.block)
    plain_ms = median_step_ms(times["plain"], args.block)
    print(f"LeNet-300-100, batch 128, SGD; {args.rounds} rounds x {args.block} steps, interleaved; "
          f"plain step {plain_ms:.3f} ms. Ratio to the plain step, median (lowest-highest round):")  # fmt: skip
    ratios = {name: paired_ratios(times[name], times["plain"]) for name in METHODS}
    for name, r in ratios.items():
        print(f"  {name:<6} x{r['median']:.3f}  ({r['min']:.3f}-{r['max']:.3f})")
    record(args.results, "reparam_step", machine, {"plain_step_ms": plain_ms, "ratios": ratios})
    for name in ("spred", "str", "cs"):
        print(f"ratio_{name}={ratios[name]['median']:.3f}")
    print(f"ratio={ratios['pilot']['median']:.3f}")


if __name__ == "__main__":
    main()

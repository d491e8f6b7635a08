"""Time a training step of concave-mask's joint mask and weight training against imp's.

LeNet-300-100 (784-300-100-10), batch 128, SGD with momentum, one process. An epoch of either
method is the same number of such steps over the same data, so the step ratio is the epoch ratio.
imp's step is a plain step followed by re-zeroing its pruned weights; concave-mask's computes every
weight as m ⊙ θ (a parametrisation), adds λ·R'(m) to the masks' gradient and projects the masks onto
[0, 1]. The three sides (plain, imp, concave-mask) run in alternation, a block of steps each (see
``reparam_step.py``, whose step this reuses), and each round's ratio is one block time over another's
in that round: the median over the rounds and the lowest and highest.

The last line is ``ratio=<concave-mask step / imp step>``.

    python benchmarks/lottery_cost.py [--rounds 30] [--block 20]
"""

from __future__ import annotations

import argparse

import torch

from equiprune.experiments.timing import interleave, paired_ratios
from protocol import add_results_argument, print_machine, record
from reparam_step import block, make_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=20, help="steps per timed block")
    add_results_argument(ap)
    args = ap.parse_args()
    if args.rounds < 1 or args.block < 1:
        ap.error("--rounds and --block must be >= 1")
    machine = print_machine()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    sides = {name or "plain": block(make_step(name, x, y), args.block) for name in (None, "imp", "concave-mask")}
    for run in sides.values():  # warm-up: allocator, optimizer state, kernels
        run()
    times = interleave(sides, args.rounds)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] / args.block for name, t in times.items()}
    print(f"LeNet-300-100, batch 128, SGD; {args.rounds} rounds x {args.block} steps, interleaved. Median step: "
          + ", ".join(f"{name} {v:.3f} ms" for name, v in ms.items()))  # fmt: skip
    ratios = {"concave-mask/imp": paired_ratios(times["concave-mask"], times["imp"]),
              "imp/plain": paired_ratios(times["imp"], times["plain"]),
              "concave-mask/plain": paired_ratios(times["concave-mask"], times["plain"])}  # fmt: skip
    for name, r in ratios.items():
        print(f"  {name:<19} x{r['median']:.3f}  ({r['min']:.3f}-{r['max']:.3f})")
    record(args.results, "lottery_cost", machine, {"step_ms": ms, "ratios": ratios})
    print(f"ratio={ratios['concave-mask/imp']['median']:.3f}")


if __name__ == "__main__":
    main()

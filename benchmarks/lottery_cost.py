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

from equiprune.experiments.timing import paired_ratios
from protocol import print_machine, record
from reparam_step import median_step_ms, step_arguments, time_steps


def main() -> None:
    args = step_arguments(__doc__)
    machine = print_machine()
    times = time_steps((None, "imp", "concave-mask"), args.rounds, args.block)
    ms = {name: median_step_ms(t, args.block) for name, t in times.items()}
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

"""Does compaction make a network really faster? Measured CPU latency against the FLOP ratio.

For each case, the model's players (ResNet-20: filters; ViT: attention heads and MLP units) are
pruned (L1-norm scores, the same fraction of every player group, coupled residual channels kept
together) to about the target fraction of its MACs (attention products included) and compacted
into a plain smaller model; both models get BatchNorm folded and are timed alternately
at batch 256 in eval mode (``equiprune.experiments.export.speed_report``). Weights need no training for a
timing, so the models are freshly initialised.

    speed-up            = dense latency / pruned latency
    FLOP ratio          = pruned MACs / dense MACs
    speed-up over FLOPs = speed-up × FLOP ratio   (1.0: latency falls exactly as FLOPs do)

The last line printed is ``worst_speedup_over_flop_ratio=<float>`` over all cases (each case's
median over the interleaved rounds); target ≥ 0.8.

    python benchmarks/compaction_speed.py [--batch 256] [--repeats 5] [--rounds 7] [--round-to 8] [--channels-last]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import copy

import torch

from equiprune.core.measure import count_macs
from equiprune.experiments.export import has_convolutions, speed_report
from equiprune.experiments.timing import paired_ratios
from equiprune.methods import build_method
from equiprune.models import create_model
from protocol import add_device_argument, add_results_argument, checked_device, print_machine, record

CASES = [  # (model, settings, input shape, target FLOP fraction)
    ("resnet20", {}, (3, 32, 32), 0.50),
    ("resnet20", {}, (3, 32, 32), 0.25),
    ("vit", {}, (3, 32, 32), 0.50),  # heads and MLP units; the embedding stream stays whole
    ("vit", {}, (3, 32, 32), 0.25),
]


def prune_to_flops(name: str, settings: dict, shape, target: float, round_to: int = 1):
    """The dense model and its L1-pruned compaction whose MACs are closest to ``target`` × dense,
    found by bisection on the fraction of players kept in every group (each group's width rounded to
    a multiple of ``round_to``, see the structured methods' ``round_to``)."""
    torch.manual_seed(0)
    dense = create_model(name, input_shape=shape, **settings).eval()
    full = count_macs(dense, shape)
    lo, hi, best = 0.05, 1.0, None
    for _ in range(12):
        budget = (lo + hi) / 2
        method = build_method("magnitude-l1", settings={"budget": budget, "round_to": round_to})
        small = method.finish(method.prepare(copy.deepcopy(dense))).model.eval()  # prepare gates in place
        ratio = count_macs(small, shape) / full
        if best is None or abs(ratio - target) < abs(best[1] - target):
            best = (small, ratio, budget)
        lo, hi = (budget, hi) if ratio < target else (lo, budget)
    return dense, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="forward passes per model in a round (their median)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (dense, pruned; pruned, dense; …)")
    p.add_argument("--round-to", type=int, default=1, help="keep widths that are multiples of this (default 1: exact)")
    p.add_argument("--channels-last", action="store_true", help="time both models with channels-last weights")
    add_device_argument(p)
    add_results_argument(p)
    args = p.parse_args()
    device = checked_device(p, args.device)
    machine = print_machine(device)
    rounding = f"; widths rounded to multiples of {args.round_to}" if args.round_to > 1 else ""
    rounding += "; convolution weights channels-last (the ViT has none)" if args.channels_last else ""
    print(f"batch {args.batch}{rounding}; each round's speed-up is its dense median over its pruned median; the median "
          f"over {args.rounds} rounds, with the lowest and highest round's, times the FLOP ratio")  # fmt: skip
    print(f"{'case':<24} {'kept':>6} {'FLOP ratio':>10} {'dense ms':>9} {'pruned ms':>9} {'speed-up':>8} "
          f"{'×FLOPs (lowest-highest)':>24}")  # fmt: skip
    worst, cases = float("inf"), []
    for name, settings, shape, target in CASES:
        dense, (small, ratio, budget) = prune_to_flops(name, settings, shape, target, args.round_to)
        dense, small = dense.to(device), small.to(device)
        report = speed_report(dense, small, shape, batch_sizes=(args.batch,), repeats=args.repeats, rounds=args.rounds,
                              channels_last=args.channels_last and has_convolutions(dense))  # fmt: skip
        row, flops = report["latency"][0], report["flop_ratio"]
        speedup = paired_ratios(row["dense_rounds"], row["pruned_rounds"])
        score = speedup["median"] * flops
        worst = min(worst, score)
        label = f"{name} @ {target:.0%} FLOPs"
        spread = f"{score:.2f} ({speedup['min'] * flops:.2f}-{speedup['max'] * flops:.2f})"
        print(f"{label:<24} {budget:>6.3f} {flops:>10.3f} {row['dense_ms']:>9.1f} {row['pruned_ms']:>9.1f} "
              f"{speedup['median']:>8.2f} {spread:>24}")  # fmt: skip
        cases.append({"case": label, "flop_ratio": flops, "speedup": speedup, "speedup_over_flop_ratio": score,
                      "dense_rounds_ms": row["dense_rounds"], "pruned_rounds_ms": row["pruned_rounds"]})  # fmt: skip
    record(args.results, "compaction_speed", machine,
           {"round_to": args.round_to, "cases": cases, "worst_speedup_over_flop_ratio": worst})  # fmt: skip
    print(f"worst_speedup_over_flop_ratio={worst:.3f}")


if __name__ == "__main__":
    main()

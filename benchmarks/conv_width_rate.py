"""How fast a convolution runs per MAC at the channel counts compaction leaves: why ResNet-20 at 25%
of its FLOPs falls short of its FLOP ratio on a CPU.

At 25% of the FLOPs every ResNet-20 group keeps about half its channels, so stage 1 (a third of the
network's MACs) runs 8-channel 3×3 convolutions at 32×32. This times, interleaved, the dense stage-1
convolution (16→16 at 32×32), the pruned one (8→8 at 32×32) and a 16→16 one at 16×16, which does
the same MACs as the pruned one, at batch 256, in the contiguous layout and then channels-last.

    GMAC/s = MACs / median time;   rate_8_over_16 = GMAC/s of 8→8 @32×32 / GMAC/s of 16→16 @16×16

A ratio near 1 would mean a narrow convolution runs at full speed; at 0.5 an 8-channel
convolution runs at half the rate of a 16-channel one (on a CPU with 16 float lanes, AVX-512, it
fills half of each vector). Stage 1 at half the rate caps ResNet-20 at 25% of the FLOPs near
speed-up × FLOP ratio = 1 / (1/3·2 + 2/3) = 0.75. The last line is ``rate_8_over_16=`` (channels-last).

``--layers`` also times every convolution of compaction_speed.py's ResNet-20, dense against pruned
to 25% of its FLOPs (channels-last), and prints each layer's speed-up over its FLOP ratio.

    python benchmarks/conv_width_rate.py [--rounds 15] [--batch 256] [--layers]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn as nn

from compaction_speed import prune_to_flops
from equiprune.experiments.export import deployable
from equiprune.experiments.timing import interleave
from protocol import add_results_argument, print_machine, record

CASES = {  # name: (in = out channels, height = width)
    "16->16 @32x32 (dense stage 1)": (16, 32),
    "8->8 @32x32 (pruned stage 1)": (8, 32),
    "16->16 @16x16 (the MACs of 8->8 @32x32)": (16, 16),
}
PRUNED, SAME_MACS = "8->8 @32x32 (pruned stage 1)", "16->16 @16x16 (the MACs of 8->8 @32x32)"


def convolutions(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Conv2d, torch.Size]]:
    """Every convolution of ``model`` (as deployed: BatchNorm folded, channels-last) with its input's shape."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, m, i[0].shape)))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def resnet_layers(batch: int, rounds: int) -> list[dict]:
    """compaction_speed.py's ResNet-20 at 25% of its FLOPs: each convolution timed against its dense
    counterpart, interleaved, and its speed-up times its FLOP ratio."""
    dense, (small, _, _) = prune_to_flops("resnet20", {}, (3, 32, 32), 0.25)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    pairs = zip(*(convolutions(deployable(m, channels_last=True).eval(), x) for m in (dense, small)))
    out = []
    print("ResNet-20 at 25% of its FLOPs, channels-last: each convolution, dense against pruned")
    for (name, conv_d, shape_d), (_, conv_p, shape_p) in pairs:
        inputs = [torch.randn(s).to(memory_format=torch.channels_last) for s in (shape_d, shape_p)]
        sides = {"dense": lambda c=conv_d, x=inputs[0]: c(x), "pruned": lambda c=conv_p, x=inputs[1]: c(x)}
        with torch.inference_mode():
            t = interleave(sides, rounds)
        flops = (conv_p.in_channels * conv_p.out_channels) / (conv_d.in_channels * conv_d.out_channels)
        speedup = statistics.median(t["dense"]) / statistics.median(t["pruned"])
        out.append({"layer": name, "dense": [conv_d.in_channels, conv_d.out_channels],
                    "pruned": [conv_p.in_channels, conv_p.out_channels], "flop_ratio": flops,
                    "speedup_over_flop_ratio": speedup * flops})  # fmt: skip
        print(f"  {name:<22} {conv_d.in_channels:>3}->{conv_d.out_channels:<3} {conv_p.in_channels:>3}->"
              f"{conv_p.out_channels:<3} FLOP ratio {flops:.3f}  speed-up {speedup:5.2f}  "
              f"×FLOPs {speedup * flops:.2f}")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved calls of every convolution")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--layers", action="store_true", help="also every convolution of ResNet-20, dense and at 25%%")
    add_results_argument(p)
    args = p.parse_args()
    if args.rounds < 1 or args.batch < 1:
        p.error("--rounds and --batch must be >= 1")
    machine = print_machine("cpu")
    torch.manual_seed(0)
    sides, macs = {}, {}
    for layout, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for name, (channels, size) in CASES.items():
            conv = nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=memory_format)
            x = torch.randn(args.batch, channels, size, size).to(memory_format=memory_format)
            sides[(layout, name)] = lambda conv=conv, x=x: conv(x)
            macs[(layout, name)] = args.batch * channels * channels * 9 * size * size
    times = {}
    with torch.inference_mode():
        for layout in ("contiguous", "channels_last"):  # one layout at a time: they use other kernels
            group = {key: call for key, call in sides.items() if key[0] == layout}
            for call in group.values():  # warm-up: kernels chosen, buffers allocated
                call()
                call()
            times.update(interleave(group, args.rounds))
    rates, rows = {}, []
    print(f"batch {args.batch}, 3×3 convolutions, {args.rounds} interleaved calls each; median ms and GMAC/s")
    for key, ts in times.items():
        median, quartiles = statistics.median(ts), statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        rates[key] = macs[key] / median / 1e9
        rows.append({"layout": key[0], "case": key[1], "median_ms": 1e3 * median, "gmacs": rates[key]})
        print(f"  {key[0]:<13} {key[1]:<40} {1e3 * median:7.2f} ms "
              f"(quartiles {1e3 * quartiles[0]:.2f}-{1e3 * quartiles[2]:.2f})  {rates[key]:6.1f} GMAC/s")  # fmt: skip
    ratio = {layout: rates[(layout, PRUNED)] / rates[(layout, SAME_MACS)] for layout in ("contiguous", "channels_last")}
    layers = resnet_layers(args.batch, args.rounds) if args.layers else None
    record(args.results, "conv_width_rate", machine,
           {"cases": rows, "rate_8_over_16": ratio, "resnet20_layers": layers})  # fmt: skip
    print(f"rate_8_over_16_contiguous={ratio['contiguous']:.3f}")
    print(f"rate_8_over_16={ratio['channels_last']:.3f}")


if __name__ == "__main__":
    main()

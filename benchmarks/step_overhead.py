"""Time a training step with the equilibrium pruner against the same step without it.

Both steps run side by side in one process on the paper's MLP (784-512-256-10), batch 128, with
the same optimizer, interleaved in short blocks so that machine noise hits both alike; the figure
is the ratio of the medians. The last line printed is ``ratio=<game step time / plain step time>``
for the paper's configuration (η = 0); lines above give it for the settings of ``equiprune-best``
(``ratio_with_competition=``: competition cost on, γ weighted by layer width) and for the Newton
update of the sweeps' ``game-newton`` (``ratio_newton=``: per-example gate gradients recorded in
every backward pass for the Fisher information; timed with the game on from the first step).

    python benchmarks/step_overhead.py [--rounds 30] [--block 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from equiprune.config import shipped_config
from equiprune.methods import build_method
from equiprune.models import mlp
from equiprune.reproduce import bundled_config
from equiprune.sweep import load_sweep

PAPER = "game (l1-l2-combined, eta=0)"
BEST = "game (equiprune-best, eta>0)"
NEWTON = "game (game-newton, update=newton)"


def sweep_settings(sweep: str, label: str, point: str) -> dict:
    """A method's settings at one point of a sweep shipped with equiprune."""
    planned = load_sweep(shipped_config("sweeps", f"{sweep}.toml")).runs
    return next(r for r in planned if r.label == label and r.point == point).config.method.settings


def make_step(method_settings: dict | None, x, y):
    torch.manual_seed(0)
    model = mlp(hidden=(512, 256))
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
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=20, help="steps per timed block")
    args = ap.parse_args()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    variants = {
        "plain": make_step(None, x, y),
        PAPER: make_step({"beta": 0.05, "gamma": 0.05}, x, y),
        BEST: make_step(bundled_config("game-mnist", "equiprune-best").method.settings, x, y),
        # the sweep's γ 0.2 (about 5% kept), with the game on from the first step instead of after
        # the dense start, so that every timed step is a game step
        NEWTON: make_step({**sweep_settings("mnist_mlp_neurons", "game-newton", "gamma=0.2"), "start": 0.0}, x, y),
    }
    for step in variants.values():  # warm-up: allocator, Adam state, kernels
        time_block(step, args.block)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            times[name].append(time_block(step, args.block))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MLP 784-512-256-10, batch 128, "
          f"{args.rounds} rounds x {args.block} steps, medians:")  # fmt: skip
    for name, t in med.items():
        print(f"  {name:<36} {1e3 * t:7.3f} ms/step   x{t / med['plain']:.3f}")
    print(f"ratio_newton={med[NEWTON] / med['plain']:.3f}")
    print(f"ratio_with_competition={med[BEST] / med['plain']:.3f}")
    print(f"ratio={med[PAPER] / med['plain']:.3f}")


if __name__ == "__main__":
    main()

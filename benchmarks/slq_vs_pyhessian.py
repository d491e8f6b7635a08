"""Our SLQ spectral density against PyHessian's, side by side in one process.

Same model (the paper's MNIST MLP 784-512-256-10, trained for one epoch), same data (batches of
MNIST training images), same Rademacher probes (drawn from the same seed in PyHessian's order),
same Lanczos steps. Prints both times, how far apart the two densities are, and as its last line
``time_ratio=<ours / pyhessian>``.

    pip install -e ".[bench]"   # pyhessian 0.1
    python benchmarks/slq_vs_pyhessian.py [--iters 64] [--probes 4] [--batches 4] [--batch-size 500]

PyHessian 0.1's ``density()`` calls ``torch.eig``, which torch has removed; this benchmark shims it
with ``torch.linalg.eigh`` on the symmetric tridiagonal matrix PyHessian builds, and says so.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from equiprune.curvature.hessian import HessianOperator, rademacher_probes
from equiprune.curvature.lanczos import Spectrum, density, slq
from equiprune.data import Batches, load_split
from equiprune.models import mlp


def _eig_shim(T: torch.Tensor, eigenvectors: bool = False):
    """torch.eig's old contract (eigenvalues as (n, 2) real/imaginary columns) for a symmetric T."""
    values, vectors = torch.linalg.eigh(T)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def trained_model(split, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mlp(hidden=(512, 256))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in Batches(split, 128, shuffle=True, seed=seed).epoch(0):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=64)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument(
        "--batches", type=int, default=4, help="batches the Hessian averages over (1: PyHessian's single-batch mode)"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from pyhessian import hessian as PyHessian

    torch.eig = _eig_shim
    print("note: pyhessian 0.1's density() calls torch.eig, which torch removed; it is shimmed here with "
          "torch.linalg.eigh on PyHessian's symmetric tridiagonal Lanczos matrix")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")

    train = load_split("mnist", "train")
    model = trained_model(train.subset(20_000), args.seed)
    data = train.subset(args.batches * args.batch_size)
    batches = list(Batches(data, args.batch_size, shuffle=False).epoch(0))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model 784-512-256-10 ({n_params:,} parameters), {len(batches)} batch(es) of {args.batch_size}, "
          f"{args.probes} probes × {args.iters} Lanczos steps")  # fmt: skip

    # PyHessian: one batch -> its graph-reusing mode; several -> its dataloader mode.
    start = time.perf_counter()
    if len(batches) == 1:
        theirs_h = PyHessian(model, F.cross_entropy, data=batches[0], cuda=False)
    else:
        theirs_h = PyHessian(model, F.cross_entropy, dataloader=batches, cuda=False)
    torch.manual_seed(args.seed)
    their_nodes, their_weights = theirs_h.density(iter=args.iters, n_v=args.probes)
    theirs_seconds = time.perf_counter() - start

    start = time.perf_counter()
    op = HessianOperator(model, batches)
    torch.manual_seed(args.seed)
    probes = rademacher_probes(op.params, args.probes)
    ours = slq(op, probes, args.iters)
    ours_seconds = time.perf_counter() - start

    theirs = Spectrum(torch.tensor(their_nodes, dtype=torch.float64), torch.tensor(their_weights, dtype=torch.float64),
                      ours.dim, args.iters)  # fmt: skip
    lo = min(float(ours.nodes.min()), float(theirs.nodes.min())) - 0.01
    hi = max(float(ours.nodes.max()), float(theirs.nodes.max())) + 0.01
    grid, ours_d = density(ours, span=(lo, hi))
    _, theirs_d = density(theirs, span=(lo, hi))
    step = float(grid[1] - grid[0])
    l1 = float((ours_d - theirs_d).abs().sum()) * step
    first_alpha = [float(ours.expect(lambda t: t)), float(theirs.expect(lambda t: t))]

    print()
    print("| | seconds | λ_max | λ_min | tr(H)/D (SLQ) | E[λ²] (SLQ) |")
    print("|---|---|---|---|---|---|")
    for name, s, seconds in (("equiprune", ours, ours_seconds), ("pyhessian", theirs, theirs_seconds)):
        print(f"| {name} | {seconds:.2f} | {float(s.nodes.max()):.5g} | {float(s.nodes.min()):.5g} "
              f"| {s.expect(lambda t: t):.5g} | {s.expect(lambda t: t**2):.5g} |")  # fmt: skip
    print()
    print(
        f"density difference ∫|p_ours − p_pyhessian| dλ = {l1:.4f} (0 = identical, 2 = disjoint; "
        f"10,000-bin grid over [{lo:.3g}, {hi:.3g}], PyHessian's σ² scaling)"
    )
    print(f"first moments: {first_alpha[0]:.6g} vs {first_alpha[1]:.6g} (the same probes give the same vᵀHv)")
    print(f"time_ratio={ours_seconds / theirs_seconds:.3f}")


if __name__ == "__main__":
    main()

"""Our SLQ spectral density against PyHessian's, side by side in one process.

Same model (the paper's MNIST MLP 784-512-256-10, trained for one epoch), same data (batches of
MNIST training images), same Rademacher probes (drawn from the same seed in PyHessian's order),
same Lanczos steps. Prints both times, how far apart the two densities are, and as its last line
``time_ratio=<ours / pyhessian>``.

    pip install -e ".[bench]"   # pyhessian 0.1
    python benchmarks/slq_vs_pyhessian.py [--iters 64] [--probes 4] [--batches 4] [--batch-size 500]
        [--repeats 3] [--device cuda]

The two sides run in alternation (PyHessian, equiprune; equiprune, PyHessian; …) for ``--repeats``
rounds; the ratio is each round's, and the median is printed with the lowest and highest.

PyHessian 0.1's ``density()`` calls ``torch.eig``, which torch has removed; this benchmark shims it
with ``torch.linalg.eigh`` on the symmetric tridiagonal matrix PyHessian builds, and says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from equiprune.curvature.hessian import HessianOperator, rademacher_probes
from equiprune.curvature.lanczos import Spectrum, density, slq
from equiprune.data import Batches, load_split
from equiprune.experiments.timing import interleave, paired_ratios, wait_for_device
from equiprune.models import mlp
from protocol import add_device_argument, add_results_argument, checked_device, print_machine, record


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


def their_spectrum(model, batches, iters: int, probes: int, seed: int) -> Spectrum:
    from pyhessian import hessian as PyHessian

    # PyHessian: one batch -> its graph-reusing mode; several -> its dataloader mode.
    cuda = next(model.parameters()).is_cuda
    if len(batches) == 1:
        h = PyHessian(model, F.cross_entropy, data=batches[0], cuda=cuda)
    else:
        h = PyHessian(model, F.cross_entropy, dataloader=batches, cuda=cuda)
    torch.manual_seed(seed)
    nodes, weights = h.density(iter=iters, n_v=probes)
    dim = sum(p.numel() for p in model.parameters())
    return Spectrum(torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64), dim, iters)


def our_spectrum(model, batches, iters: int, probes: int, seed: int) -> Spectrum:
    op = HessianOperator(model, batches)
    torch.manual_seed(seed)
    return slq(op, rademacher_probes(op.params, probes), iters)


def scaling(model, batches, probes: int, iters: int, seed: int) -> list[tuple[int, int, float]]:
    """Our seconds at fewer probes and fewer steps than the comparison's: (probes, steps, seconds)."""
    rows = []
    for k, m in sorted({(1, iters), (max(probes // 2, 1), iters), (probes, max(iters // 4, 1)), (probes, iters // 2)}):
        wait_for_device()
        start = time.perf_counter()
        our_spectrum(model, batches, m, k, seed)
        wait_for_device()
        rows.append((k, m, time.perf_counter() - start))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=64)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument(
        "--batches", type=int, default=4, help="batches the Hessian averages over (1: PyHessian's single-batch mode)"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each runs both sides once)")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    add_results_argument(p)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    device = checked_device(p, args.device)

    torch.eig = _eig_shim
    print("note: pyhessian 0.1's density() calls torch.eig, which torch removed; it is shimmed here with "
          "torch.linalg.eigh on PyHessian's symmetric tridiagonal Lanczos matrix")  # fmt: skip
    machine = print_machine(device)

    train = load_split("mnist", "train")
    model = trained_model(train.subset(20_000), args.seed).to(device)
    data = train.subset(args.batches * args.batch_size)
    batches = [(x.to(device), y.to(device)) for x, y in Batches(data, args.batch_size, shuffle=False).epoch(0)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model 784-512-256-10 ({n_params:,} parameters), {len(batches)} batch(es) of {args.batch_size}, "
          f"{args.probes} probes × {args.iters} Lanczos steps, {args.repeats} interleaved rounds")  # fmt: skip

    spectra: dict[str, Spectrum] = {}

    def side(name, fn):
        return lambda: spectra.__setitem__(name, fn(model, batches, args.iters, args.probes, args.seed))

    times = interleave({"pyhessian": side("pyhessian", their_spectrum), "equiprune": side("equiprune", our_spectrum)},
                       args.repeats)  # fmt: skip
    ours, theirs = spectra["equiprune"], spectra["pyhessian"]
    lo = min(float(ours.nodes.min()), float(theirs.nodes.min())) - 0.01
    hi = max(float(ours.nodes.max()), float(theirs.nodes.max())) + 0.01
    grid, ours_d = density(ours, span=(lo, hi))
    _, theirs_d = density(theirs, span=(lo, hi))
    step = float(grid[1] - grid[0])
    l1 = float((ours_d - theirs_d).abs().sum()) * step
    first_alpha = [float(ours.expect(lambda t: t)), float(theirs.expect(lambda t: t))]

    print()
    print("| | median seconds (rounds) | λ_max | λ_min | tr(H)/D (SLQ) | E[λ²] (SLQ) |")
    print("|---|---|---|---|---|---|")
    for name, s in (("equiprune", ours), ("pyhessian", theirs)):
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        moments = f"{s.expect(lambda t: t):.5g} | {s.expect(lambda t: t**2):.5g}"
        print(f"| {name} | {statistics.median(times[name]):.2f} ({rounds}) | {float(s.nodes.max()):.5g} "
              f"| {float(s.nodes.min()):.5g} | {moments} |")  # fmt: skip
    print()
    print(
        f"density difference ∫|p_ours − p_pyhessian| dλ = {l1:.4f} (0 = identical, 2 = disjoint; "
        f"10,000-bin grid over [{lo:.3g}, {hi:.3g}], PyHessian's σ² scaling)"
    )
    print(f"first moments: {first_alpha[0]:.6g} vs {first_alpha[1]:.6g} (the same probes give the same vᵀHv)")
    rows = scaling(model, batches, args.probes, args.iters, args.seed)
    full = statistics.median(times["equiprune"])
    print("our scaling (seconds; per Hessian-vector product):")
    for k, m, seconds in [*rows, (args.probes, args.iters, full)]:
        print(f"  {k} probes × {m:>3} steps: {seconds:6.2f} s  ({1e3 * seconds / (k * m):.1f} ms per product)")
    ratio = paired_ratios(times["equiprune"], times["pyhessian"])
    print(f"time ratio per round: median {ratio['median']:.3f}, lowest {ratio['min']:.3f}, highest {ratio['max']:.3f}")
    record(args.results, "slq_vs_pyhessian", machine,
           {"time_ratio": ratio, "equiprune_seconds": times["equiprune"], "pyhessian_seconds": times["pyhessian"],
            "density_l1": l1, "scaling": [{"probes": k, "steps": m, "seconds": t} for k, m, t in rows]})  # fmt: skip
    print(f"time_ratio={ratio['median']:.3f}")


if __name__ == "__main__":
    main()

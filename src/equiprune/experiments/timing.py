"""Timing models honestly: interleaved rounds, their spread, the machine they ran on, and a plain
verdict on whether the figures can be trusted.

A ratio of two timings is only a ratio when both sides saw the same machine, so models are timed in
alternation, round after round; each round's median is kept, and the spread of those medians says
how much the machine moved under them. On a busy machine a forward pass can take exactly the
scheduler's time slice whatever the model does (a dense and a 75× smaller MLP both at 23.99 ms),
which no number of repeats fixes: such figures are reported as untrustworthy, not as a speed-up.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

#: Untrusted when the 1-minute load average at the start exceeds this share of the CPU cores.
MAX_LOAD_PER_CORE = 0.5
#: Untrusted when a model's round medians spread (max − min) by more than this share of their median.
MAX_RELATIVE_SPREAD = 0.25
#: Untrusted when two models doing this share of the work or less time within this much of each
#: other at a batch of 32 or more: the clock measured the scheduler, not the models.
SUSPECT_FLOP_RATIO, SUSPECT_TIME_RATIO = 0.5, 0.05


def machine_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What decides the timings besides the models: cores, threads, load at start, torch, and the
    device the timed work runs on (an accelerator by its name)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "load_at_start": load,
            "torch": torch.__version__, "device": name}  # fmt: skip


def wait_for_device() -> None:
    """Block until queued GPU work is done, so that a clock read afterwards times the work and not
    its launch (CUDA runs asynchronously); nothing to wait for on a CPU, or before CUDA is in use
    (False on a build without CUDA, so no availability check is needed on this hot path)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def example_input(model: nn.Module, input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    """A random batch of ``input_shape`` inputs on the model's device and in its dtype (read from a
    buffer where it has no parameter: a model whose every layer holds sparse weights)."""
    p = _first_tensor(model)
    return torch.randn(batch, *input_shape, dtype=p.dtype, device=p.device)


def model_device(model: nn.Module) -> torch.device:
    """The device that ``model``'s tensors are on (read as :func:`example_input` reads it)."""
    return _first_tensor(model).device


def _first_tensor(model: nn.Module) -> torch.Tensor:
    return next(itertools.chain(model.parameters(), model.buffers()))


@torch.inference_mode()
def call_ms(call: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``call()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        wait_for_device()
        start = time.perf_counter()
        call()
        wait_for_device()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def latency_ms(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall-clock milliseconds of one forward pass at ``batch_size`` (eval mode)."""
    model.eval()
    x = example_input(model, input_shape, batch_size)
    return call_ms(lambda: model(x), repeats, warmup)


def interleaved_timings(
    models: dict[str, nn.Module], input_shape: Sequence[int], batch_size: int, repeats: int = 20, rounds: int = 3
) -> dict[str, list[float]]:
    """Each model's median latency (ms) in each of ``rounds`` rounds, the models timed in
    alternation within a round (the order reversed every other round), so that machine load affects
    all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for name in alternating(list(models), rounds):
        times[name].append(latency_ms(models[name], input_shape, batch_size, repeats))
    return times


def latency_rows(
    dense: nn.Module, pruned: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int], repeats: int,
    rounds: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per batch size, the two models' interleaved rounds (:func:`interleaved_timings`), their medians
    (``dense_ms``, ``pruned_ms``) and ``speedup`` = dense over pruned: the rows speed reports hold."""
    rows = []
    for bs in batch_sizes:
        t = interleaved_timings({"dense": dense, "pruned": pruned}, input_shape, bs, repeats, rounds)
        rows.append(latency_row(bs, t["dense"], t["pruned"]))
    return rows


def latency_row(batch_size: int, dense_rounds: list[float], pruned_rounds: list[float]) -> dict[str, Any]:
    """One row of a speed report from the two sides' interleaved rounds (ms)."""
    dense_ms, pruned_ms = statistics.median(dense_rounds), statistics.median(pruned_rounds)
    return {"batch_size": batch_size, "dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": dense_ms / pruned_ms,
            "dense_rounds": dense_rounds, "pruned_rounds": pruned_rounds}  # fmt: skip


def interleaved_latency(
    models: dict[str, nn.Module], input_shape: Sequence[int], batch_size: int, repeats: int = 20, rounds: int = 3
) -> dict[str, float]:
    """The median of :func:`interleaved_timings` for each model."""
    times = interleaved_timings(models, input_shape, batch_size, repeats, rounds)
    return {name: statistics.median(t) for name, t in times.items()}


def interleave(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each side's call in each of ``repeats`` rounds, the sides called in alternation
    and the order reversed every other round (A B, B A, A B …), so that neither side always runs
    first, after the other's caches or during its after-effects."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in sides}
    for name in alternating(list(sides), repeats):
        wait_for_device()
        start = time.perf_counter()
        sides[name]()
        wait_for_device()
        times[name].append(time.perf_counter() - start)
    return times


def alternating(names: Sequence[str], rounds: int) -> Iterator[str]:
    """``names`` once per round, in reverse order every other round, so that none always runs first."""
    for r in range(rounds):
        yield from names if r % 2 == 0 else reversed(names)


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """The ratio of two interleaved timings round by round: its median, lowest and highest."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def relative_spread(values: Sequence[float]) -> float:
    """(max − min) / median: how far the rounds of one timing disagree."""
    return (max(values) - min(values)) / statistics.median(values)


def distrust(rows: list[dict[str, Any]], flop_ratio: float, machine: dict[str, Any]) -> list[str]:
    """Why the timings of a dense and a pruned model (``rows``: per batch size, ``dense_rounds``
    and ``pruned_rounds``) cannot be trusted; empty when nothing speaks against them."""
    reasons = []
    load, cores = machine.get("load_at_start"), machine.get("cores") or 1
    if load is not None and load > MAX_LOAD_PER_CORE * cores:
        reasons.append(f"the machine was busy at the start (load {load:.2f} on {cores} cores)")
    for row in rows:
        for side in ("dense", "pruned"):
            spread = relative_spread(row[f"{side}_rounds"])
            if spread > MAX_RELATIVE_SPREAD:
                reasons.append(f"batch {row['batch_size']}: the {side} model's rounds spread by {100 * spread:.0f}%")
        dense, pruned = statistics.median(row["dense_rounds"]), statistics.median(row["pruned_rounds"])
        if (
            row["batch_size"] >= 32
            and flop_ratio <= SUSPECT_FLOP_RATIO
            and abs(pruned / dense - 1) <= SUSPECT_TIME_RATIO
        ):
            reasons.append(
                f"batch {row['batch_size']}: both models took {dense:.2f} ms though the pruned one does "
                f"{100 * flop_ratio:.0f}% of the work (the scheduler's time slice, not the models)"
            )
    return reasons

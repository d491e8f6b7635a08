"""Deployable forms of a compacted model, and what compaction bought, measured.

- :func:`fold_batchnorm`: every BatchNorm that directly follows a convolution or Linear layer is
  folded into that layer's weights (inference only), so the deployed model does not pay for it.
- :func:`save_exported`: ``torch.export`` with a dynamic batch dimension, saved as ``.pt2``; it
  loads with ``torch.export.load(path).module()`` and needs neither equiprune nor the model's code.
- :func:`save_onnx`: the same graph as ONNX (needs the ``onnx`` extra: onnx, onnxscript).
- :func:`speed_report`: parameters, MACs and measured CPU latency at several batch sizes, before
  and after compaction, side by side in one process.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from equiprune import io
from equiprune.core.measure import count_macs, count_params
from equiprune.core.tracing import trace
from equiprune.data import DATASETS
from equiprune.errors import EquipruneError
from equiprune.experiments.rundir import RunDir, load_trained


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (eval mode) in which each BatchNorm whose only input is a
    Conv or Linear layer used nowhere else is folded into that layer: y = γ(Wx + b − μ)/σ + β
    becomes W' = W·γ/σ, b' = (b − μ)·γ/σ + β. Models that torch.fx cannot trace are copied as they are."""
    model = copy.deepcopy(model).eval()
    try:
        gm = trace(model)
    except EquipruneError:
        return model
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        layer, bn = modules[src.target], modules[node.target]
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or bn.running_mean is None:
            continue
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        layer.weight = nn.Parameter(layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1))))
        layer.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _example(model: nn.Module, input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    p = next(model.parameters())
    return torch.randn(batch, *input_shape, dtype=p.dtype, device=p.device)


def _export_program(model: nn.Module, input_shape: Sequence[int]):
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model.eval(), (_example(model, input_shape),), dynamic_shapes=({0: batch},))


def save_exported(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """``torch.export`` the model (batch dimension dynamic) to ``path`` (.pt2), atomically."""
    program = _export_program(model, input_shape)
    return io.atomic_write(path, lambda f: torch.export.save(program, f), binary=True)


@contextmanager
def _quiet_onnx():
    """The ONNX exporter logs each stage and warns about operators of packages we do not use."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def save_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """Export the model to ONNX at ``path`` (batch dimension dynamic), atomically."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise EquipruneError(
            f"ONNX export needs the onnx extra ({exc.name} is missing): pip install 'equiprune[onnx]'"
        ) from exc
    batch = torch.export.Dim("batch", min=1)
    with _quiet_onnx():
        program = torch.onnx.export(
            model.eval(), (_example(model, input_shape),), input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
        )  # fmt: skip
    return io.atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()), binary=True)


@torch.inference_mode()
def latency_ms(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall-clock milliseconds of one forward pass at ``batch_size`` (eval mode)."""
    model.eval()
    x = _example(model, input_shape, batch_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleaved_latency(
    models: dict[str, nn.Module], input_shape: Sequence[int], batch_size: int, repeats: int = 20, rounds: int = 3
) -> dict[str, float]:
    """Median latency (ms) of each model, timed in alternation for ``rounds`` rounds so that machine
    load affects all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(latency_ms(model, input_shape, batch_size, repeats))
    return {name: statistics.median(t) for name, t in times.items()}


def speed_report(
    dense: nn.Module,
    pruned: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 32, 256),
    repeats: int = 20,
) -> dict[str, Any]:
    """Size and measured latency of ``dense`` and ``pruned``, both with BatchNorm folded, timed
    alternately at each batch size so that machine load affects both alike."""
    dense_f, pruned_f = fold_batchnorm(dense), fold_batchnorm(pruned)
    rows = []
    for bs in batch_sizes:
        ms = interleaved_latency({"dense": dense_f, "pruned": pruned_f}, input_shape, bs, repeats)
        rows.append({"batch_size": bs, "dense_ms": ms["dense"], "pruned_ms": ms["pruned"],
                     "speedup": ms["dense"] / ms["pruned"]})  # fmt: skip
    macs_before, macs_after = count_macs(dense, input_shape), count_macs(pruned, input_shape)
    return {
        "params_before": count_params(dense),
        "params_after": count_params(pruned),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "flop_ratio": macs_after / macs_before,
        "latency": rows,
        "threads": torch.get_num_threads(),
    }


def speed_markdown(report: dict[str, Any]) -> str:
    lines = [
        "| | dense | pruned | ratio |",
        "|---|---|---|---|",
        f"| parameters | {report['params_before']:,} | {report['params_after']:,} | "
        f"{report['params_after'] / report['params_before']:.3f} |",
        f"| MACs per example | {report['macs_before']:,} | {report['macs_after']:,} | {report['flop_ratio']:.3f} |",
    ]
    for row in report["latency"]:
        lines.append(
            f"| latency, batch {row['batch_size']} (ms) | {row['dense_ms']:.2f} | {row['pruned_ms']:.2f} | "
            f"{1 / row['speedup']:.3f} (speed-up ×{row['speedup']:.2f}) |"
        )
    lines.append("")
    lines.append(f"CPU, {report['threads']} threads, BatchNorm folded in both; median of interleaved timings.")
    return "\n".join(lines) + "\n"


def export_run(
    run_dir: str | Path, onnx: bool = False, batch_sizes: Sequence[int] = (1, 32, 256), repeats: int = 20
) -> dict[str, Any]:
    """For a finished run: ``export/model.pt2`` (and ``export/model.onnx``) of the compacted model with
    BatchNorm folded, and ``speed.json`` / ``speed.md`` comparing it with the trained dense model."""

    run = RunDir(run_dir)
    if not run.is_finished():
        raise EquipruneError(f"{run.path} holds no finished run (no results.json): finish it first")
    cfg, dense = load_trained(run)
    pruned = torch.load(run.model, map_location="cpu", weights_only=False)
    dense, shape = dense.cpu(), DATASETS.get(cfg.data.dataset).input_shape
    deployable = fold_batchnorm(pruned)
    files = [save_exported(deployable, shape, run.export_dir / "model.pt2")]
    if onnx:
        files.append(save_onnx(deployable, shape, run.export_dir / "model.onnx"))
    report = speed_report(dense, pruned, shape, batch_sizes, repeats)
    report["files"] = [str(f) for f in files]
    io.write_json(run.speed, report)
    io.write_text(run.speed.with_suffix(".md"), speed_markdown(report))
    return report

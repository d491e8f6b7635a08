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
from equiprune.experiments.sparse_export import sparse_markdown, sparse_report
from equiprune.experiments.timing import distrust, example_input, latency_rows, machine_state, model_device
from equiprune.extras import require_extra


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


def _export_program(model: nn.Module, input_shape: Sequence[int]):
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model.eval(), (example_input(model, input_shape),), dynamic_shapes=({0: batch},))


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
    require_extra("onnx", "ONNX export", "onnx", "onnxscript")  # torch.onnx's dynamo exporter imports both
    batch = torch.export.Dim("batch", min=1)
    with _quiet_onnx():
        program = torch.onnx.export(
            model.eval(), (example_input(model, input_shape),), input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
        )  # fmt: skip
    return io.atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()), binary=True)


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-d convolution (the only layers channels-last changes)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def deployable(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """The inference copy that is exported and timed: BatchNorm folded (:func:`fold_batchnorm`) and,
    with ``channels_last``, 4-d weights stored channels-last, so that convolutions run on
    channels-last feature maps whatever the input's layout (on CPU often much faster for both a
    dense and a pruned CNN; the outputs are the same up to rounding)."""
    model = fold_batchnorm(model)
    if not channels_last:
        return model
    if not has_convolutions(model):
        raise EquipruneError(
            "--channels-last: the model has no convolutions, and channels-last changes only how convolution "
            "weights and feature maps are stored; leave it out"
        )
    return model.to(memory_format=torch.channels_last)


def speed_report(
    dense: nn.Module,
    pruned: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 32, 256),
    repeats: int = 20,
    rounds: int = 5,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Size and measured latency of ``dense`` and ``pruned``, both as :func:`deployable` makes them,
    timed in alternation over ``rounds`` rounds at each batch size so that machine load affects both
    alike; with the machine, the spread of the rounds and whether the figures can be trusted."""
    machine = machine_state(model_device(pruned))
    timed = deployable(dense, channels_last), deployable(pruned, channels_last)
    rows = latency_rows(*timed, input_shape, batch_sizes, repeats, rounds)
    macs_before, macs_after = count_macs(dense, input_shape), count_macs(pruned, input_shape)
    reasons = distrust(rows, macs_after / macs_before, machine)
    return {
        "params_before": count_params(dense),
        "params_after": count_params(pruned),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "flop_ratio": macs_after / macs_before,
        "latency": rows,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "threads": machine["threads"],
        "machine": machine,
        "trusted": not reasons,
        "untrusted_because": reasons,
    }


def speed_markdown(report: dict[str, Any]) -> str:
    trusted = report.get("trusted", True)
    lines = [
        "| | dense | pruned | ratio |",
        "|---|---|---|---|",
        f"| parameters | {report['params_before']:,} | {report['params_after']:,} | "
        f"{report['params_after'] / report['params_before']:.3f} |",
        f"| {report.get('macs_label', 'MACs per example')} | {report['macs_before']:,} | {report['macs_after']:,} | "
        f"{report['flop_ratio']:.3f} |",
    ]
    for row in report["latency"]:
        ratio = f"{1 / row['speedup']:.3f} (speed-up ×{row['speedup']:.2f})" if trusted else "– (not trusted)"
        lines.append(
            f"| latency, batch {row['batch_size']} (ms) | {row['dense_ms']:.2f} {_spread(row.get('dense_rounds'))} "
            f"| {row['pruned_ms']:.2f} {_spread(row.get('pruned_rounds'))} | {ratio} |"
        )
    m = report.get("machine", {"threads": report["threads"]})
    load = f", load {m['load_at_start']:.2f} at the start" if m.get("load_at_start") is not None else ""
    cores = f" of {m['cores']} cores" if m.get("cores") else ""
    folded = "" if report.get("macs_label") else " BatchNorm folded in both;"
    if report.get("memory_format") == "channels_last":
        folded += " weights stored channels-last in both;"
    lines += ["", f"CPU, {m['threads']} threads{cores}{load};{folded} median of the interleaved rounds, "
              "[lowest – highest round] beside it."]  # fmt: skip
    if not trusted:
        why = "; ".join(report["untrusted_because"])
        lines += ["", f"**These timings cannot be trusted, so no speed-up is claimed:** {why}. "
                  "Run `equiprune export` again on an idle machine."]  # fmt: skip
    sparse = sparse_markdown(report["sparse"]) if report.get("sparse") else ""
    return "\n".join(lines) + "\n" + sparse


def _spread(rounds: list[float] | None) -> str:
    return f"[{min(rounds):.2f} – {max(rounds):.2f}]" if rounds else ""


def export_run(
    run_dir: str | Path,
    onnx: bool = False,
    batch_sizes: Sequence[int] = (1, 32, 256),
    repeats: int = 20,
    channels_last: bool = False,
) -> dict[str, Any]:
    """For a finished run: ``export/model.pt2`` (and ``export/model.onnx``) of the compacted model with
    BatchNorm folded (and ``channels_last``: its convolution weights stored channels-last, timed so
    too), and ``speed.json`` / ``speed.md`` comparing it with the trained dense model;
    for an unstructured result also ``export/model_sparse.pt`` (CSR Linear weights, see
    :mod:`equiprune.experiments.sparse_export`) with its size and latency against dense weights."""

    from equiprune.experiments.distil_export import export_distil_run, is_distil_run

    if is_distil_run(run_dir):  # a transformers model distilled by `equiprune distil`
        if channels_last:
            raise EquipruneError("--channels-last: a distilled transformers model has no convolutions; leave it out")
        report = export_distil_run(run_dir, batch_sizes, repeats)
        io.write_text(Path(run_dir) / "speed.md", speed_markdown(report))
        return report
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise EquipruneError(
            f"{run.path} does not exist; give the directory of a finished run (`equiprune run CONFIG --out DIR`)"
        )
    if not run.config.is_file():
        inside = " (a sweep keeps its runs under its runs/ directory)" if (run.path / "runs").is_dir() else ""
        raise EquipruneError(
            f"{run.path} is not a run directory (no config.toml); give one that `equiprune run CONFIG --out DIR` "
            f"wrote{inside}"
        )
    if not run.is_finished():
        raise EquipruneError(
            f"{run.path} holds no finished run (no results.json): finish it first (`equiprune run CONFIG --out "
            f"{run.path} --resume`)"
        )
    cfg, dense = load_trained(run)
    pruned = torch.load(run.model, map_location="cpu", weights_only=False)
    dense, shape = dense.cpu(), DATASETS.get(cfg.data.dataset).input_shape
    ready = deployable(pruned, channels_last)  # refuses channels_last without convolutions, before any file
    files = [save_exported(ready, shape, run.export_dir / "model.pt2")]
    if onnx:
        files.append(save_onnx(ready, shape, run.export_dir / "model.onnx"))
    report = speed_report(dense, pruned, shape, batch_sizes, repeats, channels_last=channels_last)
    # unstructured results: the Linear weights also stored and multiplied as CSR, measured honestly
    report["sparse"] = sparse_report(pruned, shape, run.export_dir / "model_sparse.pt", batch_sizes, repeats)
    if report["sparse"]:
        files.append(Path(report["sparse"]["file"]))
    report["files"] = [str(f) for f in files]
    io.write_json(run.speed, report)
    io.write_text(run.speed.with_suffix(".md"), speed_markdown(report))
    return report

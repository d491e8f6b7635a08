"""A real deployment form for unstructured results: Linear weights stored and multiplied as CSR.

Unstructured pruning leaves zeros inside dense matrices; compaction removes only the neurons the
zeros cut off. :func:`sparsify` replaces every Linear layer whose weight is at least
``min_zero_fraction`` zeros by a :class:`SparseLinear` holding the weight as a ``torch.sparse_csr``
tensor, so that only the kept weights are stored and multiplied. Convolutions stay dense (a sparse
convolution needs kernels CPU PyTorch does not have). :func:`sparse_report` saves the result and
measures, honestly, what it buys: the size on disk against the dense file, and the CPU latency
against the same compacted model with dense weights, interleaved as every timing here is; on CPU a
CSR product is often slower than a dense one until the matrix is very sparse, and the report says so
when it is.
"""

from __future__ import annotations

import copy
import io as _io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from equiprune import io
from equiprune.experiments.timing import distrust, latency_rows, machine_state, model_device

#: A Linear layer is stored sparse from this share of zero weights on (below it CSR costs more bytes).
MIN_ZERO_FRACTION = 0.5


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W a CSR tensor (out × in), for inference."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CPU products and saving work
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kept = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nonzero={kept}"


@torch.no_grad()
def sparsify(model: nn.Module, min_zero_fraction: float = MIN_ZERO_FRACTION) -> tuple[nn.Module, list[str]]:
    """An inference copy of ``model`` with each sparse enough Linear layer made a :class:`SparseLinear`;
    returns it and the names of the layers it changed."""
    sparse = copy.deepcopy(model).eval()
    changed = []
    for name, module in list(sparse.named_modules()):
        if isinstance(module, nn.Linear) and float((module.weight == 0).float().mean()) >= min_zero_fraction:
            parent_name, _, child = name.rpartition(".")
            parent = sparse.get_submodule(parent_name) if parent_name else sparse
            setattr(parent, child, SparseLinear(module))
            changed.append(name)
    return sparse, changed


def _saved_bytes(obj: Any) -> int:
    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def sparse_report(
    pruned: nn.Module, input_shape: Sequence[int], path: str | Path, batch_sizes: Sequence[int], repeats: int,
    rounds: int = 5,
) -> dict[str, Any] | None:  # fmt: skip
    """Save ``pruned`` with CSR Linear weights at ``path`` (a pickled module: it loads with
    ``torch.load(path, weights_only=False)`` where equiprune is installed) and compare it with the
    dense-weight model: bytes on disk and interleaved CPU latency. None when no layer is sparse
    enough to store sparse."""
    dense = copy.deepcopy(pruned).eval()
    sparse, layers = sparsify(pruned)
    if not layers:
        return None
    io.torch_save(path, sparse)
    machine = machine_state(model_device(pruned))
    with torch.no_grad():  # "pruned" is the CSR form here
        rows = latency_rows(dense, sparse, input_shape, batch_sizes, repeats, rounds)
    reasons = distrust(rows, 1.0, machine)  # the same arithmetic is done either way: no FLOP-ratio test
    return {
        "file": str(path),
        "layers": layers,
        "bytes_dense": _saved_bytes(dense.state_dict()),
        "bytes_sparse": Path(path).stat().st_size,
        "latency": rows,
        "machine": machine,
        "trusted": not reasons,
        "untrusted_because": reasons,
    }


def sparse_markdown(report: dict[str, Any]) -> str:
    """The sparse form's table for speed.md."""
    ratio = report["bytes_sparse"] / report["bytes_dense"]
    lines = [
        "",
        f"## Sparse weights (CSR) for {len(report['layers'])} Linear layer(s): {', '.join(report['layers'])}",
        "",
        "| | dense weights | CSR weights | ratio |",
        "|---|---|---|---|",
        f"| bytes on disk | {report['bytes_dense']:,} | {report['bytes_sparse']:,} | {ratio:.3f} |",
    ]
    for row in report["latency"]:
        verdict = ("faster" if row["speedup"] > 1 else "slower") if report["trusted"] else "not trusted"
        lines.append(f"| latency, batch {row['batch_size']} (ms) | {row['dense_ms']:.3f} | {row['pruned_ms']:.3f} | "
                     f"{1 / row['speedup']:.3f} ({verdict}) |")  # fmt: skip
    lines += ["", "Both are the compacted model; the left one keeps its zeros in dense matrices. CPU, interleaved "
              "rounds, median."]  # fmt: skip
    if not report["trusted"]:
        lines += ["", f"**The timings cannot be trusted:** {'; '.join(report['untrusted_because'])}."]
    return "\n".join(lines) + "\n"

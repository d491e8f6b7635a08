"""``equiprune mask-convex``: the concave-mask paper's convex sanity check.

Logistic regression on MNIST, one digit against another (0 against 1 by default: 12,665 training
images, 784 pixel weights and a bias), trained by full-batch gradient descent in three ways:

- ``log-mask``: weights m ⊙ θ, loss + λ·Σ R_log(m), projected gradient steps on m (clipped to [0, 1]);
- ``l1-mask``: the same with R = ℓ1 on the mask;
- ``l1-subgradient``: loss + λ·‖θ‖₁ on the weights themselves, stepped along a subgradient
  (λ·sign θ), the classical way that never lands exactly on zero and chatters around it.

Reported per way: train and test accuracy, the sparsity (masks below ``threshold``; for the
subgradient, |θ| below ``threshold`` × max|θ|), the share of weights that are exactly zero, and how
much the weights still *oscillate* at the end: the coordinates whose effective weight changed sign
(−, 0, +) between consecutive checks in the last fifth of the run. ``mask_convex.png``
draws the mask values (for the subgradient, |θ|/max|θ|) of a fixed set of pixels over the iterations.
Deterministic: full-batch steps in float64.

    DIR/mask_convex.json, DIR/mask_convex.md, DIR/mask_convex.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.core.mask_regularizers import regularizer
from equiprune.data import load_split
from equiprune.errors import ConfigError
from equiprune.experiments.figures import save_png, subplots

WAYS = ("log-mask", "l1-mask", "l1-subgradient")
TRACKED = 48  # pixels whose values the plot follows: half the log mask's largest, half spread over the image


@dataclass(frozen=True)
class ConvexSettings:
    digits: tuple[int, int] = (0, 1)
    iterations: int = 2000
    lr: float = 0.5  # θ's step and the masks' (full-batch gradient descent)
    lam: float = 1e-2  # λ, the same for the three ways (each regularizer's slope at 0 is 1)
    epsilon: float = 0.1  # the log regularizer's scale
    mask_init: float = 0.5
    threshold: float = 0.01
    checks: int = 60  # how often along the way the sparsity and the flips are recorded
    examples: int | None = None  # the first N training images of the two digits (None: all)

    def __post_init__(self):
        if len(set(self.digits)) != 2 or not all(0 <= d <= 9 for d in self.digits):
            raise ConfigError(f"--digits: two different digits 0-9, got {self.digits!r}")
        for name in ("iterations", "checks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}: must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.lam >= 0 and 0 < self.threshold < 1):
            raise ConfigError(
                f"need lr > 0, lam >= 0 and 0 < threshold < 1; got {self.lr}, {self.lam}, {self.threshold}"
            )


@dataclass(frozen=True)
class _Reg:  # what core.mask_regularizers reads
    regularizer: str
    epsilon: float
    p: float = 0.5
    a: float = 3.7


def binary_split(split: str, digits: tuple[int, int], root=None, examples: int | None = None):
    """(x with a constant 1 column for the bias, y in {0, 1}) of the two digits, float64; the first
    ``examples`` of them when given."""
    data = load_split("mnist", split, root)
    keep = (data.y == digits[0]) | (data.y == digits[1])
    x, y = data.x[keep].flatten(1).double()[:examples], data.y[keep][:examples]
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), (y == digits[1]).double()


def _loss_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of the mean logistic loss at weights ``w``."""
    return x.T @ (torch.sigmoid(x @ w) - y) / len(y)


def _zero(way: str, m: torch.Tensor, theta: torch.Tensor, threshold: float) -> torch.Tensor:
    if way == "l1-subgradient":
        return theta.abs() < threshold * theta.abs().max()
    return m < threshold


def train_way(way: str, s: ConvexSettings, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """One way's full-batch run: final weights, the record of checks along the way, and every pixel's
    mask (for the subgradient: |θ| / max |θ|) at each check."""
    d = x.shape[1]
    theta = torch.zeros(d, dtype=x.dtype)
    m = torch.full((d,), s.mask_init, dtype=x.dtype)
    m[-1] = 1.0  # the bias is not masked
    reg = None if way == "l1-subgradient" else regularizer(_Reg(way.split("-")[0], s.epsilon))
    every = max(1, s.iterations // s.checks)
    checks, trace, previous = [], [], None
    for it in range(1, s.iterations + 1):
        g = _loss_grad(m * theta, x, y)
        if reg is None:
            sub = torch.sign(theta)
            sub[-1] = 0
            theta -= s.lr * (g + s.lam * sub)
        else:
            grad_m = theta * g + s.lam * reg.slope(m)
            theta -= s.lr * m * g
            m = (m - s.lr * grad_m).clamp(0, 1)
            m[-1] = 1.0
        if it % every == 0 or it == s.iterations:
            zero = _zero(way, m, theta, s.threshold)[:-1]
            sign = torch.sign(m * theta)[:-1]
            flips = int((sign != previous).sum()) if previous is not None else 0
            previous = sign
            values = m[:-1] if reg is not None else theta[:-1].abs() / theta[:-1].abs().max().clamp(min=1e-12)
            trace.append(values.clone())
            checks.append({"iteration": it, "sparsity": float(zero.double().mean()), "flips": flips,
                           "exact_zeros": float((sign == 0).double().mean())})  # fmt: skip
    return {"theta": theta, "m": m, "checks": checks, "trace": trace}


def _accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ w > 0).double() == y).double().mean())


def run_check(out: str | Path, settings: ConvexSettings = ConvexSettings(), root=None) -> dict[str, Any]:
    out = Path(out)
    x, y = binary_split("train", settings.digits, root, settings.examples)
    xt, yt = binary_split("test", settings.digits, root)
    rows, traces = [], {}
    for way in WAYS:
        r = train_way(way, settings, x, y)
        w = r["m"] * r["theta"]
        if way == "l1-subgradient":  # its deployed model: the small weights cut, as the sparsity counts them
            w = torch.where(_zero(way, r["m"], r["theta"], settings.threshold), 0.0, w)
            w[-1] = r["theta"][-1]
        else:
            w = torch.where(r["m"] < settings.threshold, 0.0, w)
        tail = r["checks"][-max(1, len(r["checks"]) // 5) :]  # the last fifth of the run
        rows.append({"way": way, "train_accuracy": _accuracy(w, x, y), "test_accuracy": _accuracy(w, xt, yt),
                     "sparsity": r["checks"][-1]["sparsity"], "exact_zeros": r["checks"][-1]["exact_zeros"],
                     "flips_in_last_fifth": sum(c["flips"] for c in tail),
                     "checks": r["checks"]})  # fmt: skip
        traces[way] = torch.stack(r["trace"])  # checks x pixels
    # the same pixels in every panel: those the log mask keeps largest, and others spread over the image
    final = traces["log-mask"][-1]
    tracked = torch.cat([final.argsort(descending=True)[: TRACKED // 2],
                         torch.linspace(0, len(final) - 1, TRACKED // 2).round().long()]).unique()  # fmt: skip
    traces = {way: t[:, tracked].tolist() for way, t in traces.items()}
    result = {"settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}, "rows": rows}
    io.write_json(out / "mask_convex.json", result)
    io.write_text(out / "mask_convex.md", _markdown(result))
    _plot(out / "mask_convex.png", traces, rows, settings)
    return result


def _markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"# Convex sanity check: logistic regression, MNIST {s['digits'][0]} against {s['digits'][1]}", "",
             f"{s['iterations']} full-batch steps, lr {s['lr']}, λ {s['lam']}, threshold {s['threshold']}.", "",
             "| way | train acc. | test acc. | sparsity | exactly zero | sign flips, last fifth |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['way']} | {100 * r['train_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | "
                     f"{100 * r['sparsity']:.1f}% | {100 * r['exact_zeros']:.1f}% | "
                     f"{r['flips_in_last_fifth']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(path, traces: dict[str, list[list[float]]], rows: list[dict[str, Any]], s: ConvexSettings) -> None:
    fig, axes = subplots(1, len(traces) + 1, figsize=(4 * (len(traces) + 1), 3.4), squeeze=False)
    for ax, (way, trace) in zip(axes[0], traces.items()):
        its = [c["iteration"] for c in next(r for r in rows if r["way"] == way)["checks"]]
        ax.plot(its, trace, linewidth=0.8, alpha=0.7)
        ax.set_title(way, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("mask m (subgradient: |θ| / max |θ|)")
    ax = axes[0][-1]
    for r in rows:
        ax.plot([c["iteration"] for c in r["checks"]], [c["sparsity"] for c in r["checks"]], label=r["way"])
    ax.set_title(f"sparsity (below {s.threshold:g})", fontsize=10)
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8, frameon=False)
    save_png(fig, path)

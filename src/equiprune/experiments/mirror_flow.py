"""The underdetermined linear regression of "Mask in the Mirror": x = m ⊙ w trained by gradient
descent against the implicit-bias prediction of its mirror flow.

Gradient flow on L = ½‖X(m ⊙ w) − y‖² conserves c = m² − w² per coordinate and moves x as the
mirror flow of the potential Q_c with Q_c'(x) = arcsinh(2x/c)/2 (:func:`equiprune.core.reparam.
l1_position`). Hence ∇Q(x_∞) − ∇Q(x₀) lies in the row space of X, and the point gradient descent
converges to is predicted exactly, without training:

    x̂ = argmin_x D_Q(x, x₀) subject to Xx = y,   x̂(λ) = (c/2)·sinh(arcsinh(2x₀/c) + 2Xᵀλ),

with λ the root of X x̂(λ) = y (a strictly convex dual, solved here by damped Newton). A small
c (m² − w² = β at the start) makes Q an L1 potential (x̂ approaches the sparse minimum-L1 solution);
a large c an L2 one (x̂ approaches x₀ plus the minimum-norm correction). Weight decay shrinks c
during training, which is the L2 → L1 transition PILoT steers.

``equiprune mirror-flow --out DIR`` runs the comparison for several β and writes mirror_flow.json,
mirror_flow.md and mirror_flow.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.core.reparam import balanced_factors
from equiprune.errors import EquipruneError


@dataclass(frozen=True)
class Problem:
    """y = X x* with X of shape (n, d), n < d, and x* with ``k`` non-zero coordinates."""

    X: torch.Tensor
    y: torch.Tensor
    x_star: torch.Tensor

    @classmethod
    def sparse(cls, n: int = 20, d: int = 60, k: int = 3, seed: int = 0) -> Problem:
        if not 0 < k <= n < d:
            raise EquipruneError(f"mirror flow: need 0 < k <= n < d (underdetermined, sparse), got n={n}, d={d}, k={k}")
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(n, d, generator=g, dtype=torch.float64) / n**0.5
        x_star = torch.zeros(d, dtype=torch.float64)
        x_star[torch.randperm(d, generator=g)[:k]] = 1 + torch.rand(k, generator=g, dtype=torch.float64)
        return cls(X, X @ x_star, x_star)


def predicted(problem: Problem, beta: float, x0: torch.Tensor | None = None, tol: float = 1e-12) -> torch.Tensor:
    """The implicit-bias prediction x̂ for the start x0 (default 0) with m² − w² = β everywhere."""
    X, y = problem.X, problem.y
    x0 = torch.zeros(X.shape[1], dtype=torch.float64) if x0 is None else x0
    a = torch.asinh(2 * x0 / beta)

    def x_of(lam):
        return beta / 2 * torch.sinh(a + 2 * X.T @ lam)

    def dual(lam):  # convex; its gradient is X x(λ) − y
        return float((beta / 4 * torch.cosh(a + 2 * X.T @ lam)).sum() - lam @ y)

    lam = torch.zeros(X.shape[0], dtype=torch.float64)
    for _ in range(200):
        residual = X @ x_of(lam) - y
        if float(residual.norm()) <= tol * max(1.0, float(y.norm())):
            return x_of(lam)
        hessian = (X * (beta * torch.cosh(a + 2 * X.T @ lam))) @ X.T
        step = torch.linalg.solve(hessian, residual)
        t, value = 1.0, dual(lam)
        while dual(lam - t * step) > value - 0.25 * t * float(residual @ step) and t > 1e-12:
            t /= 2
        lam = lam - t * step
    raise EquipruneError(f"mirror flow: the prediction for beta={beta:g} did not converge in 200 Newton steps")


def gradient_descent(problem: Problem, beta: float, lr: float | None = None, steps: int = 400_000,
                     tol: float = 1e-11) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Train m, w (x = m ⊙ w from 0, m² − w² = β) by plain gradient descent on ½‖Xx − y‖²; returns
    (x, steps taken), stopping once the residual is below ``tol``. The default step, 0.05/(‖X‖²·
    max(β, 1)), keeps the discrete steps close to the flow: x moves at sqrt(β² + 4x²) times the
    gradient, so a large β needs a proportionally smaller step."""
    X, y = problem.X, problem.y
    if lr is None:
        lr = 0.05 / (float(torch.linalg.matrix_norm(X, ord=2)) ** 2 * max(beta, 1.0))
    m, w = balanced_factors(torch.zeros(X.shape[1], dtype=torch.float64), beta)
    for step in range(1, steps + 1):
        g = X.T @ (X @ (m * w) - y)
        m, w = m - lr * g * w, w - lr * g * m
        if step % 100 == 0 and float((X @ (m * w) - y).norm()) < tol:
            return m * w, step
    return m * w, steps


def compare(problem: Problem, betas: list[float]) -> list[dict[str, Any]]:
    """For each β: gradient descent's solution, the prediction, and how far apart they are."""
    rows = []
    min_norm = problem.X.T @ torch.linalg.solve(problem.X @ problem.X.T, problem.y)
    for beta in betas:
        x_gd, steps = gradient_descent(problem, beta)
        x_hat = predicted(problem, beta)
        rows.append({
            "beta": beta,
            "steps": steps,
            "relative_gap": float((x_gd - x_hat).norm() / x_hat.norm()),
            "l1_gd": float(x_gd.abs().sum()),
            "l1_predicted": float(x_hat.abs().sum()),
            "error_to_sparse_truth": float((x_gd - problem.x_star).norm() / problem.x_star.norm()),
            "error_to_min_norm": float((x_gd - min_norm).norm() / min_norm.norm()),
            "x_gd": x_gd.tolist(),
            "x_predicted": x_hat.tolist(),
        })  # fmt: skip
    return rows


def run_study(out, betas: list[float] | None = None, seed: int = 0) -> dict[str, Any]:
    """Write mirror_flow.json, .md and .png into ``out``; returns the json's content."""
    problem = Problem.sparse(seed=seed)
    rows = compare(problem, betas or [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"n": problem.X.shape[0], "d": problem.X.shape[1], "seed": seed, "x_star": problem.x_star.tolist(),
              "rows": rows, "l1_true": float(problem.x_star.abs().sum())}  # fmt: skip
    io.write_json(out / "mirror_flow.json", result)
    io.write_text(out / "mirror_flow.md", _markdown(result))
    _plot(out / "mirror_flow.png", result)
    return result


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Mirror flow: x = m ⊙ w on underdetermined linear regression (n = {result['n']}, d = {result['d']}, "
        f"seed {result['seed']})",
        "",
        "Gradient descent from x = 0 with m² − w² = β, against the implicit-bias prediction "
        "argmin D_Q(x, 0) s.t. Xx = y.",
        "",
        "| β | steps | ‖x_GD − x̂‖ / ‖x̂‖ | ‖x_GD‖₁ | ‖x̂‖₁ | error to the sparse x* | error to the min-norm solution |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['beta']:g} | {r['steps']} | {r['relative_gap']:.2e} | {r['l1_gd']:.4f} | "
                     f"{r['l1_predicted']:.4f} | {r['error_to_sparse_truth']:.3f} | "
                     f"{r['error_to_min_norm']:.3f} |")  # fmt: skip
    lines += ["", f"‖x*‖₁ = {result['l1_true']:.4f}. Small β: an L1 potential (x* recovered); large β: L2.", ""]
    return "\n".join(lines)


def _plot(path, result: dict[str, Any]) -> None:
    from equiprune.experiments.figures import save_png, subplots

    fig, (left, right) = subplots(1, 2, figsize=(11, 3.8))
    betas = [r["beta"] for r in result["rows"]]
    left.plot(betas, [r["l1_predicted"] for r in result["rows"]], "-", color="0.4", label="prediction ‖x̂‖₁")
    left.plot(betas, [r["l1_gd"] for r in result["rows"]], "o", color="#c0392b", label="gradient descent ‖x‖₁")
    left.axhline(result["l1_true"], color="#2c7a3f", linestyle="--", label="‖x*‖₁ (the sparse truth)")
    left.set_xscale("log")
    left.set_xlabel("β = m² − w² at the start")
    left.set_ylabel("‖x‖₁ of the solution")
    left.legend(frameon=False, fontsize=8)
    left.set_title("L1 for small β, L2 for large β", fontsize=10)
    coordinates = range(result["d"])
    right.stem(coordinates, result["x_star"], linefmt="#2c7a3f", markerfmt=" ", basefmt=" ", label="x*")
    for r, color in ((result["rows"][0], "#c0392b"), (result["rows"][-1], "#3b6ea8")):
        right.plot(coordinates, r["x_gd"], ".", color=color, label=f"GD, β = {r['beta']:g}")
        right.plot(coordinates, r["x_predicted"], "x", color=color, markersize=4,
                   label=f"prediction, β = {r['beta']:g}")  # fmt: skip
    right.set_xlabel("coordinate")
    right.legend(frameon=False, fontsize=7)
    right.set_title("The solutions, coordinate by coordinate", fontsize=10)
    save_png(fig, path)

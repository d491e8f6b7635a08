"""The equilibrium pruner's mathematics: utility, its gradient, best response, projection.

Each player i of a group holds a participation s_i ∈ [0,1] and parameters θ_i. Its utility is

    U_i = B_i − C_i,   B_i = α·σ·s_i·g_i,
    C_i = β‖θ_i‖²·s_i² + γ·s_i + η·s_i·Σ_{j≠i} s_j⟨θ_i, θ_j⟩,

where g_i is the player's marginal contribution to the loss (see ``benefit_grad``) and σ = −1 for
the loss-reduction reading of the benefit (σ = +1 for the formula as printed; see ``benefit_sign``).
On [0,1], |s_i| = s_i, so the L1 cost is linear and its (right) derivative at s_i = 0 is γ: a
player at zero comes back only when its benefit beats γ.

The competition sum is computed as ⟨θ_i, Σ_j s_jθ_j⟩ − s_i‖θ_i‖²: O(n·d) per group, not O(n²·d).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from equiprune.methods.game_settings import GameSettings

# --- per-group quantities, all O(n·d) -------------------------------------------------------------


def squared_norms(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖θ_i‖² for every player, from its ``(n, d_k)`` parameter blocks."""
    return sum((b * b).sum(1) for b in blocks)


def squared_norms_of_rows(groups: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor | None]]]) -> list[torch.Tensor]:
    """``squared_norms`` for many groups at once, each given as its ``(weight (n, d), bias (n,) or
    None)`` pairs (one per layer the players own rows of: a producer, a BatchNorm).

    The training loop calls this after every step, where kernel-launch overhead, not arithmetic,
    dominates: one single-pass ``vector_norm`` per weight, squared and the bias squares added in
    place (on an accelerator by two multi-tensor kernels for all groups together), instead of
    five small kernels per group.
    """
    pairs = [pair for rows in groups for pair in rows]
    out = [torch.linalg.vector_norm(w, dim=1) for w, _ in pairs]
    if fused_kernels(out):
        torch._foreach_mul_(out, out)
        with_bias = [(sq, b) for sq, (_, b) in zip(out, pairs) if b is not None]
        if with_bias:
            sqs, biases = zip(*with_bias)
            torch._foreach_addcmul_(list(sqs), list(biases), list(biases))
    else:
        for sq, (_, b) in zip(out, pairs):
            sq.mul_(sq)
            if b is not None:
                sq.addcmul_(b, b)
    sums, i = [], 0
    for rows in groups:
        sums.append(out[i] if len(rows) == 1 else sum(out[i : i + len(rows)]))
        i += len(rows)
    return sums


def fused_kernels(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether to update ``tensors`` with ``torch._foreach_*`` ops rather than one op per tensor.

    On an accelerator a foreach op is one fused kernel for all of them. On CPU torch loops over
    the tensors inside it, with more overhead per tensor than calling the op directly: in the
    MLP's training loop the participation step took 88 µs a step with foreach ops, 64 µs without.
    Both compute the same per-tensor kernels, so the results are identical bit for bit."""
    return tensors[0].device.type != "cpu"


def inner_with_grad(blocks: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """⟨∇_{θ_i}L, θ_i⟩ for every player."""
    return sum((g * b).sum(1) for b, g in zip(blocks, grads))


def competition(blocks: Sequence[torch.Tensor], s: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Σ_{j≠i} s_j⟨θ_i, θ_j⟩ = ⟨θ_i, Σ_j s_jθ_j⟩ − s_i‖θ_i‖², in O(n·d).

    Accumulating in place (``addmv_``) would save about 45 µs a step, but it sums in another order,
    and at the costs of the former ``equiprune-best`` (η 0.05) that alone moves which neurons
    survive (the same seeds kept 14, 15 and 15 neurons at 93.22% instead of 14, 17 and 15 at
    93.53%; docs/equilibrium.md): the documented results are reproduced with this expression."""
    return sum(b @ (s @ b) for b in blocks) - s * sq_norms


# --- utility and its optimisation -----------------------------------------------------------------


def utility(
    s: torch.Tensor, g: torch.Tensor, sq_norms, comp, cfg: GameSettings, cost_scale: float = 1.0
) -> torch.Tensor:
    """U_i for every player, with g, θ and the others' participations held fixed (``comp``).

    ``cost_scale`` multiplies β, γ and η (the cost ramp)."""
    benefit = cfg.alpha * cfg.sign * s * g
    cost = cfg.beta * sq_norms * s**2 + cfg.gamma * s.abs() + cfg.eta * s * comp
    return benefit - cost_scale * cost


def utility_grad(
    s: torch.Tensor, g: torch.Tensor, sq_norms, comp, cfg: GameSettings, cost_scale: float = 1.0
) -> torch.Tensor:
    """∂U_i/∂s_i, exact for s ∈ [0,1] (the L1 term's right derivative is used at s_i = 0)."""
    cost_grad = 2 * cfg.beta * sq_norms * s + cfg.gamma + cfg.eta * comp
    return cfg.alpha * cfg.sign * g - cost_scale * cost_grad


def ascent_step_(
    gates: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    sq_norms: Sequence[torch.Tensor] | None,
    comps: Sequence[torch.Tensor] | None,
    cfg: GameSettings,
    cost_scale: float = 1.0,
    gamma_weights: Sequence[float] | None = None,
) -> None:
    """In place, for every group at once: s ← Π_[0,1](s + lr_s·∂U/∂s), the same step as
    ``project(s + lr_s * utility_grad(...))``; ``gamma_weights`` scale γ group by group.

    The training loop runs this after every weight step, where launch overhead, not arithmetic, is
    most of its cost: on an accelerator it is a handful of multi-tensor kernels over all groups, on
    CPU five in-place ops per group (see ``fused_kernels``). ``sq_norms`` may be None when β = 0,
    ``comps`` when η = 0.
    """
    lr, k = cfg.lr_s, cfg.lr_s * cost_scale
    gates, grads = list(gates), list(grads)
    l2 = -2 * cfg.beta * k  # s −= lr·scale·2β‖θ‖²·s, first, while the gates still hold the old s
    l1 = [-cfg.gamma * k * w for w in gamma_weights] if gamma_weights is not None else -cfg.gamma * k
    if fused_kernels(gates):
        if cfg.beta > 0:
            torch._foreach_addcmul_(gates, list(sq_norms), gates, value=l2)
        torch._foreach_add_(gates, grads, alpha=lr * cfg.alpha * cfg.sign)
        if cfg.eta > 0:
            torch._foreach_add_(gates, list(comps), alpha=-cfg.eta * k)
        if cfg.gamma != 0:  # a budgeted game's price may be negative: a subsidy
            torch._foreach_add_(gates, l1)
        torch._foreach_clamp_min_(gates, 0.0)
        torch._foreach_clamp_max_(gates, 1.0)
        return
    for i, s in enumerate(gates):  # the same kernels, one tensor at a time
        if cfg.beta > 0:
            s.addcmul_(sq_norms[i], s, value=l2)
        s.add_(grads[i], alpha=lr * cfg.alpha * cfg.sign)
        if cfg.eta > 0:
            s.add_(comps[i], alpha=-cfg.eta * k)
        if cfg.gamma != 0:  # a budgeted game's price may be negative: a subsidy
            s.add_(l1[i] if gamma_weights is not None else l1)
        s.clamp_(0.0, 1.0)


def best_response(
    g: torch.Tensor, sq_norms, comp, cfg: GameSettings, cost_scale: float = 1.0, gamma_weight: float = 1.0
) -> torch.Tensor:
    """argmax over s_i ∈ [0,1] of U_i: U_i is a concave quadratic in s_i, so the stationary point
    clipped to [0,1]; with no L2 curvature (β‖θ_i‖² = 0) U_i is linear and the answer is 0 or 1.
    ``gamma_weight`` scales γ for this group (``cost_weighting``), as in :func:`newton_step_`."""
    g = torch.as_tensor(g)
    slope = cfg.alpha * cfg.sign * g - cost_scale * (cfg.gamma * gamma_weight + cfg.eta * comp)
    curvature = torch.as_tensor(2 * cost_scale * cfg.beta * sq_norms, dtype=g.dtype, device=g.device)
    linear = (slope > 0).to(slope.dtype)
    stationary = slope / curvature.clamp_min(torch.finfo(slope.dtype).tiny)
    return project(torch.where(curvature > 0, stationary, linear))


#: Curvature floor of the Newton step: a player with no Fisher information and no L2 cost would
#: otherwise take an unbounded step (the projection onto [0,1] then decides it).
MIN_CURVATURE = 1e-8


def newton_step_(
    s: torch.Tensor,
    g: torch.Tensor,
    fisher: torch.Tensor,
    sq_norms,
    comp,
    cfg: GameSettings,
    cost_scale: float = 1.0,
    gamma_weight: float = 1.0,
    played: torch.Tensor | None = None,
) -> None:
    """In place: s ← Π_[0,1](s + lr_s·(∂U_i/∂s_i)/(αF_i + 2β‖θ_i‖²)).

    With the loss taken to second order around the current s⁰, L(s) ≈ L + g(s − s⁰) + ½F(s − s⁰)²
    (F the empirical Fisher, the usual stand-in for the Hessian of a log-likelihood), U_i is a
    concave quadratic in s_i and this is a damped step to its maximiser on [0,1]: with lr_s = 1
    it lands on it. ``gamma_weight`` scales γ for this group (``cost_weighting``); ``sq_norms`` and
    ``comp`` may be 0 when β and η are (the terms are then not computed).

    ``played``: the profile m the network played when g and F were measured (``anchored``), if
    not s itself; the second-order model about m then adds −αF_i(s_i − m_i) to the benefit's slope.
    """
    cost_grad = 2 * cfg.beta * sq_norms * s + cfg.gamma * gamma_weight + cfg.eta * comp
    slope = cfg.alpha * cfg.sign * g - cost_scale * cost_grad
    if played is not None:
        slope = slope - cfg.alpha * fisher * (s - played)
    curvature = cfg.alpha * fisher + 2 * cost_scale * cfg.beta * sq_norms
    s.add_(cfg.lr_s * slope / curvature.clamp_min(MIN_CURVATURE)).clamp_(0.0, 1.0)


def project(s: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the strategy set [0,1]."""
    return s.clamp(0.0, 1.0)

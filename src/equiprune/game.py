"""The equilibrium pruner's mathematics: utility, its gradient, best response, projection, presets.

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
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import ConfigError

BenefitSign = Literal["loss_reduction", "as_written"]
BenefitGrad = Literal["gated", "theta"]
Update = Literal["ascent", "best_response", "newton"]


@dataclass(frozen=True)
class GameSettings:
    """Costs and dynamics of the participation game.

    - ``alpha``, ``beta``, ``gamma``, ``eta``: benefit weight, L2, L1 and competition costs.
    - ``lr_s``: step size of projected gradient ascent on the participations.
    - ``epsilon``: players with s_i < epsilon are removed at the end.
    - ``benefit_sign``: ``"loss_reduction"`` (default) rewards a player whose growth lowers the loss,
      B_i = −α·s_i·g_i; ``"as_written"`` uses the paper's printed +α·s_i·g_i.
    - ``benefit_grad``: ``"gated"`` (default) takes g_i = ⟨∇_{s_iθ_i}L, θ_i⟩ = ∂L/∂s_i, the gradient
      with respect to the effective parameters; ``"theta"`` takes g_i = ⟨∇_{θ_i}L, θ_i⟩ with respect
      to the raw ones (for a Linear neuron this equals s_i·∂L/∂s_i, so it vanishes as s_i → 0).
    - ``update``: ``"ascent"`` (the paper's projected gradient step), ``"best_response"``
      (move to the closed-form maximiser of U_i, damped by ``lr_s`` as a fraction of the way), or
      ``"newton"``: the same damped move to the maximiser of U_i, but with the benefit taken to
      second order, its curvature the empirical Fisher information F_i of the loss in s_i
      (the mean over examples of (∂ℓ_n/∂s_i)²). The step is ∂U_i/∂s_i / (αF_i + 2β‖θ_i‖²): a
      player the examples lean on (large F_i) moves slowly, one they do not (small F_i) leaves
      fast, so players no longer decline in lockstep. See ``newton_step_``.
    - ``start``: fraction of the pruning phase during which the network trains dense before the game
      begins (participations stay at 1); the cost ramp then runs over the rest of the phase.
    - ``cost_ramp``: fraction of the pruning phase over which β, γ and η rise linearly from 0 to
      their values (0, the paper's setting, applies them in full from the first step). With
      strong costs a ramp lets the weakest players leave first, instead of every player declining
      together until whole layers collapse.
    - ``fold``: at compaction the survivors' participations fold into the next layer's input
      columns; ``"balanced"`` (default) then also equalises each neuron's incoming and outgoing
      norms where the activation allows it exactly (ReLU family; see ``compact.rebalance``), which
      gives fine-tuning a well-scaled start; ``"consumer"`` leaves the fold as it is. Which is
      better depends on the set-up, so measure: balanced lifted the MLP's fine-tuning (β 0.05,
      Adam or SGD; with consumer, SGD at lr 0.05 left the MLPs at chance), consumer did better on
      LeNet-5 (β 0, Adam; +0.13 to +0.37 points on each of 5 seeds; docs/players-and-compaction.md).
    - ``cost_weighting``: ``"uniform"`` (the paper's) charges every player the same L1 cost γ;
      ``"macs"`` charges each γ times the multiply-accumulates it accounts for, relative to the mean
      player's, so that cheap players (a fully connected neuron) are kept before expensive ones (a
      convolution filter on a large feature map) when they help the loss as much; ``"width"``
      charges each γ times the mean group size over its group's size, so a player costs the share
      of its layer it stands for and every layer pays alike for losing the same fraction of its
      players (with uniform costs a wide layer's players are each as dear as a narrow layer's, and
      the game thins the wide layer far more than the others: 7 + 9 of the MLP's 512 + 256 neurons).
    - ``cost_taper``: the L1 cost of a group's players is scaled by the group's mean participation
      to this power (0, the default, leaves it as it is). A thinning layer's survivors become
      cheaper, so the last players of a layer are not priced out together: at a strong cost every
      survivor of a layer otherwise declines in lockstep until the layer is gone.
    - ``rewind``: at compaction the survivors take back the weights they had when the run began
      (their initialisation), with participation 1, as in a lottery ticket: the game only chooses
      who stays, and the fine-tuning epochs train the survivors from their starting point (measured
      against the game's own weights in docs/equilibrium.md).
    - ``anchored``: the network plays the profile m (every alive player, s_i >= epsilon, in at full
      strength, the others out) instead of the participations themselves, and each player's
      benefit is read off the loss's second-order model about m: −g_i − F_i·(s_i − m_i), F_i the
      Fisher information (so it needs ``update = "newton"``). A player then stays while what the
      examples lose without it, F_i − g_i, exceeds its costs, and the survivors keep training at
      full strength while the others leave, so they carry trained weights into fine-tuning.
    """

    alpha: float = 1.0
    beta: float = 0.05
    gamma: float = 0.05
    eta: float = 0.0
    lr_s: float = 0.001
    epsilon: float = 0.01
    benefit_sign: BenefitSign = "loss_reduction"
    benefit_grad: BenefitGrad = "gated"
    update: Update = "ascent"
    cost_ramp: float = 0.0
    start: float = 0.0
    fold: Literal["consumer", "balanced"] = "balanced"
    cost_weighting: Literal["uniform", "macs", "width"] = "uniform"
    rewind: bool = False
    cost_taper: float = 0.0
    anchored: bool = False

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "eta", "cost_taper"):
            v = getattr(self, name)
            if not (v >= 0 and v < float("inf")):
                raise ConfigError(f"method.{name}: must be a finite number >= 0, got {v!r}")
        if not (0 < self.lr_s < float("inf")):
            raise ConfigError(f"method.lr_s: must be a finite number > 0, got {self.lr_s!r}")
        if not (0 <= self.cost_ramp <= 1):
            raise ConfigError(f"method.cost_ramp: must lie in [0, 1], got {self.cost_ramp!r}")
        if not (0 <= self.start < 1):
            raise ConfigError(f"method.start: must lie in [0, 1), got {self.start!r}")
        if not (0 <= self.epsilon <= 1):
            raise ConfigError(f"method.epsilon: must lie in [0, 1], got {self.epsilon!r}")
        if self.update in ("best_response", "newton") and self.lr_s > 1:
            raise ConfigError(f"method.lr_s: with update={self.update!r} it is a damping in (0, 1], got {self.lr_s!r}")
        if self.update == "newton" and self.benefit_grad != "gated":
            raise ConfigError(
                "method.update = 'newton' scales each step by the Fisher information of the loss in s_i, "
                "which belongs to the gated gradient: set benefit_grad = 'gated'"
            )
        if self.anchored and (self.update != "newton" or self.benefit_sign != "loss_reduction"):
            raise ConfigError(
                "method.anchored: the benefit is the loss's second-order model, whose curvature is the Fisher "
                "information: set update = 'newton' (and benefit_sign = 'loss_reduction')"
            )
        for name, allowed in (
            ("benefit_sign", ("loss_reduction", "as_written")),
            ("benefit_grad", ("gated", "theta")),
            ("update", ("ascent", "best_response", "newton")),
            ("fold", ("consumer", "balanced")),
            ("cost_weighting", ("uniform", "macs", "width")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"method.{name}: got {getattr(self, name)!r}, expected one of {list(allowed)}")

    @property
    def sign(self) -> float:
        return -1.0 if self.benefit_sign == "loss_reduction" else 1.0


#: The paper's four Table 2 configurations (α = 1, lr_s = 0.001, η = 0 in all of them).
PRESETS: dict[str, dict[str, float]] = {
    "very-high-beta": {"alpha": 1.0, "beta": 0.1, "gamma": 0.0, "eta": 0.0, "lr_s": 0.001},
    "extreme-beta": {"alpha": 1.0, "beta": 0.5, "gamma": 0.0, "eta": 0.0, "lr_s": 0.001},
    "l1-sparsity-strong": {"alpha": 1.0, "beta": 0.001, "gamma": 0.1, "eta": 0.0, "lr_s": 0.001},
    "l1-l2-combined": {"alpha": 1.0, "beta": 0.05, "gamma": 0.05, "eta": 0.0, "lr_s": 0.001},
}

#: What the paper reports for each preset (MNIST, 784-512-256-10, 20 epochs).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "very-high-beta": {"test_accuracy": 0.9664, "neurons_kept_fraction": 1.0},
    "extreme-beta": {"test_accuracy": 0.9115, "neurons_kept_fraction": 0.0482},
    "l1-sparsity-strong": {"test_accuracy": 0.8957, "neurons_kept_fraction": 0.0169},
    "l1-l2-combined": {"test_accuracy": 0.9154, "neurons_kept_fraction": 0.0195},
}


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
        if cfg.gamma > 0:
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
        if cfg.gamma > 0:
            s.add_(l1[i] if gamma_weights is not None else l1)
        s.clamp_(0.0, 1.0)


def best_response(g: torch.Tensor, sq_norms, comp, cfg: GameSettings, cost_scale: float = 1.0) -> torch.Tensor:
    """argmax over s_i ∈ [0,1] of U_i: U_i is a concave quadratic in s_i, so the stationary point
    clipped to [0,1]; with no L2 curvature (β‖θ_i‖² = 0) U_i is linear and the answer is 0 or 1."""
    g = torch.as_tensor(g)
    slope = cfg.alpha * cfg.sign * g - cost_scale * (cfg.gamma + cfg.eta * comp)
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

"""The settings of the participation game (costs, dynamics, the prune decision) and the paper's
named presets. The maths that reads them is in :mod:`equiprune.methods.game_math`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from equiprune.errors import ConfigError

BenefitSign = Literal["loss_reduction", "as_written"]
BenefitGrad = Literal["gated", "theta"]
Update = Literal["ascent", "best_response", "newton"]
Decision = Literal["participation", "contribution"]
BudgetUnit = Literal["players", "params", "macs"]
BUDGET_UNITS: tuple[str, ...] = ("players", "params", "macs")
#: The prune decisions the game can make (``decision``); runs report the one not played beside it.
DECISIONS: tuple[str, ...] = ("participation", "contribution")


@dataclass(frozen=True)
class GameSettings:
    """Costs and dynamics of the participation game.

    - ``alpha``, ``beta``, ``gamma``, ``eta``: benefit weight, L2, L1 and competition costs.
    - ``lr_s``: step size of projected gradient ascent on the participations.
    - ``epsilon``: players with s_i < epsilon are removed at the end (``decision = "participation"``).
    - ``decision``: how the end decides who is removed. ``"participation"`` (the paper's rule, its
      presets' too): s_i < epsilon. ``"contribution"``: a player's effective contribution
      s_i·‖what it reads‖·‖what reads it‖, relative to its layer's largest, below
      ``contribution_threshold`` (``core.compact.contributions``); it sees through the scale a
      player's weights can take over from a small participation, which the paper's rule cuts.
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
    - ``budget``: the fraction of the model to keep (in ``budget_unit``); the game then sets γ itself,
      as a price (``methods.game_budget``): raised while more players participate than a target
      allows, lowered when fewer do, the target falling from everyone to the budget on gradual
      pruning's cubic schedule over ``cost_ramp`` of the game (all of it when 0). The end decision is
      fitted to the budget exactly; results.json's ``budget_fit`` says how many survivors the fit
      removed or restored. A budget and a ``gamma`` together are refused: the price is γ.
    - ``budget_unit``: ``"players"`` (default), ``"params"`` or ``"macs"`` of the whole model.
    - ``price_start``, ``price_rate``: the price's value when the game begins, and how fast it moves:
      how far log γ travels over the whole ramp at a relative gap of 1 between the size and the
      target (the gap, clipped to [−1, 1], scales each step's move).
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
    decision: Decision = "participation"
    contribution_threshold: float = 0.01  # decision = "contribution": removed below this share of the layer's largest
    budget: float | None = None  # fraction of the model to keep; the game then sets γ itself, as a price
    budget_unit: BudgetUnit = "players"  # what the budget counts: players, or params or MACs of the whole model
    price_start: float = 0.001  # with a budget: the price γ when the game begins
    price_rate: float = 50.0  # with a budget: how far log γ may travel over the ramp (at a relative gap of 1)

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
        if not (0 < self.contribution_threshold < 1):
            raise ConfigError(
                "method.contribution_threshold: a contribution relative to the layer's largest, in (0, 1), "
                f"got {self.contribution_threshold!r}"
            )
        if self.budget is not None and not (0 < self.budget <= 1):
            raise ConfigError(f"method.budget: a fraction of the model to keep, in (0, 1], got {self.budget!r}")
        for name in ("price_start", "price_rate"):
            if not (0 < getattr(self, name) < float("inf")):
                raise ConfigError(f"method.{name}: must be a finite number > 0, got {getattr(self, name)!r}")
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
            ("decision", DECISIONS),
            ("budget_unit", BUDGET_UNITS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"method.{name}: got {getattr(self, name)!r}, expected one of {list(allowed)}")

    @property
    def sign(self) -> float:
        return -1.0 if self.benefit_sign == "loss_reduction" else 1.0


#: The paper's four Table 2 configurations (α = 1, lr_s = 0.001, η = 0 in all of them).
PRESETS: dict[str, dict[str, float | str]] = {
    "very-high-beta": {"alpha": 1.0, "beta": 0.1, "gamma": 0.0, "eta": 0.0, "lr_s": 0.001, "decision": "participation"},
    "extreme-beta": {"alpha": 1.0, "beta": 0.5, "gamma": 0.0, "eta": 0.0, "lr_s": 0.001, "decision": "participation"},
    "l1-sparsity-strong": {
        "alpha": 1.0,
        "beta": 0.001,
        "gamma": 0.1,
        "eta": 0.0,
        "lr_s": 0.001,
        "decision": "participation",
    },
    "l1-l2-combined": {
        "alpha": 1.0,
        "beta": 0.05,
        "gamma": 0.05,
        "eta": 0.0,
        "lr_s": 0.001,
        "decision": "participation",
    },
}

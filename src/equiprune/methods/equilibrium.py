"""Equilibrium-driven pruning as a method: projected ascent of every player's utility per step."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from equiprune.core.compact import PruneResult, compact, contributions, keep_masks
from equiprune.core.measure import macs_per_player
from equiprune.core.players import STRUCTURED_KINDS, GatedModel, PerExampleGateGrads, grad_or_zeros
from equiprune.core.selection import alive_metrics
from equiprune.core.weight_players import WeightGatedModel
from equiprune.errors import ConfigError
from equiprune.methods import game_budget as budgeting
from equiprune.methods import game_math as game
from equiprune.methods.base import METHODS, Method, require_calibration
from equiprune.methods.game_settings import DECISIONS, PRESETS, GameSettings

#: Bin edges of the participation histogram written each epoch.
HISTOGRAM_BINS = 20
#: What to change when a budgeted game's decision would empty a layer: the budget holds the best
#: players of all layers together, so one layer may lose them all.
BUDGETED_REMEDY = "raise method.budget, or exclude this layer"


@METHODS.register("game")
class EquilibriumPruner(Method):
    """Players are the structured groups (neurons, filters, heads) or, with ``players = "weight"``,
    single weights; participations start at 1 and follow projected gradient ascent (or damped best
    response) on their utilities after every weight step."""

    name = "game"
    settings_type = GameSettings
    player_kinds = (*STRUCTURED_KINDS, "weight")
    default_role = "candidate"
    plays_its_decision = True
    divergence_hint = "costs and step sizes (gamma, eta, lr_s)"
    budgeted = True  # optional: without a budget, the costs set the size
    price_setting = "gamma"

    @classmethod
    def resolve_settings(cls, preset: str | None, settings: dict[str, Any]) -> GameSettings:
        resolved = super().resolve_settings(preset, settings)
        if resolved.budget is not None and "gamma" in settings:
            raise ConfigError(
                "method.gamma: with method.budget the game sets γ itself, as a price for reaching the budget; "
                "remove gamma (price_start sets where the price begins), or remove budget to fix γ"
            )
        return resolved

    @classmethod
    def written_settings(cls, settings: GameSettings) -> dict[str, Any]:
        written = dataclasses.asdict(settings)
        if settings.budget is not None:  # γ is the game's price then, not a setting
            del written["gamma"]
        return written

    def __init__(self, settings: GameSettings, exclude: tuple[str, ...] = (), players: str | None = None):
        super().__init__(settings, exclude, players)
        self._step = 0  # participation updates so far (drives the cost ramp)
        self._ramp_steps = 0.0  # set by before_run: steps over which costs rise
        self._start_steps = 0.0  # set by before_run: steps of dense training before the game
        self._gamma_weights: list[float] | None = None  # per group, unless cost_weighting = "uniform"
        self._initial: dict[str, torch.Tensor] | None = None  # the weights to rewind to (rewind = true)
        self._recorder: PerExampleGateGrads | None = None  # per-example gate gradients (update = "newton")
        self._strategies: list[torch.Tensor] | None = None  # anchored: the participations; the gates play m
        self._refs: _PlayerRefs | None = None  # the trained model's gates and rows, looked up once
        self._price: budgeting.Price | None = None  # with a budget: γ, set by the game (before_run)
        self._units: torch.Tensor | None = None  # with a budget: what one player of each group weighs
        self._input_shape = None  # of one example, for MACs

    @classmethod
    def presets(cls) -> dict[str, dict[str, Any]]:
        return PRESETS

    def prepare(self, model: nn.Module) -> GatedModel | WeightGatedModel:
        if self.players == "weight":
            if self.settings.decision == "contribution":
                raise ConfigError(
                    "method.decision = 'contribution' needs structured players (it reads a player's inputs and "
                    "consumers); use decision = 'participation' with players = 'weight'"
                )
            if self.settings.update == "newton":
                raise ConfigError(
                    "method.update = 'newton' needs structured players; use update = 'ascent' with players = 'weight'"
                )
            if self.settings.budget is not None:
                raise ConfigError(
                    "method.budget: the game's budget needs structured players (neurons, filters, heads); with "
                    "players = 'weight' set gamma, or use a budgeted weight method (weight-magnitude, gmp, imp)"
                )
            return WeightGatedModel(model, self.exclude)
        gated = self.attach(model)
        self._recorder = gated.record_per_example(True) if self.settings.update == "newton" else None
        return gated

    def unwrap(self, trained: GatedModel | WeightGatedModel) -> nn.Module:
        return trained.model

    def pruned_kinds(self, trained: GatedModel | WeightGatedModel) -> str:
        if self.players or isinstance(trained, WeightGatedModel):
            return self.players or "weight"
        return "+".join(sorted({g.kind for g in trained.groups}))

    def removal_threshold(self) -> float | None:
        # with decision = "contribution", no line on the participations separates who goes
        return self.settings.epsilon if self.settings.decision == "participation" else None

    def before_run(self, trained: GatedModel, steps_per_epoch: int, epochs: int, calibration=None) -> None:
        if self.settings.rewind:
            if isinstance(trained, WeightGatedModel):
                raise ConfigError("method.rewind: rewinds structured players; with players = 'weight' use method 'imp'")
            # A resumed run replaces this with its checkpoint's copy (load_state_dict comes after).
            self._initial = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}
        total = steps_per_epoch * epochs
        self._start_steps = self.settings.start * total  # dense training before the game begins
        self._ramp_steps = self.settings.cost_ramp * (total - self._start_steps)
        self._step = 0
        self._gamma_weights = None
        if self.settings.anchored:  # a resumed run replaces these with its checkpoint's
            self._strategies = [s.detach().clone() for s in trained.gates]
        if self.settings.cost_weighting == "width":  # player-weighted mean of the weights is 1
            sizes = [s.numel() for s in trained.gates]
            self._gamma_weights = [sum(sizes) / len(sizes) / n for n in sizes]
        elif self.settings.cost_weighting == "macs":
            if isinstance(trained, WeightGatedModel):
                raise ConfigError("method.cost_weighting = 'macs' weighs structured players; use 'uniform' for weights")
            needs = "method.cost_weighting = 'macs' reads the input shape from a training batch"
            macs = macs_per_player(trained, require_calibration(calibration, needs).input_shape)
            mean = sum(m * g.size for m, g in zip(macs, trained.groups)) / sum(g.size for g in trained.groups)
            self._gamma_weights = [m / mean for m in macs]
        self._input_shape = calibration.input_shape if calibration is not None else None
        if self.settings.budget is not None:
            self._start_budget(trained, total)
        self._sync_recording()

    def _start_budget(self, trained: GatedModel, total_steps: int) -> None:
        cfg = self.settings
        units = budgeting.unit_weights(trained, cfg.budget_unit, self._input_shape)  # first: says if a shape is missing
        budgeting.check_feasible(trained, cfg.budget, cfg.budget_unit, self._input_shape)
        self._units = torch.tensor(units, dtype=torch.float64)
        end = self._start_steps + (self._ramp_steps or (total_steps - self._start_steps))
        # a resumed run replaces the price with its checkpoint's (load_state_dict comes after)
        self._price = budgeting.Price(
            cfg.budget, cfg.price_rate, cfg.price_start, cfg.price_start, self._start_steps, end
        )

    def _size(self, strategies: list[torch.Tensor], chosen: bool = False) -> float:
        """The fraction of the model the players still at s >= epsilon make up, in budget_unit;
        ``chosen``: only those above epsilon, who stay by their own choice and not by the hold (which
        parks players at exactly epsilon): the price answers what the players choose."""
        eps = self.settings.epsilon
        alive = torch.stack([(s > eps if chosen else s >= eps).sum() for s in strategies]).cpu().double()
        sizes = torch.tensor([float(s.numel()) for s in strategies], dtype=torch.float64)
        return float((alive * self._units).sum() / (sizes * self._units).sum())

    def weight_parameters(self, trained: GatedModel) -> list[nn.Parameter]:
        return trained.weight_parameters()

    def cost_scale(self) -> float:
        """How much of the costs apply at the current step (the linear cost ramp after the start)."""
        played = self._step - self._start_steps
        return min(1.0, max(0.0, played / self._ramp_steps)) if self._ramp_steps > 0 else 1.0

    def state_dict(self) -> dict[str, Any]:
        price = self._price.value if self._price is not None else None
        return {"step": self._step, "initial": self._initial, "strategies": self._strategies, "price": price}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        self._initial = state.get("initial")
        self._strategies = state.get("strategies")
        if self._price is not None and state.get("price") is not None:
            self._price.value = state["price"]
        self._sync_recording()

    def _sync_recording(self) -> None:
        """Record per-example gate gradients only for steps the game plays: during a dense start
        nothing reads them, and recording costs a product and a sum per gated input. Derived from
        the step count alone, so a resumed run records exactly when an uninterrupted one does."""
        if self._recorder is not None:
            self._recorder.active = self._step + 1 > self._start_steps

    def reads_scaled_gradients(self) -> bool:
        return self._recorder is not None  # the Newton update's per-example gate gradients

    @torch.no_grad()
    def after_step(self, trained: GatedModel) -> None:
        cfg = self.settings
        self._step += 1
        self._sync_recording()  # for the next step's backward
        if self._step <= self._start_steps:  # still training dense: participations stay at 1
            return
        scale = self.cost_scale()
        if self._price is not None:  # γ is the price, set by how far the size is from its target
            price = self._price.update(self._step, self._size(self._participations(trained), chosen=True))
            # a copy with γ set to the price, bypassing the settings' checks: a price may be negative
            cfg = copy.copy(cfg)
            object.__setattr__(cfg, "gamma", price)
        gates = self._lookup(trained).gates  # what the network played: the participations, or m if anchored
        if isinstance(trained, WeightGatedModel):
            gs, sqs, comps = self._weight_terms(trained, gates)
        else:
            gs, sqs, comps = self._group_terms(trained, gates)
        strategies = self._participations(trained)
        weights = self._tapered(self._gamma_weights, strategies)
        if cfg.update == "ascent":
            game.ascent_step_(gates, gs, sqs or None, comps or None, cfg, scale, weights)
        else:
            self._respond(strategies, gates, gs, sqs, comps, weights, cfg, scale)
        if self._price is not None:
            self._hold_target(strategies, gates)

    def _respond(self, strategies, gates, gs, sqs, comps, weights, cfg: GameSettings, scale: float) -> None:
        """Each group's damped best response, or its Newton form (anchored: then the profile)."""
        fishers = None
        if cfg.update == "newton":
            fishers = self._recorder.fisher()  # of this step's batch, recorded during its backward
            self._recorder.clear()
        for i, s in enumerate(strategies):  # group by group: damped best response, or its Newton form
            sq = sqs[i] if sqs else 0.0
            comp = comps[i] if comps else 0.0
            weight = 1.0 if weights is None else weights[i]
            if cfg.anchored:
                game.newton_step_(s, gs[i], fishers[i], sq, comp, cfg, scale, weight, played=gates[i])
                gates[i].copy_(s >= cfg.epsilon)  # the profile the next step plays
                gates[i][s.argmax()] = 1.0  # never an empty layer: its best player stays in play
            elif fishers is not None:
                game.newton_step_(s, gs[i], fishers[i], sq, comp, cfg, scale, weight)
            else:
                s.lerp_(game.best_response(gs[i], sq, comp, cfg, scale, weight), cfg.lr_s)

    @torch.no_grad()
    def _hold_target(self, strategies: list[torch.Tensor], gates: list[torch.Tensor]) -> None:
        """Never fewer players than the target path allows: where the costs push out more than it
        asks, the best of the leaving players (by participation) stay at ε, so the size follows the
        target down instead of collapsing below it and taking the network's accuracy with it (the
        price alone lags the players: LeNet-300-100 at 2% fell to one player per layer)."""
        eps = self.settings.epsilon
        keep = budgeting.hold(strategies, self._units, self._price.target(self._step), eps)
        if keep is None:
            return
        for s, g, k in zip(strategies, gates, keep):
            s.masked_fill_(k & (s < eps), eps)
            if self.settings.anchored:
                g.masked_fill_(k, 1.0)

    def _lookup(self, trained) -> _PlayerRefs:
        if self._refs is None or self._refs.model is not trained:
            self._refs = _PlayerRefs(trained)
        return self._refs

    def _tapered(self, weights: list[float] | None, gates: list[torch.Tensor]) -> list[float] | None:
        """The groups' γ weights times their mean participation to the power ``cost_taper``."""
        taper = self.settings.cost_taper
        if taper == 0:
            return weights
        means = torch.stack([s.mean() for s in gates]).pow(taper).tolist()  # one host sync per step
        base = weights if weights is not None else [1.0] * len(gates)
        return [w * m for w, m in zip(base, means)]

    def _group_terms(self, trained: GatedModel, gates: list[torch.Tensor]):
        """g_i, ‖θ_i‖² and the competition sums of every structured player, one tensor per group."""
        cfg, groups = self.settings, trained.groups
        if cfg.benefit_grad == "gated":
            gs = [grad_or_zeros(s) for s in gates]
        else:
            gs = [game.inner_with_grad(grp.blocks(), grp.grad_blocks()) for grp in groups]
        # Only the O(n·d) terms whose cost weight is non-zero: they are most of the step's overhead.
        sqs = game.squared_norms_of_rows(self._lookup(trained).rows()) if (cfg.beta > 0 or cfg.eta > 0) else []
        comps = [game.competition(grp.blocks(), s, sq) for grp, s, sq in zip(groups, gates, sqs)] if cfg.eta > 0 else []
        return gs, sqs, comps

    def _weight_terms(self, trained: WeightGatedModel, gates: list[torch.Tensor]):
        """The same for single weights, element-wise over each layer's weight tensor: θ_i = w_i, so
        ‖θ_i‖² = w_i² and Σ_{j≠i} s_j⟨θ_i, θ_j⟩ = w_i·(Σ_j s_j w_j − s_i w_i) within the layer."""
        raw = trained.weights()
        cfg, weights = self.settings, [w.detach() for w in raw]
        if cfg.benefit_grad == "gated":  # ∂L/∂s_i = w_i·∂L/∂(s_i w_i), from autograd
            gs = [grad_or_zeros(s) for s in gates]
        else:  # ⟨∇_{w_i} L, w_i⟩
            gs = [w * grad_or_zeros(p) for w, p in zip(weights, raw)]
        sqs = [w * w for w in weights] if (cfg.beta > 0 or cfg.eta > 0) else []
        comps = [w * ((s * w).sum() - s * w) for w, s in zip(weights, gates)] if cfg.eta > 0 else []
        return gs, sqs, comps

    def _participations(self, trained) -> list[torch.Tensor]:
        """The players' strategies: the gates themselves, or, when anchored, the participations the
        method keeps beside the 0/1 profile the gates play."""
        return self._strategies if self.settings.anchored else self._lookup(trained).gates

    def epoch_metrics(self, trained: GatedModel) -> dict[str, Any]:
        strategies = self._participations(trained)
        s_all = torch.cat([s.detach().flatten() for s in strategies]).float().cpu()
        eps = self.settings.epsilon
        hist = torch.histc(s_all, bins=HISTOGRAM_BINS, min=0.0, max=1.0)
        names = self._names(trained)
        kept = {name: int((s.detach() >= eps).sum()) for name, s in zip(names, strategies)}
        return {
            **alive_metrics(kept, {name: s.numel() for name, s in zip(names, strategies)}),
            "undecided_fraction": _undecided_among(s_all),
            # among the survivors alone: with 98% gone, the share over all players cannot show them
            "undecided_among_survivors": _undecided_among(s_all[s_all >= eps]),
            "participation_histogram": [int(c) for c in hist.tolist()],
            **self._budget_metrics(strategies),
        }

    def _budget_metrics(self, strategies: list[torch.Tensor]) -> dict[str, Any]:
        """The budget's path: the price, the target and the size now (fractions in budget_unit)."""
        if self._price is None:
            return {}
        return {
            "price": self._price.value,
            "budget_target": self._price.target(self._step),
            "size": self._size(strategies),
        }

    @staticmethod
    def _names(trained) -> list[str]:
        return trained.names if isinstance(trained, WeightGatedModel) else [g.name for g in trained.groups]

    def finish(self, trained: GatedModel, calibration=None) -> PruneResult:
        if isinstance(trained, WeightGatedModel):
            return trained.compact(self.settings.epsilon)
        notes: list[str] = []
        masks = self._keep_masks(trained, self.settings.decision, notes)
        fitted = None
        if self.settings.budget is not None:
            masks, fitted = self._fit_budget(trained, masks)
        if self.settings.rewind:
            # The game chose who stays; the survivors restart from their initial weights, ungated.
            with torch.no_grad():
                trained.model.load_state_dict(self._initial)
                for s in trained.gates:
                    s.fill_(1.0)
        result = compact(trained, masks, balance=self.settings.fold == "balanced" and not self.settings.rewind)
        result.notes, result.budget_fit = notes, fitted
        return result

    def _fit_budget(self, trained: GatedModel, decided: dict[str, torch.Tensor]):
        """The decision fitted to the budget: the game's survivors first, then by contribution."""
        rank = budgeting.ranks([decided[g.name].float() for g in trained.groups], contributions(trained))
        cfg = self.settings
        masks, fitted = budgeting.fit(trained, decided, rank, cfg.budget, cfg.budget_unit, self._input_shape)
        fitted["price"] = self._price.value if self._price is not None else None
        return masks, fitted

    def other_decisions(self, trained: GatedModel) -> dict[str, PruneResult]:
        # A rewound network forgets what the game trained, so another decision's result would
        # not be the one the run would have had.
        if isinstance(trained, WeightGatedModel) or self.settings.rewind:
            return {}
        others = [d for d in DECISIONS if d != self.settings.decision]
        return {d: compact(trained, self._keep_masks(trained, d, []), balance=self.settings.fold == "balanced")
                for d in others}  # fmt: skip

    def _keep_masks(self, trained: GatedModel, decision: str, notes: list[str]) -> dict[str, torch.Tensor]:
        # with a budget the advice to set one would mislead: the budget (or the layer) is what to change
        remedy = BUDGETED_REMEDY if self.settings.budget is not None else None
        if decision == "contribution":
            return keep_masks(trained, self.settings.contribution_threshold, contributions(trained),
                              rule="contribution_threshold", notes=notes, remedy=remedy)  # fmt: skip
        return keep_masks(trained, self.settings.epsilon, notes=notes, remedy=remedy)


def _undecided_among(s: torch.Tensor) -> float | None:
    """The fraction of ``s`` strictly inside (0.05, 0.95); None for no players."""
    return float(((s > 0.05) & (s < 0.95)).float().mean()) if s.numel() else None


class _PlayerRefs:
    """A trained model's gates and its players' parameter rows, as every step of the game reads
    them, looked up once per model: going through ``nn.ParameterList`` and ``nn.Module`` attributes
    by name each step cost the MLP's game a tenth of its participation update (386 against 338 µs
    a step in its training loop).

    Only rows that are parameters themselves are kept (an MLP's weights and biases, the same
    objects the weight optimizer holds); views (a filter's flattened weight, a head's rows, a
    BatchNorm's slice) are made anew each step, since a view would keep reading the old storage
    once ``Module.to`` replaces a parameter's data."""

    def __init__(self, trained: nn.Module):
        self.model = trained
        self.gates = list(trained.gates)
        groups = getattr(trained, "groups", [])
        self._rows = [rows if all(isinstance(t, nn.Parameter) for pair in rows for t in pair if t is not None) else None
                      for rows in (grp.rows() for grp in groups)]  # fmt: skip

    def rows(self) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """``[group.rows() for group in trained.groups]``."""
        return [kept if kept is not None else grp.rows() for kept, grp in zip(self._rows, self.model.groups)]

"""The interface every pruning method implements, and the registry of methods.

A method never owns the training loop. The loop calls, in order:
``prepare`` (wrap the model, once), ``before_run``, then per step ``penalty`` (added to the loss)
and ``after_step`` (after the optimizer step), per epoch ``epoch_metrics`` and ``after_epoch``, and at the end of its
phase ``finish``, which returns the compacted plain model. ``before_run`` and ``finish`` receive a
:class:`Calibration`: training batches a method may look at outside the training steps (saliency
at initialisation, Taylor scores at the end) without disturbing the training order.

A new method is one file: a settings dataclass, a :class:`Method` subclass, and
``@METHODS.register("name")``; import it in ``methods/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.core.compact import PruneResult
from equiprune.core.players import STRUCTURED_KINDS, GatedModel, attach, find_players
from equiprune.data import Batches
from equiprune.errors import ConfigError
from equiprune.registry import Registry
from equiprune.schema import from_dict


class Calibration:
    """The first ``n`` batches of the training split in an order of their own (seeded apart from the
    training order), for methods that score players on data outside the training steps; or, from
    Python, of any loader of ``(inputs, labels)`` batches (:meth:`from_loader`)."""

    def __init__(self, split, batch_size: int, seed: int):
        self._batches = Batches(split, batch_size, shuffle=True, seed=seed + 7919)
        self._loader, self._device = None, None
        self.input_shape = tuple(split.x.shape[1:])

    @classmethod
    def from_loader(cls, loader: Iterable, device: torch.device | str | None = None) -> Calibration:
        """Calibration batches from ``loader``, anything that yields ``(inputs, labels)`` pairs of
        tensors and can be iterated again (a ``torch.utils.data.DataLoader``, a list of batches): a
        method that asks for n batches gets the first n of a fresh pass (so a shuffling loader gives
        other batches each time), moved to ``device`` when one is given. The input shape of one
        example is read from the first batch."""
        if iter(loader) is loader:
            raise ConfigError(
                f"calibration: a {type(loader).__name__} can be read only once, but methods read their batches "
                "more than once; give a DataLoader or a list of (inputs, labels) batches"
            )
        first = next(iter(loader), None)
        if first is None:
            raise ConfigError("calibration: the loader yielded no batches; give one with at least one batch")
        calibration = cls.__new__(cls)  # no split to shuffle: the loader's own order
        calibration._batches, calibration._loader, calibration._device = None, loader, device
        calibration.input_shape = tuple(_pair(first)[0].shape[1:])
        return calibration

    def batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is None:
            return itertools.islice(self._batches.epoch(0), n)
        return (_moved(_pair(batch), self._device) for batch in itertools.islice(self._loader, n))

    def mean_saliency(self, model: nn.Module, tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        """|t ⊙ ∂L/∂t| for each tensor t, averaged over the first ``n`` batches (L: the
        cross-entropy of ``model``): first-order Taylor scores of gates, SNIP's of weights."""
        total = [torch.zeros_like(t) for t in tensors]
        seen = 0
        for x, y in self.batches(n):
            with torch.enable_grad():  # iterative rounds run inside the loop's no-grad after_step
                grads = torch.autograd.grad(F.cross_entropy(model(x), y), tensors)
            for acc, t, g in zip(total, tensors, grads):
                acc += (t.detach() * g).abs()
            seen += 1
        return [t / max(seen, 1) for t in total]


def _pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)):
        what = f"a {type(batch).__name__} of {len(batch)} ({', '.join(type(t).__name__ for t in batch)})"
    else:
        what = f"a {type(batch).__name__}"
    raise ConfigError(f"calibration: each batch must be an (inputs, labels) pair of tensors, got {what}")


def _moved(batch: tuple[torch.Tensor, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch if device is None else (batch[0].to(device), batch[1].to(device))


#: How a data-driven method gets its batches; every "needs data" error ends with it.
CALIBRATION_HINT = (
    "from Python, pass calibration=Calibration.from_loader(train_loader) (equiprune.methods.base) to "
    "before_run() and finish(); `equiprune run` passes the training split itself"
)


def no_calibration(needed_by: str) -> ConfigError:
    """The error for a method given no batches: what needs them (``needed_by``, a clause) and how to give them."""
    return ConfigError(f"{needed_by}, and none were given: {CALIBRATION_HINT}")


def require_calibration(calibration: Calibration | None, needed_by: str) -> Calibration:
    """``calibration``, or :func:`no_calibration`'s error."""
    if calibration is None:
        raise no_calibration(needed_by)
    return calibration


class Method:
    name: ClassVar[str]
    settings_type: ClassVar[type]
    #: Player kinds the method can prune (see ``core.players``); the loop refuses any other.
    player_kinds: ClassVar[tuple[str, ...]] = STRUCTURED_KINDS
    #: Whether the settings have a ``budget`` (the fraction of players kept): sweeps run such a
    #: method once per budget, and results.json reports it.
    budgeted: ClassVar[bool] = False
    #: For a method whose size a setting sets when no budget is given (the game's γ): a sweep
    #: entry that gives this setting runs it as given, not once per budget.
    price_setting: ClassVar[str | None] = None
    #: The method's part in a sweep report unless the sweep says otherwise: a "candidate" is judged
    #: against every "baseline"; a "reference" (dense, scratch) is shown but never judged or best.
    default_role: ClassVar[str] = "baseline"
    #: What to lower, besides the learning rate, when training under the method diverges (named
    #: in the run's warning).
    divergence_hint: ClassVar[str] = "step sizes"
    #: Whether the trained model at the end of the method's phase already computes what the
    #: method keeps (the game plays its participations; dense prunes nothing), so that compaction
    #: should cost no accuracy: the loop's compaction guard checks it. One-shot methods select in
    #: ``finish``, where the drop is the pruning itself, and are not checked.
    plays_its_decision: ClassVar[bool] = False

    def __init__(self, settings: Any, exclude: tuple[str, ...] = (), players: str | None = None):
        self.settings = settings
        self.exclude = tuple(exclude)  # layer names left ungated
        self.players = players  # the one player kind to prune; None: every kind the method supports

    def attach(self, model: nn.Module) -> GatedModel:
        """Gate the model's structured players (of the configured kind), minus the excluded layers."""
        kinds = (self.players,) if self.players else [k for k in self.player_kinds if k in STRUCTURED_KINDS]
        return attach(model, self.exclude, kinds)

    @classmethod
    def presets(cls) -> dict[str, dict[str, Any]]:
        """Named bundles of settings; explicit settings override a preset's."""
        return {}

    @classmethod
    def resolve_settings(cls, preset: str | None, settings: dict[str, Any]) -> Any:
        """The method's settings dataclass from a preset's values overridden by ``settings``, each
        field checked by type and range (errors name ``method.<field>``)."""
        values: dict[str, Any] = {}
        if preset is not None:
            presets = cls.presets()
            if preset not in presets:
                raise ConfigError(
                    f"method.preset: unknown preset {preset!r} for method {cls.name!r}; "
                    f"expected one of {sorted(presets) or 'none (this method has no presets)'}"
                )
            values.update(presets[preset])
        values.update(settings)
        return from_dict(cls.settings_type, values, "method")

    @classmethod
    def written_settings(cls, settings: Any) -> dict[str, Any]:
        """The settings as a run's config.toml writes them: read back, they resolve to the same."""
        return dataclasses.asdict(settings)

    @classmethod
    def from_config(
        cls, preset: str | None, settings: dict[str, Any], exclude: tuple[str, ...] = (), players: str | None = None
    ) -> Method:
        return cls(cls.resolve_settings(preset, settings), exclude, players)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the module to train (the model itself, or a wrapper that gates it)."""
        return model

    def before_run(
        self, trained: nn.Module, steps_per_epoch: int, epochs: int, calibration: Calibration | None = None
    ) -> None:
        """Called once before training under the method (``epochs``: the method's own phase)."""

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        """What the method's training phase depends on, when runs may share it (else None).

        One-shot methods that train the dense model and only select players at the end return
        ``"dense"``: every such method and budget on the same data, model, training settings and
        seed trains the very same network, so a sweep trains it once and reuses it.
        """
        return None

    def unwrap(self, trained: nn.Module) -> nn.Module:
        """The configured model inside ``trained`` (``prepare``'s result): itself, unless the
        method wraps it in gates."""
        return trained

    def pruned_kinds(self, trained: nn.Module) -> str:
        """What the run pruned, for its results: the configured player kind, else the method's own."""
        return self.players or self.player_kinds[0]

    def budget(self) -> float | None:
        """The fraction of players the method keeps, for a budgeted method; else None."""
        return self.settings.budget if self.budgeted else None

    def removal_threshold(self) -> float | None:
        """The participation below which a player is removed, for methods that decide so (drawn
        on the participation histogram); else None."""
        return None

    def l1_term(self, model: nn.Module) -> float:
        """The value of the method's weight penalty on a plain ``model`` (the pruning-limit
        prediction takes it into account); 0 for a method without one."""
        return 0.0

    def weight_parameters(self, trained: nn.Module) -> list[nn.Parameter]:
        """The parameters the weight optimizer owns."""
        return list(trained.parameters())

    def penalty(self, trained: nn.Module) -> torch.Tensor | None:
        return None

    def before_step(self, trained: nn.Module) -> None:
        """Called at the start of every step of the method's phase, before its forward pass: work
        that must follow the last step's epoch-end evaluation and checkpoint (a lottery round's
        prune and rewind)."""

    def after_step(self, trained: nn.Module) -> None:
        pass

    def reads_scaled_gradients(self) -> bool:
        """True when ``after_step`` reads gradients the training loop cannot unscale (per-example
        ones recorded during backward), which fp16's loss scaling would multiply: such a run is
        refused ``train.precision = "fp16"`` and steered to bf16."""
        return False

    def optimizer_restart(self) -> int | None:
        """Asked after every ``before_step``: a number of steps if the weight optimizer should start
        afresh (state and learning-rate schedule, the schedule spanning that many steps), else None.
        Rewinding methods (lottery tickets) restart training from their rewind point."""
        return None

    def epoch_metrics(self, trained: nn.Module) -> dict[str, Any]:
        return {}

    def after_epoch(self, trained: nn.Module, row: dict[str, Any]) -> None:
        """Called after each epoch of the method's phase with the epoch's figures (``loss``,
        ``train_accuracy``, ``test_accuracy``...), before its checkpoint: per-epoch schedules (PILoT's
        decay). An error raised here leaves the previous epoch's checkpoint as the last one."""

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        raise NotImplementedError

    def other_decisions(self, trained: nn.Module) -> dict[str, PruneResult]:
        """The prune decisions the method can make but did not play, each as the result it would
        give on the same trained model (for comparison, e.g. the paper's rule beside equiprune's);
        ``trained`` is left unchanged. None by default."""
        return {}

    def tickets(self) -> dict[str, Any] | None:
        """For ticket-finding methods (``imp``, ``concave-mask``): every round's weight masks and the
        rewind weights, which the run writes to ``tickets.pt`` (see ``methods.tickets``); else None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State a checkpoint must keep besides the model's (step counters, schedules)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHODS: Registry[type[Method]] = Registry("method")


# --- validation shared by the methods' settings dataclasses -------------------------------------


def require_at_least(settings: Any, low: float, *names: str) -> None:
    """Each named setting must be >= ``low`` (NaN fails too)."""
    for name in names:
        value = getattr(settings, name)
        if not value >= low:
            raise ConfigError(f"method.{name}: must be >= {low}, got {value!r}")


def check_selection(settings: Any) -> None:
    """A budgeted method's ``budget`` in (0, 1] and, where it has one, its ``allocation``."""
    if not 0 < settings.budget <= 1:
        raise ConfigError(f"method.budget: must lie in (0, 1], got {settings.budget!r}")
    allocation = getattr(settings, "allocation", "layerwise")
    if allocation not in ("layerwise", "global"):
        raise ConfigError(f"method.allocation: got {allocation!r}, expected 'layerwise' or 'global'")


@dataclass(frozen=True)
class DenseSettings:
    pass


@METHODS.register("dense")
class Dense(Method):
    """No pruning: the reference point every method is compared with."""

    name = "dense"
    settings_type = DenseSettings
    default_role = "reference"
    plays_its_decision = True
    player_kinds = (*STRUCTURED_KINDS, "weight")

    @classmethod
    def training_key(cls, settings: Any) -> str | None:
        return "dense"

    def finish(self, trained: nn.Module, calibration: Calibration | None = None) -> PruneResult:
        groups = find_players(trained)
        widths = {g.name: g.size for g in groups}
        return PruneResult(trained, widths, dict(widths), kinds={g.name: g.kind for g in groups})

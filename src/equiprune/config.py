"""Typed run configuration, read from TOML and validated once, at the edge.

Every error names the field (``train.lr``), the value, and what was expected. Method settings
live in the ``[method]`` table beside ``name``; they are validated by the chosen method's own
settings dataclass, so a typo in a method setting is caught before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w

from equiprune.core.players import PLAYER_KINDS
from equiprune.data import DATASETS
from equiprune.errors import ConfigError
from equiprune.methods import METHODS, Method
from equiprune.models import ACTIVATIONS, MODELS
from equiprune.schema import coerce, from_dict

T = TypeVar("T")


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist, fashion-mnist, cifar10 or cifar100
    root: str | None = None  # a directory with mnist/, fashion-mnist/...; else $EQUIPRUNE_DATA, cache
    batch_size: int = 128  # training batch size
    eval_batch_size: int = 2000  # batch size of evaluation (no effect on the figures)
    train_subset: int | None = None  # use only the first N training examples (quick looks, tests)
    test_subset: int | None = None  # evaluate on only the first N test examples
    augment: Literal["none", "crop-flip"] = "none"  # random crops and mirroring of training images (CIFAR)

    def __post_init__(self):
        DATASETS.get(self.dataset, "data.dataset")
        _positive(self, "batch_size", "eval_batch_size")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive(self, name)


#: The [model] keys that shape a model; each model takes the ones its builder has.
SHAPE_KEYS = ("hidden", "width", "dim", "depth", "heads", "mlp", "patch")


@dataclass
class ModelConfig:
    name: str = "mlp"  # mlp, lenet5, resnet20, resnet56, vgg11, vgg16 or vit
    hidden: list[int] | None = None  # widths of the hidden Linear layers; None: the model's own default
    width: float | None = None  # channel multiplier of convolutional models (resnet20, vgg11, …)
    activation: str = "relu"  # the hidden layers' activation (relu, gelu, tanh, ...)
    # the transformer's shape (vit); None: the model's own default
    dim: int | None = None  # embedding width
    depth: int | None = None  # blocks
    heads: int | None = None  # attention heads per block
    mlp: int | None = None  # hidden units of each block's MLP
    patch: int | None = None  # patch side in pixels

    def __post_init__(self):
        builder = MODELS.get(self.name, "model.name")
        takes = inspect.signature(builder).parameters
        for name in SHAPE_KEYS:
            if getattr(self, name) is not None and name not in takes:
                shaped = ", ".join(k for k in SHAPE_KEYS if k in takes) or "none of them"
                raise ConfigError(f"model.{name}: model {self.name!r} has no such setting; it takes {shaped}")
        for name in ("dim", "depth", "heads", "mlp", "patch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"model.{name}: must be >= 1 (or left out for the model's default), got {getattr(self, name)!r}"
                )
        if self.hidden is not None and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise ConfigError(f"model.hidden: expected a non-empty list of widths >= 1, got {self.hidden!r}")
        if self.width is not None and not self.width > 0:
            raise ConfigError(f"model.width: must be > 0, got {self.width!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation: got {self.activation!r}, expected one of {sorted(ACTIVATIONS)}")


@dataclass
class TrainConfig:
    epochs: int = 20  # the whole budget, fine-tuning after compaction included
    finetune_epochs: int = 0  # of `epochs`, how many train the compacted model
    optimizer: Literal["adam", "sgd"] = "adam"  # the weights' optimizer
    lr: float = 1e-3  # the weights' learning rate
    finetune_optimizer: Literal["adam", "sgd"] | None = None  # defaults to optimizer
    finetune_lr: float | None = None  # defaults to lr
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # the optimizer's weight decay
    finetune_weight_decay: float | None = None  # defaults to weight_decay
    schedule: Literal["constant", "cosine"] = "constant"  # per phase: pruning, then fine-tuning
    #: how much test accuracy (a fraction: 0.01 = 1 point) compaction may cost before the run warns
    compaction_tolerance: float = 0.01
    #: autocast of forward and backward: "bf16", "fp16" (with a gradient scaler) or "mixed" (bf16
    #: where the device has it, else fp16); weights, gates and the methods' updates stay fp32
    precision: Literal["fp32", "bf16", "fp16", "mixed"] | None = None  # unset or "fp32": full precision

    def __post_init__(self):
        if self.precision == "fp32":  # the default written out: the same run, so the same identity
            self.precision = None
        _positive(self, "epochs")
        if not 0 <= self.finetune_epochs < self.epochs:
            raise ConfigError(
                f"train.finetune_epochs: must be in [0, epochs) = [0, {self.epochs}), got {self.finetune_epochs}"
            )
        _positive(self, "lr")
        if self.finetune_lr is not None:
            _positive(self, "finetune_lr")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum: must be in [0, 1), got {self.momentum}")
        if not 0 <= self.compaction_tolerance <= 1:
            raise ConfigError(
                f"train.compaction_tolerance: a fraction of test accuracy in [0, 1] (0.01 = 1 point), "
                f"got {self.compaction_tolerance!r}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.finetune_weight_decay is not None and self.finetune_weight_decay < 0:
            raise ConfigError(f"train.finetune_weight_decay: must be >= 0, got {self.finetune_weight_decay}")

    @property
    def prune_epochs(self) -> int:
        return self.epochs - self.finetune_epochs


@dataclass
class MethodConfig:
    """The ``[method]`` table, resolved: ``settings`` is the method's own settings dataclass with its
    preset applied and every field checked (see :func:`method_config_from_dict`)."""

    name: str = "game"
    settings: Any = None  # the method's settings dataclass; None: its defaults
    exclude: list[str] = field(default_factory=list)  # layers (module names) left ungated
    players: str | None = None  # the player kind (see equiprune.core.players); default: the method's own

    def __post_init__(self):
        method = METHODS.get(self.name, "method.name")
        if self.settings is None:
            self.settings = method.resolve_settings(None, {})
        elif not isinstance(self.settings, method.settings_type):
            raise ConfigError(
                f"method: settings of type {type(self.settings).__name__} given for method {self.name!r}, "
                f"which takes {method.settings_type.__name__}"
            )
        if self.players is not None and self.players not in PLAYER_KINDS:
            raise ConfigError(
                f"method.players: unknown player kind {self.players!r}; expected one of {list(PLAYER_KINDS)}"
            )
        if self.players is not None and self.players not in method.player_kinds:
            raise ConfigError(
                f"method.players: method {self.name!r} cannot prune {self.players!r} players; "
                f"it supports {list(method.player_kinds)}"
            )

    @property
    def method_type(self) -> type[Method]:
        return METHODS.get(self.name)

    def build(self) -> Method:
        """A new method object for one run (the settings were checked when the config was read)."""
        return self.method_type(self.settings, tuple(self.exclude), self.players)


def method_config_from_dict(data: Any) -> MethodConfig:
    """The ``[method]`` table: ``name``, ``preset``, ``exclude`` and ``players``, and beside them the
    method's own settings, parsed into its settings dataclass (unknown keys refused by name)."""
    if not isinstance(data, dict):
        raise ConfigError(f"method: expected a table, got {type(data).__name__}")
    fixed = {"name", "preset", "exclude", "players"}
    name = coerce(data.get("name", "game"), str, "method.name")
    preset = coerce(data.get("preset"), str | None, "method.preset")
    method = METHODS.get(name, "method.name")
    settings = method.resolve_settings(preset, {k: v for k, v in data.items() if k not in fixed})
    exclude = coerce(data.get("exclude", []), list[str], "method.exclude")
    players = coerce(data.get("players"), str | None, "method.players")
    return MethodConfig(name, settings, exclude, players)


@dataclass
class LimitConfig:
    """Settings of ``equiprune limit`` (see :mod:`equiprune.experiments.limit_study`)."""

    iters: int = 128  # Lanczos steps per probe
    probes: int = 4  # Rademacher probe vectors for SLQ
    hessian_samples: int | None = None  # training examples the Hessian averages over (None: all)
    hessian_batch_size: int = 1000  # examples per Hessian-vector product batch (no effect on the figures)
    bins: int = 10_000  # grid of the smoothed density
    sigma2: float = 1e-5  # Gaussian variance per Ritz value, times max(1, spectrum width)
    #: Ritz values and weights as they are (the SLQ estimate itself), or the paper's smoothed grid,
    #: which biases the prediction low (docs/pruning-limit.md); both are reported
    spectrum: Literal["quadrature", "density"] = "quadrature"
    distance: Literal["global", "per-tensor"] = "global"  # the paper's ‖w − w_p‖, or the code's Σ_t
    step: float = 0.001  # pruning-ratio resolution
    scan: Literal["refine", "full"] = "refine"  # 1% steps then `step` near the limit, or `step` everywhere
    tolerance: float = 0.001  # accuracy the measured limit may lose (a fraction: 0.001 = 0.1 points)
    include_biases: bool = True  # prune (and take curvature over) biases as well as weights
    train_mode: bool = False  # the model's mode during Hessian products
    seed: int = 0  # the probes' seed

    def __post_init__(self):
        for name in ("iters", "probes", "hessian_batch_size", "bins"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"limit.{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.hessian_samples is not None and not self.hessian_samples >= 1:
            raise ConfigError(f"limit.hessian_samples: must be >= 1 or left out (all), got {self.hessian_samples!r}")
        if not self.sigma2 > 0:
            raise ConfigError(f"limit.sigma2: must be > 0, got {self.sigma2!r}")
        if not (0 < self.step <= 0.1 and abs(round(1 / self.step) * self.step - 1) < 1e-9):
            raise ConfigError(f"limit.step: must divide 1 and lie in (0, 0.1], e.g. 0.001; got {self.step!r}")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"limit.tolerance: must be in [0, 1), got {self.tolerance!r}")


@dataclass
class PlateauConfig:
    """Settings of ``equiprune plateau`` (see :mod:`equiprune.experiments.plateau`)."""

    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8])  # fractions removed
    scorers: list[str] = field(default_factory=list)  # empty: every registered scorer and every custom one
    players: list[str] = field(default_factory=lambda: ["weight", "structured"])  # single weights; heads/units/filters
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one trained model per seed
    finetune_steps: int = 100  # the same short fine-tuning for every scorer (accuracy without it is reported too)
    finetune_lr: float | None = None  # default: train.lr
    calibration_batches: int = 8  # training batches the gradient (Taylor) feature averages over
    #: scorers defined here by name: {feature = "quantile", map = "bump", center = 0.7, kappa = 1}
    custom: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if not self.sparsities or not all(0 < s < 1 for s in self.sparsities):
            raise ConfigError(f"plateau.sparsities: each must lie in (0, 1), e.g. 0.7; got {self.sparsities!r}")
        unknown = sorted(set(self.players) - {"weight", "structured"})
        if not self.players or unknown:
            raise ConfigError(f"plateau.players: expected 'weight' and/or 'structured', got {self.players!r}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError(f"plateau.seeds: give at least one seed >= 0, got {self.seeds!r}")
        if self.finetune_steps < 0 or self.calibration_batches < 1:
            raise ConfigError("plateau.finetune_steps must be >= 0 and plateau.calibration_batches >= 1")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ConfigError(f"plateau.finetune_lr: must be > 0, got {self.finetune_lr!r}")


@dataclass
class LogConfig:
    """Where a run's metrics go besides metrics.jsonl; not part of the run's identity."""

    tensorboard: bool = False  # also write TensorBoard event files into DIR/tensorboard (equiprune[tensorboard])


#: Sections that say how a run reports itself, not what it computes: left out of its identity.
REPORTING_SECTIONS = ("log",)


@dataclass
class RunConfig:
    seed: int = 0  # seeds the initialisation, the data order and every method's randomness
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
    # CPU threads for this run (torch.set_num_threads); unset: torch's own choice. The same seed with
    # another thread count sums in another order and can end elsewhere: pin it to reproduce a run.
    threads: int | None = None  # CPU threads (torch.set_num_threads); unset: torch's choice
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    limit: LimitConfig | None = None  # only `equiprune limit` reads it
    plateau: PlateauConfig | None = None  # only `equiprune plateau` reads it
    log: LogConfig | None = None  # how the run reports itself (TensorBoard); not part of its identity

    def __post_init__(self):
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device: got {self.device!r}, expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(
                f"threads: must be a whole number >= 1 (or left out for torch's choice), got {self.threads}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (None values dropped: TOML has no null)."""
        d = {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
             for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}  # fmt: skip
        m = self.method
        d["method"] = {"name": m.name, **m.method_type.written_settings(m.settings)}
        if m.exclude:
            d["method"]["exclude"] = list(m.exclude)
        if m.players is not None:
            d["method"]["players"] = m.players
        return _drop_none(d)

    def identity(self) -> str:
        """The run's identity: a hash of the resolved configuration, every default filled in. Run
        directories, sweeps and shared training phases all know a run by it."""
        return digest({k: v for k, v in self.to_dict().items() if k not in REPORTING_SECTIONS})


def digest(data: Any) -> str:
    """The SHA-256 of plain ``data`` in a canonical JSON form (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def _positive(obj, *names: str) -> None:
    section = {DataConfig: "data", TrainConfig: "train"}.get(type(obj), "")
    for name in names:
        v = getattr(obj, name)
        if not v > 0:
            raise ConfigError(f"{section}.{name}: must be > 0, got {v!r}")


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a table, got {type(data).__name__}")
    data = dict(data)
    method = method_config_from_dict(data.pop("method", {}))
    cfg = from_dict(RunConfig, data)
    cfg.method = method
    return cfg


def parse_toml(text: str, source: str, build: typing.Callable[[dict[str, Any]], T]) -> T:
    """``build(data)`` for the TOML ``text``; a syntax or validation error names ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    try:
        return build(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def read_toml_file(path: str | Path, what: str, build: typing.Callable[[dict[str, Any]], T]) -> T:
    """:func:`parse_toml` of the file at ``path`` (``what`` names the kind of file in errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    return parse_toml(path.read_text(encoding="utf-8"), str(path), build)


def shipped_config(*parts: str) -> Path:
    """A file shipped with equiprune under ``equiprune/configs/``, e.g.
    ``shipped_config("sweeps", "mnist_mlp_neurons.toml")``, wherever the package is installed."""
    path = resources.files("equiprune") / "configs"
    for part in parts:  # one at a time: an editable install's package root takes no more
        path = path / part
    return Path(path)


def find_config(arg: str | Path, shipped_dir: str, what: str) -> Path:
    """The file ``arg`` names, if it exists; else the configuration of that name that equiprune
    ships in ``configs/<shipped_dir>/``, so that ``mnist_mlp_neurons`` (or the path
    ``configs/sweeps/mnist_mlp_neurons.toml`` written as in a clone of the repository) also works
    where equiprune was installed with pip. Says nothing: the command line tells the user which file
    it used (a library caller can compare the answer with ``arg``)."""
    path = Path(arg)
    if path.exists():
        return path
    shipped = shipped_config(shipped_dir, path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in shipped_config(shipped_dir).glob("*.toml"))
    raise ConfigError(
        f"{arg} does not exist, and equiprune ships no {what} of that name (it ships: {', '.join(names)})"
    )


def parse_config(text: str, source: str = "<config>") -> RunConfig:
    """A validated :class:`RunConfig` from TOML text; errors name ``source`` and the field."""
    return parse_toml(text, source, run_config_from_dict)


def load_config(path: str | Path) -> RunConfig:
    return read_toml_file(path, "config file", run_config_from_dict)


def dump_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(cfg.to_dict())

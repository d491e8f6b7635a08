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
from pathlib import Path
from typing import Any

import torch

from equiprune import io
from equiprune.config import RunConfig, dump_toml, load_config
from equiprune.errors import ConfigError
from equiprune.experiments.results import read_results
from equiprune.experiments.setup import build_model, resolve_device


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
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; a run directory must be a directory (new or a run's own)")
        if self.config.is_file():
            existing = load_config(self.config)
            if existing.identity() != cfg.identity():
                diff = _diff(existing.to_dict(), cfg.to_dict())
                raise ConfigError(
                    f"{self.path} holds a run with another configuration ({diff}); choose another --out directory"
                )
            if self.is_finished() and not resume:
                raise ConfigError(f"{self.path} already holds a finished run; choose another --out directory")
            if not resume and self.checkpoint.is_file():
                raise ConfigError(
                    f"{self.path} holds an unfinished run; pass --resume to continue it, "
                    "or choose another --out directory"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise ConfigError(f"{self.path} exists and is not an equiprune run directory; choose another --out")
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


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, path + ".")
            if sub:
                out.append(sub)
        elif va != vb:
            out.append(f"{path}: {va!r} there, {vb!r} here")
    return "; ".join(out)

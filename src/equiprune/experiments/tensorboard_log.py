"""TensorBoard event files for a run (``[log] tensorboard = true``, ``equiprune run --tensorboard``):
every number of metrics.jsonl as a scalar per epoch, and each player group's participations (or
live mask) as a histogram per epoch, in ``DIR/tensorboard``. Point TensorBoard at a sweep's
``runs/`` to see every run, grouped by method label. Needs ``pip install 'equiprune[tensorboard]'``.
"""

from __future__ import annotations

import numbers
from typing import Any

from equiprune.errors import ConfigError
from equiprune.experiments.hooks import RunHook, State, Trainer
from equiprune.extras import require_extra


def summary_writer_class():
    """torch's SummaryWriter, or a ConfigError saying how to install what it needs."""
    # torch imports tensorboard lazily, here: ask for tensorboard first, so that its name is the one missing
    board = require_extra("tensorboard", "log.tensorboard", "tensorboard", "torch.utils.tensorboard", error=ConfigError)
    return board.SummaryWriter


class TensorBoard(RunHook):
    """Writes each epoch's row as it is stored; on resume, events after the resumed epoch are
    dropped (``purge_step``), so a killed and resumed run shows one curve, not two."""

    def __init__(self):
        self._writer_class = summary_writer_class()  # fail before any training when it is missing
        self._writer = None

    def _writer_for(self, trainer: Trainer, first_epoch: int):
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(trainer.run_dir.path / "tensorboard"), purge_step=first_epoch)
        return self._writer

    def on_epoch_end(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        if trainer.rank != 0:
            return
        epoch = int(row["epoch"])
        writer = self._writer_for(trainer, epoch)
        phase = row.get("phase", "train")
        for key, value in row.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and key != "epoch":
                writer.add_scalar(f"{phase}/{key}" if key not in ("test_accuracy", "loss") else key, value, epoch)
        participations = getattr(trainer.trained, "participations", None)
        if phase == "prune" and callable(participations):
            for name, s in participations().items():
                writer.add_histogram(f"participation/{name}", s.detach().float().cpu(), epoch)
        writer.flush()

    def on_finish(self, trainer: Trainer, st: State, results: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

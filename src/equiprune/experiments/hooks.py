"""What happens around the training loop's epochs, as hooks the loop calls in order.

The loop (:mod:`equiprune.experiments.loop`) trains; everything else a run does with its epochs
is a :class:`RunHook`: flagging a loss no better than a uniform guess, writing the checkpoint and
metrics, the per-epoch message, and at the end the model files, plots and ``results.json``.
Pass more to ``run(..., hooks=[...])`` to watch a run (they run after these).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from equiprune import io
from equiprune.experiments.lottery_plots import plot_mask_histograms
from equiprune.experiments.run_plots import plot_run
from equiprune.experiments.setup import evaluate
from equiprune.progress import logger

#: What the hooks are given (the loop's Trainer and its run state); named, not imported, since the
#: loop imports this module.
Trainer = Any
State = Any


class RunHook:
    """Called by the loop; every method is optional. ``trainer`` holds the run (its config, method,
    run directory, rank); ``st`` its state (phase, epochs done, metrics, the pruned result)."""

    def on_epoch(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        """An epoch's metrics row is complete and may still be added to (it is stored next)."""

    def on_epoch_end(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        """The epoch is counted and its row stored in ``st.metrics``."""

    def on_compacted(self, trainer: Trainer, st: State) -> None:
        """The method's phase ended: ``st.result`` is the compacted model, ``st.gated_test_accuracy``
        and ``st.compacted_test_accuracy`` the test accuracy before and right after compaction."""

    def on_finish(self, trainer: Trainer, st: State, results: dict[str, Any]) -> None:
        """The run is done; ``results`` is what ``results.json`` holds."""


#: How close to a uniform guess's loss, ln(classes), an epoch's mean cross-entropy may come before
#: the epoch counts as not learned: an epoch stuck at a uniform guess averages a hair *below* ln(classes)
#: (the mask searches' stalled rounds: 2.3018-2.3026 against ln 10 = 2.3026), so "above ln(classes)"
#: alone misses it.
CHANCE_MARGIN = 0.01


class FlagDivergence(RunHook):
    """Marks an epoch whose mean cross-entropy is no better than that of a uniform guess (within
    ``CHANCE_MARGIN`` of ln(classes), or above it): the network has diverged while its loss stayed
    finite (strong game costs can leave a few survivors with tiny participations that Adam then
    throws about), or has not learned, so nothing else stops the run. The row gets a ``warning``,
    said at once through the logger."""

    def on_epoch(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        warning = no_better_than_chance(row, trainer.num_classes, trainer.method.divergence_hint)
        if warning:
            row["warning"] = warning
            if trainer.rank == 0:
                logger.warning(warning)


def no_better_than_chance(row: dict[str, Any], classes: int, method_hint: str) -> str | None:
    """The warning for a metrics ``row`` whose data loss is no better than a uniform guess's,
    ln(``classes``) less ``CHANCE_MARGIN`` of it, else None."""
    chance = math.log(classes)
    data_loss = row.get("cross_entropy", row["loss"])
    if not data_loss >= (1 - CHANCE_MARGIN) * chance:
        return None
    if row["phase"] == "prune":
        hint = f"lower train.lr or the method's {method_hint}"
    else:
        hint = "lower train.finetune_lr (or train.lr, which fine-tuning takes when it sets none)"
    what = "is above" if data_loss > chance else f"is within {CHANCE_MARGIN:.0%} of"
    return (
        f"epoch {row['epoch']} ({row['phase']}): the mean training loss {data_loss:.4g} {what} "
        f"{chance:.3g}, the loss of a uniform guess over {classes} classes: the network has "
        f"diverged or not learned, and the result will be poor; {hint}"
    )


#: How the compaction guard's warning begins (results.json's ``compaction_flagged`` looks for it).
COMPACTION_WARNING = "compaction cost"


class CompactionGuard(RunHook):
    """Warns when the compacted model's test accuracy, before fine-tuning, falls more than
    ``train.compaction_tolerance`` below the gated model's, for a method whose gated model plays its
    decision (``Method.plays_its_decision``): compaction is exact for the players it
    keeps, so such a drop means the prune decision removed players the network uses (a player
    whose participation is small but whose weights grew to make up for it). Said at once through
    the logger and kept in results.json's ``warnings`` (``compaction_flagged``), which the reports
    flag."""

    def on_compacted(self, trainer: Trainer, st: State) -> None:
        if not trainer.method.plays_its_decision:
            return
        drop = st.gated_test_accuracy - st.compacted_test_accuracy
        tolerance = trainer.cfg.train.compaction_tolerance
        if not drop > tolerance:
            return
        message = (
            f"{COMPACTION_WARNING} {100 * drop:.2f} points of test accuracy (gated {100 * st.gated_test_accuracy:.2f}% "
            f"-> compacted {100 * st.compacted_test_accuracy:.2f}%, before fine-tuning; tolerance "
            f"{100 * tolerance:g} points): the prune decision removed players the network uses"
        )
        st.run_warnings.append(message)
        if trainer.rank == 0:
            logger.warning(message)


class CompareDecisions(RunHook):
    """The prune decisions the method did not play (``Method.other_decisions``), each compacted
    from the same trained model and evaluated, into results.json's ``other_decisions``: the
    game's run under the paper's rule also says what equiprune's decision would have kept, and
    the other way round, without training twice."""

    def on_compacted(self, trainer: Trainer, st: State) -> None:
        batch = trainer.cfg.data.eval_batch_size
        st.other_decisions = {
            name: {
                "kept_fraction": result.kept_fraction,
                "kept": result.kept,
                "test_accuracy_after_compaction": evaluate(result.model, trainer.test_split, batch)[0],
            }
            for name, result in trainer.method.other_decisions(trainer.trained).items()
        }


class Checkpoint(RunHook):
    """After every epoch, everything needed to continue bit for bit (model, optimizer, scheduler,
    RNG state, method state, metrics so far), and metrics.jsonl; rank 0 only."""

    def on_epoch_end(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        if trainer.rank != 0:
            return
        payload = {
            "phase": st.phase,
            "epoch": st.epoch,
            "seconds": st.seconds,
            "metrics": st.metrics,
            "gated_test_accuracy": st.gated_test_accuracy,
            "compacted_test_accuracy": st.compacted_test_accuracy,
            "run_warnings": st.run_warnings,
            "other_decisions": st.other_decisions,
            "shared": st.shared,
            "optimizer": trainer.opt.state_dict(),
            "scheduler": trainer.sched.state_dict(),
            "grad_scaler": trainer.precision.state_dict(),
            "method_state": trainer.method.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        if st.phase == "prune":
            payload["trained_state"] = trainer.trained.state_dict()
        else:
            # The compacted architecture differs from the configured one: keep the module itself.
            payload["small_model"] = st.result.model
            payload["kept"], payload["total"], payload["kinds"] = st.result.kept, st.result.total, st.result.kinds
            payload["weight_masks"] = st.result.weight_masks
            payload["budget_fit"] = st.result.budget_fit
        io.torch_save(trainer.run_dir.checkpoint, payload)
        trainer.run_dir.write_metrics(st.metrics)


class EpochLine(RunHook):
    """One INFO message per epoch (none when the run is quiet)."""

    def on_epoch_end(self, trainer: Trainer, st: State, row: dict[str, Any]) -> None:
        if trainer.quiet:
            return
        alive = f", players alive {row['players_alive']}/{row['players']}" if "players_alive" in row else ""
        logger.info(f"epoch {row['epoch']:>3}: loss {row['loss']:.4f}, test accuracy {row['test_accuracy']:.4f}{alive}")


class WriteOutputs(RunHook):
    """model.pt, model_state.pt, the plots, and results.json last (its presence means finished)."""

    def on_finish(self, trainer: Trainer, st: State, results: dict[str, Any]) -> None:
        if trainer.rank != 0:
            return
        small = st.result.model
        io.torch_save(trainer.run_dir.model, small)
        io.torch_save(trainer.run_dir.model_state, small.state_dict())
        plot_run(trainer.run_dir, st.metrics, trainer.method.removal_threshold())
        io.write_json(trainer.run_dir.results, results)


class SaveTickets(RunHook):
    """For ticket-finding methods (``Method.tickets``): every round's mask and the rewind weights in
    ``tickets.pt`` (``equiprune lottery`` and the ``ticket`` method retrain them), and where the method
    learns mask values, their histograms per layer and round in ``masks.png``; rank 0 only."""

    def on_compacted(self, trainer: Trainer, st: State) -> None:
        tickets = trainer.method.tickets()
        if trainer.rank != 0 or tickets is None:
            return
        io.torch_save(trainer.run_dir.tickets, tickets)
        if tickets.get("histograms"):
            threshold = getattr(trainer.method.settings, "threshold", None)
            plot_mask_histograms(trainer.run_dir.path / "masks.png", tickets["histograms"], threshold)


def default_hooks() -> list[RunHook]:
    return [FlagDivergence(), CompactionGuard(), CompareDecisions(), SaveTickets(), Checkpoint(), EpochLine(),
            WriteOutputs()]  # fmt: skip

"""One training loop for every method: train, prune, compact, fine-tune, evaluate, write the run.

The loop owns the optimizer, the data order, checkpoints and the run directory; a method sees it
only through its hooks (``prepare``, ``penalty``, ``before_step``, ``after_step``, ``epoch_metrics``,
``finish``).

Budget: ``train.epochs`` counts every epoch. The first ``epochs − finetune_epochs`` train the model
under the method; then the method's result is compacted and the smaller model is fine-tuned for the
rest. A checkpoint after every epoch holds everything needed to continue bit for bit (model,
optimizer, scheduler, RNG state, metrics so far); the data order depends on (seed, epoch) only.

Shared training: a one-shot method's training phase is plain dense training (see
``Method.training_key``). Given a ``shared`` directory, the loop keeps that phase's result there
under a hash of everything it depends on, and a later run with the same key starts from it, so a
sweep trains the dense network once per seed instead of once per method and budget. The reused
epochs are still counted in the run's epoch budget, metrics and ``seconds``.

Distributed runs (``experiments.distributed``): inside a process group the loop trains through
DistributedDataParallel, gives each rank its share of every global batch, and lets only rank 0
write files; rank 0 decides whether to resume, and every rank restores the same checkpoint. The
compacted model is wrapped afresh for fine-tuning. Participation updates use gradients that DDP
has already averaged (and a Fisher information all-reduced where it is made), so they stay
identical on every rank.

Precision (``train.precision``, ``experiments.precision``): forward and loss under autocast, the
methods' penalties and updates in fp32; a step fp16's scaler skips is not shown to the method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune import io
from equiprune.config import RunConfig
from equiprune.core.compact import PruneResult
from equiprune.core.measure import count_macs, count_params, nonzero_params
from equiprune.core.selection import alive_metrics
from equiprune.data import DATASETS, Batches
from equiprune.errors import ConfigError, TrainingDiverged
from equiprune.experiments.distributed import agree, data_parallel, sum_over_ranks
from equiprune.experiments.hooks import COMPACTION_WARNING, RunHook, default_hooks
from equiprune.experiments.precision import Precision
from equiprune.experiments.results import RunResults
from equiprune.experiments.rundir import RunDir
from equiprune.experiments.setup import (
    build_model,
    dist_info,
    evaluate,
    load_run_splits,
    optimizer_and_schedule,
    resolve_device,
    shared_training_digest,
)
from equiprune.experiments.tensorboard_log import TensorBoard
from equiprune.methods import Method
from equiprune.methods.base import Calibration
from equiprune.progress import bar, concerning

#: How often (in steps) the loss is checked for NaN/inf; a check forces a device sync.
FINITE_CHECK_EVERY = 25


@dataclass
class _State:
    """Everything that changes during a run and must survive a restart."""

    phase: str = "prune"  # "prune", then "finetune"
    epoch: int = 0  # epochs finished
    seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    result: PruneResult | None = None
    gated_test_accuracy: float | None = None
    compacted_test_accuracy: float | None = None  # the compacted model's, before fine-tuning
    shared: bool = False  # the training phase was reused from a shared run
    run_warnings: list[str] = field(default_factory=list)  # warnings of the run, not of one epoch
    other_decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # see RunResults


class Trainer:
    """Runs one configuration into one run directory. ``run()`` returns the results dict."""

    def __init__(self, cfg: RunConfig, out, resume: bool = False, quiet: bool = False, shared=None, hooks=()):
        self.rank, self.world = dist_info()
        self.cfg, self.run_dir, self.resume, self.quiet = cfg, RunDir(out), resume, quiet or self.rank != 0
        reporting = [TensorBoard()] if cfg.log is not None and cfg.log.tensorboard else []
        self.hooks: list[RunHook] = [*default_hooks(), *reporting, *hooks]
        self.shared = Path(shared) if shared is not None else None
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":  # each rank its own GPU, set as it joined
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision = Precision(cfg.train.precision, self.device)
        self._wrapped: tuple[nn.Module, nn.Module] | None = None  # (model, its DDP wrapper)

    # --- set-up -------------------------------------------------------------------------------

    def _load_data(self) -> None:
        d = self.cfg.data
        self.train_split, self.test_split = load_run_splits(d, self.device)
        self.batches = Batches(self.train_split, d.batch_size, True, self.cfg.seed, self.rank, self.world, d.augment)
        self.calibration = Calibration(self.train_split, d.batch_size, self.cfg.seed)

    # --- the shared training phase ------------------------------------------------------------

    def _shared_file(self) -> Path | None:
        if self.shared is None or self.world > 1:  # before hashing the config: most runs share nothing
            return None
        digest = shared_training_digest(self.cfg)
        return None if digest is None else self.shared / f"trained-{digest}.pt"

    def _plain(self) -> nn.Module:
        return self.method.unwrap(self.trained)

    def _reuse_shared(self, st: _State, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self._plain().load_state_dict(ck["model_state"])
        st.epoch, st.seconds, st.metrics = self.cfg.train.prune_epochs, ck["seconds"], ck["metrics"]
        torch.set_rng_state(ck["rng"])
        st.shared = True

    def _save_shared(self, st: _State, path: Path) -> None:
        payload = {"model_state": self._plain().state_dict(), "seconds": st.seconds, "metrics": st.metrics,
                   "rng": torch.get_rng_state()}  # fmt: skip
        io.torch_save(path, payload)

    def _phase_optimizer_settings(self, phase: str) -> tuple[str, float, float]:
        """(optimizer, lr, weight decay) of ``phase``: fine-tuning's own value where it sets one,
        else the training phase's."""
        t = self.cfg.train

        def setting(name: str):
            own = getattr(t, f"finetune_{name}")
            return getattr(t, name) if phase == "prune" or own is None else own

        return setting("optimizer"), setting("lr"), setting("weight_decay")

    def _new_phase_optimizer(self, params, phase: str) -> None:
        t = self.cfg.train
        epochs = t.prune_epochs if phase == "prune" else t.finetune_epochs
        kind, lr, decay = self._phase_optimizer_settings(phase)
        self.opt, self.sched = optimizer_and_schedule(self.cfg, params, kind, lr, epochs, len(self.batches), decay)

    # --- checkpoints --------------------------------------------------------------------------

    def _restore(self, st: _State) -> None:
        ck = torch.load(self.run_dir.checkpoint, map_location=self.device, weights_only=False)
        st.phase, st.epoch, st.seconds = ck["phase"], ck["epoch"], ck["seconds"]
        st.metrics, st.gated_test_accuracy, st.shared = ck["metrics"], ck["gated_test_accuracy"], ck["shared"]
        st.compacted_test_accuracy = ck.get("compacted_test_accuracy")  # absent from 0.1's checkpoints
        st.run_warnings = ck.get("run_warnings", [])
        st.other_decisions = ck.get("other_decisions", {})
        if st.phase == "prune":
            self.trained.load_state_dict(ck["trained_state"])
            self._new_phase_optimizer(self.method.weight_parameters(self.trained), "prune")
        else:
            masks = ck["weight_masks"] and {k: v.to(self.device) for k, v in ck["weight_masks"].items()}
            st.result = PruneResult(ck["small_model"].to(self.device), ck["kept"], ck["total"], masks, ck.get("kinds"),
                                    budget_fit=ck.get("budget_fit"))  # fmt: skip
            self._new_phase_optimizer(st.result.model.parameters(), "finetune")
        self.method.load_state_dict(ck["method_state"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.precision.load_state_dict(ck.get("grad_scaler"))
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])

    # --- the loop -----------------------------------------------------------------------------

    def _parallel(self, model: nn.Module) -> nn.Module:
        """What the forward pass goes through: ``model``, or its DDP wrapper in a distributed run
        (made once per model: the compacted one gets its own)."""
        if self._wrapped is None or self._wrapped[0] is not model:
            self._wrapped = (model, data_parallel(model, self.device))
        return self._wrapped[1]

    def _train_epoch(self, model: nn.Module, epoch: int, use_method: bool, bar, masks=None) -> dict[str, float]:
        """One epoch; ``masks`` (parameter name -> bool) keeps an unstructured result's zeros at zero."""
        model.train()
        masked = [(p, masks[n]) for n, p in model.named_parameters() if n in masks] if masks else []
        loss_sum = torch.zeros((), device=self.device)
        penalty_sum = None  # a method's penalties, apart: the loss less them is the cross-entropy
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        forward = self._parallel(model)
        for step, (x, y) in enumerate(self.batches.epoch(epoch)):
            if use_method:
                self.method.before_step(model)
                restart = self.method.optimizer_restart()
                if restart:
                    kind, lr, decay = self._phase_optimizer_settings("prune")
                    params = self.method.weight_parameters(model)
                    self.opt, self.sched = optimizer_and_schedule(self.cfg, params, kind, lr, 1, restart, decay)
            model.zero_grad(set_to_none=True)
            with self.precision.autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits, y)  # autocast computes it in fp32
            if use_method:
                extra = self.method.penalty(model)
                if extra is not None:
                    loss = loss + extra
                    penalty = extra.detach() * len(y)
                    penalty_sum = penalty if penalty_sum is None else penalty_sum + penalty
            self.precision.backward(loss)
            stepped = self.precision.step(self.opt, model)
            self.sched.step()
            if masked:
                with torch.no_grad():
                    for p, m in masked:
                        p.mul_(m)
            if use_method and stepped:
                self.method.after_step(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % FINITE_CHECK_EVERY == 0 and not math.isfinite(float(loss_sum)):
                self._diverged(epoch, step, float(loss))
            bar.update(1)
        penalties = 0.0 if penalty_sum is None else float(penalty_sum)
        loss_total, right, seen, penalties = sum_over_ranks([float(loss_sum), float(correct), seen, penalties],
                                                            self.device)  # fmt: skip
        mean_loss = loss_total / seen
        if not math.isfinite(mean_loss):
            self._diverged(epoch, None, mean_loss)
        row = {"loss": mean_loss, "train_accuracy": right / seen}
        if penalty_sum is not None:
            row["cross_entropy"] = (loss_total - penalties) / seen
        return row

    def _checkpoint_note(self, epoch: int) -> str:
        """Which checkpoint a run stopped during ``epoch`` (0-based) leaves behind."""
        if epoch > 0:
            return f"the last good checkpoint (after epoch {epoch}) is kept in {self.run_dir.checkpoint}"
        return "no epoch had finished, so there is no checkpoint"

    def _diverged(self, epoch: int, step: int | None, value: float) -> None:
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
        raise TrainingDiverged(
            f"the training loss became {value} at {where}; {self._checkpoint_note(epoch)}. "
            "Lower train.lr (or the method's step sizes) and start again in a new --out directory."
        )

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        resuming = agree(lambda: self.run_dir.prepare(cfg, self.resume))
        torch.manual_seed(cfg.seed)
        self.method: Method = cfg.method.build()
        model = build_model(cfg).to(self.device)
        dataset = DATASETS.get(cfg.data.dataset)
        self.input_shape, self.num_classes = dataset.input_shape, dataset.num_classes
        params_before, self.macs_before = count_params(model), count_macs(model, self.input_shape)
        self.trained = self.method.prepare(model).to(self.device)
        self._load_data()
        self.method.before_run(self.trained, len(self.batches), cfg.train.prune_epochs, self.calibration)
        if self.precision.scaler is not None and self.method.reads_scaled_gradients():
            raise ConfigError(f"train.precision: {self.precision.name}'s loss scaling would scale the per-example "
                              f"gradients {cfg.method.name} reads; use 'bf16' (no scaling) or 'fp32'")  # fmt: skip
        st = _State()
        shared_file = self._shared_file()
        if resuming:
            self._restore(st)
        else:
            self._new_phase_optimizer(self.method.weight_parameters(self.trained), "prune")
            if shared_file is not None and shared_file.is_file():
                self._reuse_shared(st, shared_file)

        total = cfg.train.epochs
        epochs_bar = bar(total, "epochs", "ep", enabled=not self.quiet, initial=st.epoch)
        while st.epoch < total:
            start = time.perf_counter()
            if st.phase == "prune" and st.epoch == cfg.train.prune_epochs:
                self._end_of_training_phase(st, shared_file)
            use_method = st.phase == "prune"
            model_now = self.trained if use_method else st.result.model
            desc = f"epoch {st.epoch + 1}/{total} ({st.phase})"
            with bar(len(self.batches), desc, "step", enabled=not self.quiet, leave=False) as steps:
                masks = None if use_method else st.result.weight_masks
                row = self._train_epoch(model_now, st.epoch, use_method, steps, masks)
            acc, test_loss = evaluate(model_now, self.test_split, cfg.data.eval_batch_size)
            row = {"epoch": st.epoch + 1, "phase": st.phase, **row, "test_accuracy": acc, "test_loss": test_loss}
            row.update(self.method.epoch_metrics(self.trained) if use_method else self._kept_metrics(st))
            if use_method:
                try:
                    self.method.after_epoch(self.trained, row)
                except TrainingDiverged as stop:
                    raise TrainingDiverged(f"{stop}; {self._checkpoint_note(st.epoch)}") from None
            for hook in self.hooks:
                hook.on_epoch(self, st, row)
            st.epoch += 1
            st.seconds += time.perf_counter() - start
            row["seconds"] = st.seconds
            st.metrics.append(row)
            for hook in self.hooks:
                hook.on_epoch_end(self, st, row)
            epochs_bar.update(1)
        epochs_bar.close()
        if st.phase == "prune":  # no fine-tuning: compact at the very end
            self._end_of_training_phase(st, shared_file)
        return self._finish(st, params_before)

    def _end_of_training_phase(self, st: _State, shared_file: Path | None) -> None:
        if shared_file is not None and not st.shared and self.rank == 0:
            self._save_shared(st, shared_file)
        if self.rank == 0:  # the model before pruning, for analyses such as `equiprune limit`
            io.torch_save(self.run_dir.trained_state, self._plain().state_dict())
        st.gated_test_accuracy = evaluate(self.trained, self.test_split, self.cfg.data.eval_batch_size)[0]
        st.result = self.method.finish(self.trained, self.calibration)
        st.run_warnings.extend(st.result.notes)
        st.compacted_test_accuracy = evaluate(st.result.model, self.test_split, self.cfg.data.eval_batch_size)[0]
        for hook in self.hooks:
            hook.on_compacted(self, st)
        st.phase = "finetune"
        if self.cfg.train.finetune_epochs:
            self._new_phase_optimizer(st.result.model.parameters(), "finetune")

    @staticmethod
    def _kept_metrics(st: _State) -> dict[str, Any]:
        return alive_metrics(st.result.kept, st.result.total)

    def _finish(self, st: _State, params_before: int) -> dict[str, Any]:
        small = st.result.model
        acc, test_loss = evaluate(small, self.test_split, self.cfg.data.eval_batch_size)
        last_pruning = [r for r in st.metrics if r["phase"] == "prune"]
        flagged = [r for r in st.metrics if "warning" in r]  # epochs no better than a uniform guess
        results = RunResults(
            method=self.cfg.method.name,
            seed=self.cfg.seed,
            dataset=self.cfg.data.dataset,
            epochs=self.cfg.train.epochs,
            test_accuracy=acc,
            test_loss=test_loss,
            test_accuracy_before_compaction=st.gated_test_accuracy,
            test_accuracy_after_compaction=st.compacted_test_accuracy,
            kept_fraction=st.result.kept_fraction,
            players=self.method.pruned_kinds(self.trained),
            kept=st.result.kept,
            total=st.result.total,
            kept_by_kind=st.result.kept_by_kind(),
            params_before=params_before,
            params_after=count_params(small),
            macs_before=self.macs_before,
            macs_after=count_macs(small, self.input_shape),
            seconds=st.seconds,
            undecided_fraction=last_pruning[-1].get("undecided_fraction") if last_pruning else None,
            undecided_among_survivors=last_pruning[-1].get("undecided_among_survivors") if last_pruning else None,
            budget=self.method.budget(),
            nonzero_params_after=nonzero_params(small),
            shared_training=st.shared,
            warnings=[r["warning"] for r in flagged] + st.run_warnings,
            compaction_flagged=any(w.startswith(COMPACTION_WARNING) for w in st.run_warnings),
            other_decisions=st.other_decisions,
            budget_fit=st.result.budget_fit,
            # the same epochs as data, for a report that lists them without reading the messages
            diverged_epochs=[{"epoch": r["epoch"], "phase": r["phase"]} for r in flagged],
            # what besides the config decides the numbers (of the last session, for a resumed run)
            environment={
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": str(self.device),
                "processes": self.world,
                "precision": self.precision.name,
            },
        ).to_dict()
        for hook in self.hooks:
            hook.on_finish(self, st, results)
        return results


def run(cfg: RunConfig, out, resume: bool = False, quiet: bool = False, shared=None, hooks=()) -> dict[str, Any]:
    """Train, prune and compact ``cfg`` into run directory ``out``; returns the results.

    ``shared``: a directory where runs with the same training phase share it (see the module doc).
    ``hooks``: :class:`~equiprune.experiments.hooks.RunHook` objects called after the default ones
    (which flag divergence, checkpoint, log each epoch and write the outputs)."""
    previous = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        with concerning(str(out)):  # its warnings name it: a sweep runs many side by side
            return Trainer(cfg, out, resume, quiet, shared, hooks).run()
    finally:  # a sweep runs many configs in one process: leave the next one torch's default
        torch.set_num_threads(previous)

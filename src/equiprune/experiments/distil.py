"""Distillation of a pruned language model towards its dense self, and pruning in stages on it.

The objective (for encoders that give token states, as sentence-embedding models are used): one
minus the cosine of the mean-pooled, L2-normalised sentence embeddings, plus the mean squared error
of every layer's token states relative to the dense states' variance, padding left out. The token
states give many more targets per sentence than the embedding alone, which makes a short
distillation go further.

Pruning goes in stages, one player kind at a time (heads, then FFN neurons): a structured method
(the game, magnitude, ...) plays or waits for ``stage_steps`` distillation steps, compacts; or
``obs`` chooses by reconstruction (:mod:`equiprune.core.obs_selection`) without steps. After each
stage the layers that lost inputs are refit by least squares (:mod:`equiprune.core.refit`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from equiprune.core.compact import compact
from equiprune.core.obs_selection import reconstruction_masks
from equiprune.core.players import attach
from equiprune.core.refit import refit_consumers
from equiprune.methods import build_method
from equiprune.progress import bar

OBS = "obs"  # reconstruction selection, a method name only for staged pruning


def pooled(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over the real tokens, L2-normalised: the sentence embedding."""
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def embed(model, batch: dict) -> torch.Tensor:
    return pooled(model(**batch)[0], batch)


@torch.no_grad()
def held_out_cosine(model, data: list[dict], targets: list[torch.Tensor]) -> float:
    """The mean cosine of ``model``'s sentence embeddings to ``targets`` (the dense model's)."""
    model.eval()
    return float(torch.cat([(embed(model, b) * t).sum(1) for b, t in zip(data, targets)]).mean())


def distillation_loss(student, teacher, batch: dict) -> torch.Tensor:
    """See the module doc."""
    states = student(**batch, output_hidden_states=True).hidden_states
    with torch.no_grad():
        reference = teacher(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    layers = list(zip(states[1:], reference[1:]))
    tokens = sum(F.mse_loss(s[real], r[real]) / r[real].var() for s, r in layers) / len(layers)
    return tokens + (1 - (pooled(states[-1], batch) * pooled(reference[-1], batch)).sum(1)).mean()


SCHEDULES = ("constant", "linear")


def distil(model, teacher, data: list[dict], steps: int, lr: float, method=None, start: int = 0,
           progress: bool = False, desc: str = "distil", schedule: str = "constant") -> None:  # fmt: skip
    """``steps`` AdamW steps of :func:`distillation_loss` on ``data`` from batch ``start`` on,
    cycling; a method's ``before_step`` and ``after_step`` around each (it plays), its weight
    parameters only trained.
    ``schedule="linear"`` lowers the learning rate linearly from ``lr`` towards 0 over the steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    params = method.weight_parameters(model) if method else list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    decay = None
    if schedule == "linear":  # total_iters at least 1: no steps is a valid request, not a division by 0
        decay = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=max(steps, 1))
    model.train()
    with bar(steps, desc, "step", enabled=progress and steps > 0) as shown:
        for k in range(steps):
            if method:
                method.before_step(model)
            opt.zero_grad(set_to_none=True)
            loss = distillation_loss(model, teacher, data[(start + k) % len(data)])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"distillation loss is {float(loss)} at step {k + 1}; lower the learning rate")
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            if method:
                method.after_step(model)
            shown.update()


def prune_stages(dense, method: str, settings: dict, stages: Sequence[tuple[str, float]], data: list[dict],
                 calibration: list[dict], stage_steps: int, lr: float, progress: bool = False):  # fmt: skip
    """A pruned copy of ``dense`` after every stage ((player kind, fraction kept), in order; see the
    module doc), and each stage's refit errors (layer -> relative squared error left)."""
    student, refits = dense, []
    for index, (kind, keep) in enumerate(stages):
        if method == OBS:
            gated = attach(copy.deepcopy(student))
            student = compact(gated, reconstruction_masks(gated, calibration, keep, kind=kind)).model
        else:
            chosen = build_method(method, settings={**settings, "budget": keep}, players=kind)
            gated = chosen.prepare(copy.deepcopy(student))
            chosen.before_run(gated, steps_per_epoch=stage_steps, epochs=1)
            distil(gated, dense, data, stage_steps, lr, chosen, index * stage_steps, progress, f"{method}: {kind}s")
            student = chosen.finish(gated).model
        refits.append(refit_consumers(student, dense, calibration))
    return student, refits

"""``equiprune plateau``: the selection-plateau study. One trained model per seed is pruned in one
shot at each sparsity by every scorer (:mod:`equiprune.core.scorers`), as single weights (one global
ranking) and as structured players (heads, MLP units, neurons or filters; the same fraction of every
layer), then evaluated as cut and after the same short fine-tuning. The pairwise overlap (Jaccard)
of the selected sets shows the plateau's mechanism rather than inferring it from accuracies.

    DIR/seed<k>/run/        the trained model (resumes when the command is repeated)
    DIR/seed<k>/plateau.json  that seed's rows and overlaps (a finished seed is not redone)
    DIR/plateau.json        every row, the tables' figures, the overlaps averaged over seeds
    DIR/plateau.md          accuracy per scorer and sparsity, each scorer's escape from the plateau
    DIR/plateau_accuracy.png, DIR/overlap.png
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from equiprune import io
from equiprune.config import PlateauConfig, RunConfig, load_config
from equiprune.core.players import attach
from equiprune.core.scorers import KAPPAS, SCORERS, Features, Scorer, jaccard, scorer_from_settings
from equiprune.core.selection import top_k_masks
from equiprune.core.weight_players import prunable_parameters
from equiprune.data import Batches, Split
from equiprune.errors import ConfigError, PruningError
from equiprune.experiments.loop import run
from equiprune.experiments.plateau_report import plot, render, summarise
from equiprune.experiments.rundir import RunDir, load_trained
from equiprune.experiments.setup import build_optimizer, evaluate, load_run_splits, resolve_device
from equiprune.methods.base import Calibration
from equiprune.progress import bar

KINDS = {"weight": "global", "structured": "layerwise"}  # players -> allocation of the selection


def chosen_scorers(settings: PlateauConfig) -> dict[str, Scorer]:
    """The registered scorers named in ``settings.scorers`` (all when empty) and the custom ones."""
    custom = {name: scorer_from_settings(name, table) for name, table in settings.custom.items()}
    clash = sorted(set(custom) & set(SCORERS.names()))
    if clash:
        raise ConfigError(f"plateau.custom: {', '.join(clash)} already name built-in scorers; choose another name")
    names = settings.scorers or [*SCORERS.names(), *custom]
    chosen = {name: custom[name] if name in custom else SCORERS.get(name, "plateau.scorers") for name in names}
    rank = {kappa: i for i, kappa in enumerate(KAPPAS)}  # the rank-monotone first, then by class
    return dict(sorted(chosen.items(), key=lambda item: rank[item[1].kappa]))


class _Players:
    """One kind of players of a trained model: their features, and copies pruned to a selection."""

    def __init__(self, model: torch.nn.Module, kind: str):
        self.kind = kind
        if kind == "weight":
            names = {id(p): n for n, p in model.named_parameters()}
            self.model = model
            self.tensors = {names[id(p)]: p for p in prunable_parameters(model)}
        else:
            self.model = attach(copy.deepcopy(model))  # raises PruningError naming why when it has none
            self.tensors = {g.name: s for g, s in zip(self.model.groups, self.model.gates)}
        if not self.tensors:
            raise PruningError(f"plateau: the model has no prunable {kind} players")

    def magnitude(self) -> dict[str, torch.Tensor]:
        if self.kind == "weight":
            return {n: p.detach().abs() for n, p in self.tensors.items()}
        out = {}
        for g in self.model.groups:  # the mean |θ| of each player's incoming weights and bias
            blocks = g.blocks(followers=False)
            out[g.name] = sum(b.detach().abs().sum(1) for b in blocks) / sum(b.shape[1] for b in blocks)
        return out

    def features(self, calibration: Calibration | None, batches: int) -> Features:
        taylor = None
        if calibration is not None:
            saliency = calibration.mean_saliency(self.model, list(self.tensors.values()), batches)
            taylor = dict(zip(self.tensors, saliency))
        return Features.of(self.magnitude(), taylor, per_layer=KINDS[self.kind] == "layerwise")

    def pruned(self, masks: dict[str, torch.Tensor]):
        """A copy with the players outside ``masks`` zeroed, the (tensor, mask) pairs that keep them
        at zero, and the parameters fine-tuning trains (the weights; never the gates)."""
        clone = copy.deepcopy(self.model)
        if self.kind == "weight":
            named = dict(clone.named_parameters())
            pairs = [(named[n], masks[n].reshape(named[n].shape)) for n in self.tensors]
            trained = list(clone.parameters())
        else:
            pairs = [(s, masks[g.name]) for g, s in zip(clone.groups, clone.gates)]
            trained = clone.weight_parameters()
        _zero(pairs)
        return clone, pairs, trained


@torch.no_grad()
def _zero(pairs) -> None:
    for t, m in pairs:
        t.mul_(m.to(t.dtype))


def finetune(model, pairs, params, train: Split, cfg: RunConfig, steps: int, seed: int) -> None:
    """``steps`` optimizer steps on ``params``, the pruned players re-zeroed after each; every scorer's
    cut sees the same batches in the same order."""
    if steps == 0:
        return
    opt = build_optimizer(cfg, params, cfg.train.optimizer, cfg.plateau.finetune_lr or cfg.train.lr, decay=0.0)
    batches = Batches(train, cfg.data.batch_size, shuffle=True, seed=seed + 104729)
    model.train()
    done, epoch = 0, 0
    while done < steps:
        for x, y in batches.epoch(epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            _zero(pairs)
            done += 1
            if done == steps:
                break
        epoch += 1


def _cut_and_finetune(players: _Players, mask, train: Split, test: Split, cfg: RunConfig, seed: int):
    """Test accuracy of the cut, and after the fine-tuning (the same as the cut's without one)."""
    pruned, pairs, params = players.pruned(mask)
    cut = evaluate(pruned, test, cfg.data.eval_batch_size)[0]
    if not cfg.plateau.finetune_steps:
        return cut, cut
    finetune(pruned, pairs, params, train, cfg, cfg.plateau.finetune_steps, seed)
    return cut, evaluate(pruned, test, cfg.data.eval_batch_size)[0]


def study_seed(cfg: RunConfig, seed: int, out: Path, scorers: dict[str, Scorer], quiet: bool) -> dict[str, Any]:
    """Train (or resume) the seed's model, then every kind × sparsity × scorer; saved per seed."""
    done = out / f"seed{seed}" / "plateau.json"
    if done.is_file():
        return json.loads(done.read_text())
    s = cfg.plateau
    run_dir = RunDir(out / f"seed{seed}" / "run")
    if not run_dir.is_finished():
        run(
            dataclasses.replace(cfg, seed=seed, plateau=None),
            run_dir.path,
            resume=run_dir.checkpoint.is_file(),
            quiet=quiet,
        )
    _, model = load_trained(run_dir)
    train, test = load_run_splits(cfg.data, resolve_device(cfg.device))
    dense = evaluate(model, test, cfg.data.eval_batch_size)[0]
    calibration = (
        Calibration(train, cfg.data.batch_size, seed) if any(c.needs_gradients for c in scorers.values()) else None
    )
    rows, overlaps = [], []
    total = len(s.players) * len(s.sparsities) * len(scorers)
    with bar(total, f"plateau seed {seed}", "cut", enabled=not quiet) as progress:
        for kind in s.players:
            players = _Players(model, kind)
            features = players.features(calibration, s.calibration_batches)
            scores = {name: scorer(features, name) for name, scorer in scorers.items()}
            for sparsity in s.sparsities:
                masks = {name: top_k_masks(sc, 1 - sparsity, KINDS[kind]) for name, sc in scores.items()}
                seen: dict[bytes, tuple[float, float]] = {}  # a selection already cut: the same figures
                for name, mask in masks.items():
                    key = torch.cat([m.flatten() for m in mask.values()]).cpu().numpy().tobytes()
                    if key not in seen:
                        seen[key] = _cut_and_finetune(players, mask, train, test, cfg, seed)
                    cut, tuned = seen[key]
                    kept = sum(int(m.sum()) for m in mask.values())
                    rows.append({"seed": seed, "players": kind, "sparsity": sparsity, "scorer": name,
                                 "kappa": scorers[name].kappa, "kept": kept, "test_accuracy_cut": cut,
                                 "test_accuracy_finetuned": tuned})  # fmt: skip
                    progress.update(1)
                names = list(masks)
                matrix = [[jaccard(masks[a], masks[b]) for b in names] for a in names]
                overlaps.append(
                    {"seed": seed, "players": kind, "sparsity": sparsity, "scorers": names, "jaccard": matrix}
                )
    result = {"seed": seed, "dense_test_accuracy": dense, "rows": rows, "overlaps": overlaps}
    io.write_json(done, result)
    return result


def plateau(config: str | Path, out: str | Path, quiet: bool = False) -> dict[str, Any]:
    """The whole study for a configuration whose ``[plateau]`` table says what to run."""
    out = Path(out)
    cfg = load_config(config)
    if cfg.plateau is None:
        cfg = dataclasses.replace(cfg, plateau=PlateauConfig())
    scorers = chosen_scorers(cfg.plateau)
    per_seed = [study_seed(cfg, seed, out, scorers, quiet) for seed in cfg.plateau.seeds]
    result = summarise(per_seed, scorers, cfg.plateau.finetune_steps)
    result["source"] = str(config)
    io.write_json(out / "plateau.json", result)
    io.write_text(out / "plateau.md", render(result))
    plot(result, out)
    return result

"""Why a concave-mask search's round does not train: one epoch of a round's ticket under four treatments.

A concave-mask round starts its survivors at θ₀ with every mask at ``mask_init`` (0.5): the
network computes with m·θ, so each layer's weights are halved (the signal) and the gradient on θ is
halved too, which quarters the weights' effective step (SGD on m·θ with the step m²·lr). This trains
the ticket that a search's round starts from (the mask kept after the previous round, on the rewind
weights) for one epoch, as the search's first epoch of that round does (SGD with momentum, a cosine
over the round, the run's batch order), four ways:

- ``plain``: unscaled at the run's lr (what IMP trains);
- ``masks``: masks fixed at ``--scale`` (the search without its mask steps);
- ``signal``: the weights multiplied by ``--scale`` once, trained at the run's lr;
- ``step``: unscaled, at lr·scale².

For the masked weights, ``masks`` is ``signal`` at lr·scale² written another way (only the unmasked
biases' step differs); the tests check that identity on a network without biases.

    python tools/mask_scale_probe.py runs/lottery-fashion/log/seed0/search --round 5 [--scale 0.5]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from equiprune.config import load_config
from equiprune.data import Batches
from equiprune.experiments.setup import build_model, load_run_splits
from equiprune.methods.tickets import TICKETS_FILE, load_tickets


@dataclass
class Epoch:
    treatment: str
    loss: float  # the epoch's mean training cross-entropy
    accuracy: float  # on the training batches


def masked_epoch(model: nn.Module, masks: dict[str, torch.Tensor], multiplier: float, lr: float, momentum: float,
                 batches: Batches, epoch: int, round_steps: int) -> tuple[float, float]:  # fmt: skip
    """One epoch of SGD in which every masked layer computes with ``weight·mask·multiplier``."""
    weights = {f"{name}.weight": model.get_submodule(name).weight for name in masks}
    fixed = {f"{name}.weight": m.to(torch.float32) * multiplier for name, m in masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, round_steps)
    total, right, seen = 0.0, 0, 0
    for x, y in batches.epoch(epoch):
        # the forward pass reads weight·mask·multiplier; the gradient reaches the weights through it
        out = functional_call(model, {key: w * fixed[key] for key, w in weights.items()}, (x,))
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cosine.step()
        total += float(loss.detach()) * len(y)
        right += int((out.detach().argmax(1) == y).sum())
        seen += len(y)
    return total / seen, right / seen


def probe(search: Path, round_: int, scale: float) -> list[Epoch]:
    """The four treatments of ``round_``'s first epoch (``round_`` ≥ 2: it starts from round
    ``round_ − 1``'s mask) of the search run in ``search``."""
    cfg = load_config(search / "config.toml")
    tickets = load_tickets(search)
    if not 2 <= round_ <= len(tickets["masks"]):
        raise SystemExit(f"--round: {search} has rounds 1-{len(tickets['masks'])}; give one from 2 on")
    masks = tickets["masks"][round_ - 2]
    train, _ = load_run_splits(cfg.data, torch.device("cpu"))
    batches = Batches(train, cfg.data.batch_size, True, cfg.seed)
    rounds, epochs = cfg.method.settings.rounds, cfg.train.epochs - cfg.train.finetune_epochs
    epoch = (round_ - 1) * epochs // rounds  # the round's first epoch (0-based)
    round_steps = len(batches) * epochs // rounds
    lr, momentum = cfg.train.lr, cfg.train.momentum
    out = []
    for name, multiplier, init, step in (("plain", 1.0, 1.0, lr), ("masks", scale, 1.0, lr),
                                         ("signal", 1.0, scale, lr), ("step", 1.0, 1.0, lr * scale**2)):  # fmt: skip
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
        model.load_state_dict(tickets["rewind"])  # plain names already
        with torch.no_grad():
            for layer, m in masks.items():
                model.get_submodule(layer).weight.mul_(m * init)
        loss, accuracy = masked_epoch(model, masks, multiplier, step, momentum, batches, epoch, round_steps)
        out.append(Epoch(name, loss, accuracy))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("search", type=Path, help=f"a concave-mask or imp search run directory (with {TICKETS_FILE})")
    p.add_argument("--round", type=int, required=True, help="the round whose first epoch to train (2 or more)")
    p.add_argument("--scale", type=float, default=0.5, help="the masks' start (concave-mask's mask_init)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as `equiprune lottery --jobs 2` runs its lanes
    for e in probe(args.search, args.round, args.scale):
        print(f"{e.treatment:<7} loss {e.loss:.3f}  train accuracy {100 * e.accuracy:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

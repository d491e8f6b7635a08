"""What every experiment builds from a configuration: the device, the model, the data splits,
the process's place in a distributed run, the optimizer, the evaluation of a model on a split, and
the hash of the training phase that runs may share."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from equiprune.config import SHAPE_KEYS, DataConfig, RunConfig, digest
from equiprune.data import DATASETS, Split, load_split
from equiprune.errors import ConfigError
from equiprune.models import create_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train(was_training)
    return correct / len(split), loss / len(split)


def load_run_splits(d: DataConfig, device: torch.device) -> tuple[Split, Split]:
    """The configured training and test splits (subsets applied), on ``device``."""
    train = load_split(d.dataset, "train", d.root).subset(d.train_subset)
    test = load_split(d.dataset, "test", d.root).subset(d.test_subset)
    return Split(train.x.to(device), train.y.to(device)), Split(test.x.to(device), test.y.to(device))


def build_model(cfg: RunConfig) -> nn.Module:
    ds = DATASETS.get(cfg.data.dataset, "data.dataset")
    m = cfg.model
    widths = {k: getattr(m, k) for k in SHAPE_KEYS if getattr(m, k) is not None}
    shape, classes = ds.input_shape, ds.num_classes
    return create_model(
        cfg.model.name, input_shape=shape, num_classes=classes, activation=cfg.model.activation, **widths
    )


def build_optimizer(cfg: RunConfig, params, kind: str, lr: float, decay: float) -> torch.optim.Optimizer:
    """The configured kind of optimizer (``adam``, else SGD with ``train.momentum``) over ``params``."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.train.momentum, weight_decay=decay)


def optimizer_and_schedule(cfg: RunConfig, params, kind: str, lr: float, epochs: int, steps_per_epoch: int,
                           decay: float):  # fmt: skip
    """The optimizer and its learning-rate schedule (``train.schedule``) over ``epochs`` epochs."""
    t = cfg.train
    opt = build_optimizer(cfg, params, kind, lr, decay)
    if t.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def shared_training_digest(cfg: RunConfig) -> str | None:
    """A hash of everything the training phase of ``cfg`` depends on, when its method lets runs
    share that phase (``Method.training_key``), else None: runs with the same digest train the very
    same network before pruning."""
    key = cfg.method.method_type.training_key(cfg.method.settings)
    if key is None:
        return None
    what = cfg.to_dict()
    del what["method"]
    for section in ("limit", "plateau", "log"):
        what.pop(section, None)
    train = what["train"]
    for k in (
        "epochs",
        "finetune_epochs",
        "finetune_optimizer",
        "finetune_lr",
        "finetune_weight_decay",
        "compaction_tolerance",
    ):
        train.pop(k, None)
    what.update(training_key=key, prune_epochs=cfg.train.prune_epochs)
    return digest(what)[:20]

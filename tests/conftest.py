import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _messages_as_imported():
    """Each test starts with the ``equiprune`` logger as importing leaves it, whatever a command
    line test before it set up (``progress.show_messages``)."""
    yield
    logger = logging.getLogger("equiprune")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture(scope="session")
def data_root() -> Path:
    """A directory holding the real MNIST files: $EQUIPRUNE_DATA, else ../shared/data beside the
    checkout, else the download cache (filled from the official mirrors on first use)."""
    if os.environ.get("EQUIPRUNE_DATA"):
        return Path(os.environ["EQUIPRUNE_DATA"])
    if (SHARED_DATA / "mnist").is_dir():
        return SHARED_DATA
    from equiprune.data import DATASETS, cache_dir, resolve_file

    ds = DATASETS.get("mnist")
    for images, labels in ds.files.values():
        resolve_file(ds, images), resolve_file(ds, labels)
    return cache_dir()


@pytest.fixture
def tiny_suite(monkeypatch, data_root):
    """game-mnist with two of its configurations, each shrunk to seconds of training."""
    from equiprune.config import parse_config
    from equiprune.experiments import reproduce as rep

    from .helpers import small_config

    suite = dataclasses.replace(rep.SUITES["game-mnist"], configs=("l1-l2-combined", "equiprune-best"))
    monkeypatch.setitem(rep.SUITES, "game-mnist", suite)
    real = rep.bundled_config

    def tiny(suite_name, name):
        full = real(suite_name, name)  # the shipped file must parse and validate
        small = parse_config(small_config(data_root, epochs=2, finetune=1, train_subset=2000, gamma=0.05))
        return dataclasses.replace(small, method=full.method, threads=full.threads)

    monkeypatch.setattr(rep, "bundled_config", tiny)


@pytest.fixture
def cifar10_files(tmp_path, monkeypatch):
    """Tiny CIFAR-10 files in the official format (the checksum swapped for theirs)."""
    from equiprune.data import DATASETS

    from .test_cifar import _write_archive

    official = DATASETS.get("cifar10")
    (tmp_path / official.folder).mkdir()
    archive = tmp_path / official.folder / official.archive
    members = [m for split in official.splits for m in official.members[split]]
    _write_archive(archive, official.top, members, official.label_key, official.num_classes)
    tiny = dataclasses.replace(official, sha256={official.archive: hashlib.sha256(archive.read_bytes()).hexdigest()})
    monkeypatch.setitem(DATASETS._items, "cifar10", tiny)
    return tmp_path

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

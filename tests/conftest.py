import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST files: $EQUIPRUNE_DATA, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("EQUIPRUNE_DATA", SHARED_DATA))
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"MNIST not found under {root}: set EQUIPRUNE_DATA to a directory holding mnist/ "
            "(the CI points it at ../shared/data)"
        )
    return root

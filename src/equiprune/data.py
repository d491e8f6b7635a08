"""Datasets by name, from the official files: a local directory, else a cache, else a download.

Every file is checked against its SHA-256 whichever way it was found, so a truncated or corrupted
copy is never used silently. The whole dataset is held in memory as tensors: the datasets here are
small, and slicing tensors is much faster than a DataLoader for them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .registry import Registry

DATA_ENV = "EQUIPRUNE_DATA"
CACHE_ENV = "EQUIPRUNE_CACHE"


@dataclass(frozen=True)
class IdxDataset:
    """A dataset shipped as four gzipped IDX files (the MNIST family)."""

    name: str
    folder: str
    files: dict[str, tuple[str, str]]  # split -> (images file, labels file)
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    mean: float
    std: float
    num_classes: int = 10
    input_shape: tuple[int, ...] = (1, 28, 28)


DATASETS: Registry[IdxDataset] = Registry("dataset")


def _register(ds: IdxDataset) -> None:
    DATASETS.register(ds.name)(ds)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_register(
    IdxDataset(
        name="mnist",
        folder="mnist",
        files=_IDX_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        mean=0.1307,
        std=0.3081,
    )
)
_register(
    IdxDataset(
        name="fashion-mnist",
        folder="fashion-mnist",
        files=_IDX_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        mean=0.2860,
        std=0.3530,
    )
)


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "equiprune"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to_supply(ds: IdxDataset, fname: str) -> str:
    return (
        f"Supply the official file {ds.folder}/{fname} in a directory passed as `root` "
        f"(CLI: [data] root in the config) or named by ${DATA_ENV}, "
        f"or unset both to download it into {cache_dir()}."
    )


def _verify(ds: IdxDataset, path: Path, source: str) -> None:
    expected = ds.sha256[path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path} ({source}) is truncated or corrupted: its SHA-256 is {actual} "
            f"({path.stat().st_size} bytes), expected {expected}. "
            f"Replace it with the official file. {_how_to_supply(ds, path.name)}"
        )


def _download(ds: IdxDataset, fname: str, dest: Path, mirrors: tuple[str, ...]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror + fname
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{fname}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            if sha256_of(Path(tmp)) != ds.sha256[fname]:
                failures.append(f"{url}: checksum mismatch")
                continue
            os.replace(tmp, dest)
            return
        except OSError as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise DataError(
        f"could not download {ds.folder}/{fname}: " + "; ".join(failures) + ". " + _how_to_supply(ds, fname)
    )


def resolve_file(
    ds: IdxDataset,
    fname: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: tuple[str, ...] | None = None,
) -> Path:
    """Find ``fname`` of ``ds``, verified: in ``root`` or $EQUIPRUNE_DATA, else cache, else download."""
    source = "given root" if root is not None else None
    if root is None and os.environ.get(DATA_ENV):
        root, source = os.environ[DATA_ENV], f"${DATA_ENV}"
    if root is not None:
        # A directory the user named is authoritative: a missing file there is an error, not a
        # reason to download behind their back.
        path = Path(root) / ds.folder / fname
        if not path.is_file():
            raise DataError(
                f"{path} not found ({source}={root}). Expected the official file {fname} "
                f"(SHA-256 {ds.sha256[fname]}) under {Path(root) / ds.folder}/. " + _how_to_supply(ds, fname)
            )
        _verify(ds, path, source)
        return path
    path = cache_dir() / ds.folder / fname
    if not path.is_file():
        if not download:
            raise DataError(f"{path} is not in the cache and downloading is off. " + _how_to_supply(ds, fname))
        _download(ds, fname, path, mirrors or ds.mirrors)
    _verify(ds, path, "cache")
    return path


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (unsigned-byte data) into an array, checking its header."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says shape {dims} but holds {data.size} values")
    return data.reshape(dims)


@dataclass
class Split:
    """One split of a dataset in memory: normalised float images and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


def load_split(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> Split:
    """Load ``split`` ("train" or "test") of dataset ``name`` as normalised tensors."""
    ds = DATASETS.get(name, "data.dataset")
    if split not in ds.files:
        raise DataError(f"dataset {name!r} has no split {split!r}; expected one of {sorted(ds.files)}")
    images_file, labels_file = ds.files[split]
    images = read_idx(resolve_file(ds, images_file, root, download))
    labels = read_idx(resolve_file(ds, labels_file, root, download))
    if len(images) != len(labels):
        raise DataError(f"{name}/{split}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(len(images), *ds.input_shape)
    x = (x - ds.mean) / ds.std
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


class Batches:
    """Mini-batches over a :class:`Split`, shuffled by ``(seed, epoch)`` alone.

    Deriving each epoch's order from the seed and the epoch number (not from a running RNG) is what
    lets an interrupted run resume to the same result. ``rank``/``world_size`` give each process of a
    distributed run its own disjoint, equally long share of every epoch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank] if self.world_size > 1 else order

    def __len__(self) -> int:
        return -(-(len(self.split) // self.world_size) // self.batch_size)

    def epoch(self, epoch: int):
        idx = self._indices(epoch)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            yield self.split.x[b], self.split.y[b]

"""Datasets by name, from the official files: a local directory, else a cache, else a download.

MNIST and Fashion-MNIST come as gzipped IDX files; CIFAR-10 and CIFAR-100 as the official "python
version" archive (pickled batches in a .tar.gz), read directly from the archive.

Every file is checked against its SHA-256 whichever way it was found, so a truncated or corrupted
copy is never used silently. The whole dataset is held in memory as tensors: the datasets here are
small, and slicing tensors is much faster than a DataLoader for them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from equiprune.errors import DataError
from equiprune.registry import Registry

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

    @property
    def splits(self) -> list[str]:
        return sorted(self.files)

    def read(self, split: str, root, download: bool) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 images and integer labels of ``split``."""
        images_file, labels_file = self.files[split]
        return read_idx(resolve_file(self, images_file, root, download)), read_idx(
            resolve_file(self, labels_file, root, download)
        )


@dataclass(frozen=True)
class CifarDataset:
    """A dataset shipped as one archive of pickled batches (the CIFAR "python version")."""

    name: str
    folder: str
    archive: str  # the .tar.gz file name
    top: str  # the directory inside the archive
    members: dict[str, tuple[str, ...]]  # split -> pickled batches inside ``top``
    label_key: bytes
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, ...] = (3, 32, 32)

    @property
    def splits(self) -> list[str]:
        return sorted(self.members)

    def read(self, split: str, root, download: bool) -> tuple[np.ndarray, np.ndarray]:
        path = resolve_file(self, self.archive, root, download)
        try:
            with tarfile.open(path, "r:gz") as tar:
                batches = [self._batch(tar, path, member) for member in self.members[split]]
        except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as exc:
            raise DataError(f"{path} is not a readable CIFAR archive: {exc}") from exc
        return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

    def _batch(self, tar: tarfile.TarFile, path: Path, member: str) -> tuple[np.ndarray, np.ndarray]:
        """One pickled batch: images (N, 3, 32, 32) and labels, checked against the format."""
        name = f"{self.top}/{member}"
        try:
            f = tar.extractfile(name)
        except KeyError:
            f = None
        if f is None:
            raise DataError(f"{path} has no file {name}: not the official {self.archive}")
        batch = pickle.load(f, encoding="bytes")
        x, y = np.asarray(batch.get(b"data")), np.asarray(batch.get(self.label_key))
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != int(np.prod(self.input_shape)):
            raise DataError(f"{path}: {name} holds data of shape {x.shape} {x.dtype}, expected (N, 3072) uint8")
        if y.shape != (len(x),) or y.min(initial=0) < 0 or y.max(initial=0) >= self.num_classes:
            raise DataError(
                f"{path}: {name} has {y.shape} labels for {len(x)} images, or labels outside 0..{self.num_classes - 1}"
            )
        return x.reshape(len(x), *self.input_shape), y


DATASETS: Registry[IdxDataset | CifarDataset] = Registry("dataset")


def _register(ds: IdxDataset | CifarDataset) -> None:
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
_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
_register(
    CifarDataset(
        name="cifar10",
        folder="cifar-10",
        archive="cifar-10-python.tar.gz",
        top="cifar-10-batches-py",
        members={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key=b"labels",
        sha256={"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
        mirrors=_CIFAR_MIRRORS,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        num_classes=10,
    )
)
_register(
    CifarDataset(
        name="cifar100",
        folder="cifar-100",
        archive="cifar-100-python.tar.gz",
        top="cifar-100-python",
        members={"train": ("train",), "test": ("test",)},
        label_key=b"fine_labels",
        sha256={"cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"},
        mirrors=_CIFAR_MIRRORS,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        num_classes=100,
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


def _how_to_supply(ds: IdxDataset | CifarDataset, fname: str) -> str:
    return (
        f"Supply the official file {ds.folder}/{fname} in a directory passed as `root` "
        f"(CLI: [data] root in the config) or named by ${DATA_ENV}, "
        f"or unset both to download it into {cache_dir()}."
    )


def _verify(ds: IdxDataset | CifarDataset, path: Path, source: str) -> None:
    expected = ds.sha256[path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path} ({source}) is truncated or corrupted: its SHA-256 is {actual} "
            f"({path.stat().st_size} bytes), expected {expected}. "
            f"Replace it with the official file. {_how_to_supply(ds, path.name)}"
        )


def _download(ds: IdxDataset | CifarDataset, fname: str, dest: Path, mirrors: tuple[str, ...]) -> None:
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
    ds: IdxDataset | CifarDataset,
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
    if split not in ds.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; expected one of {ds.splits}")
    images, labels = ds.read(split, root, download)
    if len(images) != len(labels):
        raise DataError(f"{name}/{split}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(len(images), *ds.input_shape)
    # per-channel statistics for colour images, one pair for grey ones
    x = (x - torch.tensor(ds.mean).view(-1, 1, 1)) / torch.tensor(ds.std).view(-1, 1, 1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation, batched: each image shifted by a random crop of its
    zero-padded copy (up to ``pad`` pixels each way) and mirrored left-right with probability ½."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, n), generator=generator)).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    # contiguous: the gather leaves a channels-last layout, which some CPU kernels handle very slowly
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


AUGMENTATIONS = ("none", "crop-flip")


class Batches:
    """Mini-batches over a :class:`Split`, shuffled by ``(seed, epoch)`` alone.

    Deriving each epoch's order (and augmentation) from the seed and the epoch number, not from a
    running RNG, is what lets an interrupted run resume to the same result. ``rank``/``world_size``
    give each process of a distributed run its own disjoint, equally long share of every epoch,
    dealt in turn, so that step k's batches of all ranks together are step k's batch of one process
    with ``world_size`` times the batch size.
    ``augment = "crop-flip"`` applies :func:`crop_flip` to every training batch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: str = "none",
    ):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        if augment not in AUGMENTATIONS:
            raise DataError(f"data.augment: got {augment!r}, expected one of {list(AUGMENTATIONS)}")
        if augment != "none" and split.x.dim() != 4:
            raise DataError(f"data.augment={augment!r} needs images (N, C, H, W), got shape {tuple(split.x.shape)}")
        self.augment = augment

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size == 1:
            return order
        return order[: n // self.world_size * self.world_size][self.rank :: self.world_size]

    def __len__(self) -> int:
        return -(-(len(self.split) // self.world_size) // self.batch_size)

    def epoch(self, epoch: int):
        idx = self._indices(epoch)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 31 + self.rank + 1)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            x = self.split.x[b]
            yield (crop_flip(x, g) if self.augment == "crop-flip" else x), self.split.y[b]

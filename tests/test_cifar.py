"""CIFAR-10/100 from the official "python version" archive, tested on small archives in that format
(the real ones are not on this machine); and the batched crop-and-flip augmentation."""

import dataclasses
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from equiprune import data
from equiprune.data import DATASETS, Batches, Split, crop_flip, load_split
from equiprune.errors import DataError


def _write_archive(path, top, members, label_key, classes, per_batch=6, seed=0):
    """A .tar.gz laid out like the official one: pickled dicts of uint8 rows and integer labels."""
    rng = np.random.default_rng(seed)
    content = {}
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            batch = {
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                label_key: [int(v) for v in rng.integers(0, classes, per_batch)],
                b"batch_label": member.encode(),
            }
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{top}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            content[member] = batch
    return content


@pytest.fixture(params=["cifar10", "cifar100"])
def tiny_cifar(request, tmp_path, monkeypatch):
    """The registered dataset, its checksum swapped for the tiny archive's (the format is what is tested)."""
    official = DATASETS.get(request.param)
    folder = tmp_path / official.folder
    folder.mkdir()
    archive = folder / official.archive
    members = [m for split in official.splits for m in official.members[split]]
    content = _write_archive(archive, official.top, members, official.label_key, official.num_classes)
    tiny = dataclasses.replace(official, sha256={official.archive: hashlib.sha256(archive.read_bytes()).hexdigest()})
    monkeypatch.setitem(DATASETS._items, request.param, tiny)
    return request.param, tiny, tmp_path, content


def test_cifar_archive_loads_every_batch_of_a_split_in_order(tiny_cifar):
    name, ds, root, content = tiny_cifar
    train, test = load_split(name, "train", root), load_split(name, "test", root)
    n_train = 6 * len(ds.members["train"])
    assert train.x.shape == (n_train, 3, 32, 32) and test.x.shape == (6, 3, 32, 32)
    first = content[ds.members["train"][0]]
    # row layout: 1024 red, then green, then blue values, each a 32×32 image in row-major order
    pixel = first[b"data"][2].reshape(3, 32, 32)[1, 5, 7] / 255.0
    expected = (pixel - ds.mean[1]) / ds.std[1]
    assert float(train.x[2, 1, 5, 7]) == pytest.approx(expected, abs=1e-5)
    labels = [v for m in ds.members["train"] for v in content[m][ds.label_key]]
    assert train.y.tolist() == labels and train.y.dtype == torch.int64


def test_official_checksums_guard_the_real_archives(tiny_cifar, monkeypatch):
    name, ds, root, _ = tiny_cifar
    monkeypatch.undo()  # the registered dataset again, with the official SHA-256
    with pytest.raises(
        DataError, match=f"truncated or corrupted.*expected {DATASETS.get(name).sha256[ds.archive][:8]}"
    ):
        load_split(name, "test", root)


def test_missing_archive_names_the_file_and_how_to_supply_it(tmp_path):
    with pytest.raises(DataError) as exc:
        load_split("cifar10", "train", tmp_path)
    msg = str(exc.value)
    assert "cifar-10-python.tar.gz" in msg and "not found" in msg and data.DATA_ENV in msg and "6d958be0" in msg


def test_an_archive_without_the_expected_batches_is_refused(tmp_path, monkeypatch):
    official = DATASETS.get("cifar10")
    (tmp_path / official.folder).mkdir()
    archive = tmp_path / official.folder / official.archive
    _write_archive(archive, official.top, ["data_batch_1"], b"labels", 10)
    tiny = dataclasses.replace(official, sha256={official.archive: hashlib.sha256(archive.read_bytes()).hexdigest()})
    monkeypatch.setitem(DATASETS._items, "cifar10", tiny)
    with pytest.raises(DataError, match="has no file cifar-10-batches-py/data_batch_2"):
        load_split("cifar10", "train", tmp_path)


def test_crop_flip_shifts_and_mirrors_every_image_within_the_padding():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1  # no zeros inside
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        found = [
            (dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[:, dy : dy + 8, dx : dx + 8]))
        ]  # fmt: skip
        assert found, "every output must be a crop of the padded image, mirrored or not"


def test_augmented_batches_depend_on_seed_and_epoch_only():
    split = Split(torch.randn(20, 3, 8, 8), torch.arange(20))
    a = [x for x, _ in Batches(split, 8, True, seed=1, augment="crop-flip").epoch(3)]
    b = [x for x, _ in Batches(split, 8, True, seed=1, augment="crop-flip").epoch(3)]
    c = [x for x, _ in Batches(split, 8, True, seed=1, augment="crop-flip").epoch(4)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    with pytest.raises(DataError, match="needs images"):
        Batches(Split(torch.randn(4, 5), torch.arange(4)), 2, True, augment="crop-flip")


@pytest.mark.parametrize("method", ["game", "magnitude-l1"])
def test_filter_pruning_of_a_resnet_runs_end_to_end_on_cifar_files(tiny_cifar, tmp_path, method):
    from equiprune.config import parse_config
    from equiprune.experiments.loop import run

    name, _, root, _ = tiny_cifar
    settings = "gamma = 0.05\nlr_s = 0.1" if method == "game" else "budget = 0.5"
    cfg = parse_config(f"""
seed = 0
device = "cpu"
[data]
dataset = "{name}"
root = "{root}"
batch_size = 8
augment = "crop-flip"
[model]
name = "resnet20"
width = 0.25
[train]
epochs = 2
finetune_epochs = 1
[method]
name = "{method}"
{settings}
""")
    results = run(cfg, tmp_path / "run", quiet=True)
    assert results["players"] == "filter"
    assert len(results["total"]) == 12  # 3 coupled stages + 9 inner convolutions
    if method == "magnitude-l1":  # the budget, to the player
        assert sum(results["kept"].values()) == round(0.5 * sum(results["total"].values()))
        assert results["macs_after"] < results["macs_before"] and results["params_after"] < results["params_before"]
    else:  # a few steps on a few images: the game ran and compacted (its pruning power is measured elsewhere)
        assert results["undecided_fraction"] is not None and results["macs_after"] <= results["macs_before"]
    small = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, DATASETS.get(name).num_classes)

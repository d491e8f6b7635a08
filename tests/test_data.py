"""Dataset loading: local directory, environment variable, cache, download; every failure is clear."""

import gzip
import hashlib
import http.server
import shutil
import struct
import threading
from functools import partial

import numpy as np
import pytest

from equiprune import data
from equiprune.data import DATASETS, Batches, IdxDataset, load_split, read_idx, resolve_file
from equiprune.errors import DataError


def test_real_mnist_loads_normalised_with_checksums(data_root):
    test = load_split("mnist", "test", data_root)
    assert test.x.shape == (10000, 1, 28, 28) and test.y.shape == (10000,)
    assert abs(float(test.x.mean())) < 0.05 and 0.9 < float(test.x.std()) < 1.1
    assert sorted(set(test.y.tolist())) == list(range(10))


def test_env_variable_names_the_data_directory(data_root, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_root))
    assert resolve_file(DATASETS.get("fashion-mnist"), "t10k-labels-idx1-ubyte.gz").parent.name == "fashion-mnist"


def test_missing_file_names_file_and_remedy(tmp_path):
    with pytest.raises(DataError) as exc:
        load_split("mnist", "test", tmp_path)
    msg = str(exc.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "not found" in msg and data.DATA_ENV in msg
    assert "8d422c7b" in msg  # the expected checksum, so the user can check their copy


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_corrupted_file_is_refused(tmp_path, data_root, damage):
    (tmp_path / "mnist").mkdir()
    src = data_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dst = tmp_path / "mnist" / src.name
    raw = bytearray(src.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0xFF
    dst.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"truncated or corrupted.*expected f7ae60f9"):
        resolve_file(DATASETS.get("mnist"), src.name, tmp_path)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(Exception, match="unknown dataset 'cifar-7'.*fashion-mnist"):
        load_split("cifar-7", "train", tmp_path)
    with pytest.raises(DataError, match="no split 'valid'"):
        load_split("mnist", "valid", tmp_path)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_read_idx_parses_and_checks_the_header(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a.gz"
    p.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(p), arr)
    p.write_bytes(gzip.compress(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 5, 5) + b"\x00" * 7))
    with pytest.raises(DataError, match="header says shape"):
        read_idx(p)


@pytest.fixture
def local_mirror(tmp_path):
    """A tiny dataset served over HTTP on the loopback interface, as a stand-in mirror."""
    served = tmp_path / "served"
    served.mkdir()
    files = {"tiny-images.gz": _idx_bytes(np.zeros((3, 2, 2))), "tiny-labels.gz": _idx_bytes(np.array([0, 1, 2]))}
    for name, raw in files.items():
        (served / name).write_bytes(raw)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ds = IdxDataset(
        name="tiny", folder="tiny", files={"train": tuple(files)},
        sha256={n: hashlib.sha256(r).hexdigest() for n, r in files.items()},
        mirrors=(f"http://127.0.0.1:{server.server_address[1]}/",), mean=0.0, std=1.0,
    )  # fmt: skip
    yield ds, served
    server.shutdown()


def test_download_into_cache_verifies_and_reuses(local_mirror, tmp_path, monkeypatch):
    ds, served = local_mirror
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    path = resolve_file(ds, "tiny-labels.gz")
    assert path == tmp_path / "cache" / "tiny" / "tiny-labels.gz"
    np.testing.assert_array_equal(read_idx(path), [0, 1, 2])
    shutil.rmtree(served)  # the mirror is gone: the cached copy must be used
    assert resolve_file(ds, "tiny-labels.gz") == path


def test_download_with_bad_checksum_keeps_nothing(local_mirror, tmp_path, monkeypatch):
    ds, served = local_mirror
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    (served / "tiny-labels.gz").write_bytes(b"not the file")
    with pytest.raises(DataError, match="checksum mismatch"):
        resolve_file(ds, "tiny-labels.gz")
    assert not any((tmp_path / "cache" / "tiny").iterdir())


def test_unreachable_mirror_says_how_to_supply_the_file(tmp_path, monkeypatch):
    ds = DATASETS.get("mnist")
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"could not download mnist/t10k-labels.*EQUIPRUNE_DATA"):
        resolve_file(ds, "t10k-labels-idx1-ubyte.gz", mirrors=("http://127.0.0.1:9/",))


def test_batches_depend_on_seed_and_epoch_only():
    import torch

    split = data.Split(torch.arange(10.0)[:, None], torch.arange(10))
    b = Batches(split, batch_size=4, shuffle=True, seed=3)
    first = [y.tolist() for _, y in b.epoch(2)]
    assert [y.tolist() for _, y in Batches(split, 4, True, seed=3).epoch(2)] == first
    assert [y.tolist() for _, y in b.epoch(1)] != first
    assert sorted(sum(first, [])) == list(range(10)) and len(b) == 3
    shards = [sum((y.tolist() for _, y in Batches(split, 4, True, 3, rank=r, world_size=2).epoch(2)), [])
              for r in range(2)]  # fmt: skip
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


def test_the_ranks_batches_of_a_step_together_are_one_process_batch_of_their_sum():
    import torch

    split = data.Split(torch.arange(40.0)[:, None], torch.arange(40))
    one = [set(y.tolist()) for _, y in Batches(split, 8, True, seed=5).epoch(1)]
    ranks = [[y.tolist() for _, y in Batches(split, 4, True, 5, rank=r, world_size=2).epoch(1)] for r in range(2)]
    assert [set(a) | set(b) for a, b in zip(*ranks)] == one
    assert all(len(a) == len(b) == 4 for a, b in zip(*ranks))

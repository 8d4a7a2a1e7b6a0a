"""``mnist``, ``svhn``, ``cifar10``, ``cifar100`` on tiny files written here in each dataset's on-disk format.

Offline: no test touches the network (downloads are sent to a patched ``urllib.request.urlopen`` that refuses).
The expected tensors are built from the images *before* they are encoded into the file format, so a loader that
swaps axes, channels or rows, or forgets the /255, fails.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from robust_core.config import DataConfig, load_run_config
from robust_core.data import DataMissingError, prepare_data
from robust_core.data.sources.torchvision_sets import CorruptDataError, write_idx, write_pickle
from robust_core.data.tiny import write_in_format
from robust_core.models import build_model
from robust_core.registry import DATASETS

NAMES = ["mnist", "svhn", "cifar10", "cifar100"]
N_TEST = 10
N_TRAIN = {"mnist": 20, "svhn": 20, "cifar10": 20, "cifar100": 200}  # cifar100: 2 per class so splits balance
FILES = {  # relative to root: every file a loader must name when it is missing
    "mnist": ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
              "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
}


def _images(rng: np.random.Generator, n: int, c: int, hw: int) -> np.ndarray:
    """Random uint8 images (N, C, H, W) that contain both extremes 0 and 255."""
    x = rng.integers(0, 256, size=(n, c, hw, hw), dtype=np.uint8)
    x.flat[0], x.flat[-1] = 0, 255
    return x


def write_tiny(name: str, root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny copy of dataset ``name`` under ``root``; return the uint8 NCHW images and the 0-based labels."""
    rng = np.random.default_rng(seed)
    n_tr, k = N_TRAIN[name], DATASETS.get(name).info.num_classes
    c, hw = (1, 28) if name == "mnist" else (3, 32)
    x_tr, x_te = _images(rng, n_tr, c, hw), _images(rng, N_TEST, c, hw)
    y_tr, y_te = np.arange(n_tr) % k, rng.integers(0, k, N_TEST)
    write_in_format(name, root, x_tr, y_tr, x_te, y_te)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


@pytest.fixture
def offline(monkeypatch):
    """Make every urllib request fail as with no network; returns the list of URLs torchvision tried."""
    tried: list[str] = []

    def refuse(req, *args, **kwargs):
        tried.append(getattr(req, "full_url", req))
        raise urllib.error.URLError("no network (refused by the test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


# --------------------------------------------------------------------------------------------------- reading
def test_all_four_are_registered_with_sane_infos():
    for name, k, shape in [("mnist", 10, (1, 28, 28)), ("svhn", 10, (3, 32, 32)), ("cifar10", 10, (3, 32, 32)),
                           ("cifar100", 100, (3, 32, 32))]:
        info = DATASETS.get(name).info
        assert (info.name, info.num_classes, info.shape) == (name, k, shape)
        assert len(info.mean) == len(info.std) == shape[0]
        assert all(0 < m < 1 for m in info.mean) and all(0 < s < 0.5 for s in info.std)


@pytest.mark.parametrize("name", NAMES)
def test_loader_returns_exact_pixels_and_labels(name, tmp_path):
    want = write_tiny(name, tmp_path)
    a = DATASETS.get(name).load(tmp_path, False)
    for split in ("train", "test"):
        x, y = getattr(a, f"x_{split}"), getattr(a, f"y_{split}")
        x_want = torch.from_numpy(want[f"x_{split}"]).to(torch.float64) / 255
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(x_want), *DATASETS.get(name).info.shape) and y.shape == (len(x_want),)
        assert x.is_contiguous()
        assert torch.equal(x, x_want.to(torch.float32))  # pixel / 255, same place, every pixel
        assert torch.equal(y, torch.from_numpy(want[f"y_{split}"]).long())
        assert x.min() == 0 or split == "test"  # the extremes written by _images survive
    assert a.x_train.min() == 0 and a.x_train.max() == 1


def test_svhn_label_10_becomes_0(tmp_path):
    want = write_tiny("svhn", tmp_path)
    stored = scipy.io.loadmat(tmp_path / "train_32x32.mat")["y"].reshape(-1)
    assert (stored == 10).sum() == (want["y_train"] == 0).sum() > 0 and stored.min() == 1  # the file has no 0
    y = DATASETS.get("svhn").load(tmp_path, False).y_train
    assert torch.equal(y == 0, torch.from_numpy(stored == 10)) and int(y.max()) == 9


@pytest.mark.parametrize("name", NAMES)
def test_prepare_data_on_tiny_files(name, tmp_path):
    write_tiny(name, tmp_path)
    k = DATASETS.get(name).info.num_classes
    n_val = k  # one per class
    d = prepare_data(DataConfig(name=name, root=str(tmp_path), download=False, n_val=n_val, split_seed=3))
    x_val, y_val = d.val
    x_lab, y_lab = d.labeled
    assert len(x_val) == n_val and sorted(y_val.tolist()) == list(range(k))
    assert len(x_lab) == N_TRAIN[name] - n_val and len(d.unlabeled) == 0
    assert not set(d.splits.val.tolist()) & set(d.splits.labeled.tolist())
    assert len(d.test[0]) == N_TEST and d.info is DATASETS.get(name).info


def test_runconfig_accepts_cifar10_with_convlarge(tmp_path):
    cfg = load_run_config(overrides=["data.name=cifar10", "model.name=convlarge", "model.params.width=8",
                                     f"data.root={tmp_path}", "data.download=false"])
    assert (cfg.data.name, cfg.model.name) == ("cifar10", "convlarge")
    write_tiny("cifar10", tmp_path)
    d = prepare_data(cfg.data.model_copy(update={"n_val": 10}))
    model = build_model(cfg.model, d.info).eval()
    with torch.no_grad():
        logits = model(d.test[0][:4])
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------- missing files
def _assert_names_everything(msg: str, name: str, root: Path) -> None:
    for f in FILES[name]:
        assert str(root.resolve() / f) in msg, f"{f} not named in:\n{msg}"
    assert str((root.resolve() / FILES[name][0]).parent) in msg  # the folder searched
    assert "data.root" in msg and "data.download=true" in msg  # how to fix it


@pytest.mark.parametrize("name", NAMES)
def test_missing_files_without_download(name, tmp_path, offline):
    with pytest.raises(DataMissingError) as e:
        DATASETS.get(name).load(tmp_path, False)
    msg = str(e.value)
    _assert_names_everything(msg, name, tmp_path)
    assert "download is off" in msg and msg.count("<- missing") == len(FILES[name])
    assert offline == []  # download=False never touches the network
    assert not any(tmp_path.iterdir())  # nor creates folders


@pytest.mark.parametrize("name", NAMES)
def test_download_while_offline_raises_data_missing(name, tmp_path, offline):
    with pytest.raises(DataMissingError) as e:
        prepare_data(DataConfig(name=name, root=str(tmp_path), download=True, n_val=10))
    msg = str(e.value)
    _assert_names_everything(msg, name, tmp_path)
    assert "download failed" in msg and "no network (refused by the test)" in msg
    assert len(offline) >= 1  # torchvision really tried to download (and was refused)
    cause = e.value.__cause__  # chained, not swallowed
    assert isinstance(cause, (urllib.error.URLError, RuntimeError))  # MNIST's mirrors loop wraps it in RuntimeError


def test_only_the_absent_file_is_marked_missing(tmp_path):
    write_tiny("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataMissingError) as e:
        DATASETS.get("cifar10").load(tmp_path, False)
    msg = str(e.value)
    assert "1 of 6 expected files are missing" in msg
    assert "data_batch_3   <- missing" in msg and "data_batch_2   <- missing" not in msg


def test_download_is_not_attempted_when_files_are_present(tmp_path, offline):
    write_tiny("svhn", tmp_path)
    a = DATASETS.get("svhn").load(tmp_path, True)
    assert offline == [] and len(a.x_train) == N_TRAIN["svhn"]


# ---------------------------------------------------------------------------------------------- corrupt files
CORRUPT = {  # name -> file to damage
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "svhn": "test_32x32.mat",
    "cifar10": "cifar-10-batches-py/data_batch_2",
    "cifar100": "cifar-100-python/train",
}


@pytest.mark.parametrize("name", NAMES)
def test_truncated_file_raises_naming_it(name, tmp_path):
    write_tiny(name, tmp_path)
    path = tmp_path / CORRUPT[name]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDataError) as e:
        DATASETS.get(name).load(tmp_path, False)
    assert str(path.resolve()) in str(e.value) and "truncated" in str(e.value)


def test_mnist_wrong_magic_and_label_count(tmp_path):
    write_tiny("mnist", tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte", 2049, np.arange(N_TEST + 1) % 10)  # one label too many
    with pytest.raises(CorruptDataError, match=f"{N_TEST + 1} labels for the {N_TEST} images"):
        DATASETS.get("mnist").load(tmp_path, False)
    write_idx(raw / "train-labels-idx1-ubyte", 2051, np.zeros(N_TRAIN["mnist"], dtype=np.uint8))  # images' magic
    with pytest.raises(CorruptDataError, match="idx magic number 2051, expected 2049"):
        DATASETS.get("mnist").load(tmp_path, False)


def test_cifar_label_out_of_range_and_wrong_shape(tmp_path):
    write_tiny("cifar10", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "test_batch", {b"labels": [10] * 2, b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(CorruptDataError, match=r"labels span 10\.\.10, expected 0\.\.9"):
        DATASETS.get("cifar10").load(tmp_path, False)
    write_pickle(folder / "test_batch", {b"labels": [1], b"data": np.zeros((1, 1024), np.uint8)})
    with pytest.raises(CorruptDataError, match=r"shape \(1, 1024\), expected uint8 of shape \(N, 3072\)"):
        DATASETS.get("cifar10").load(tmp_path, False)


def test_svhn_label_0_in_file_is_rejected(tmp_path):
    write_tiny("svhn", tmp_path)
    x = np.zeros((32, 32, 3, 2), np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(CorruptDataError, match=r"spans 0\.\.3, expected 1\.\.10"):
        DATASETS.get("svhn").load(tmp_path, False)

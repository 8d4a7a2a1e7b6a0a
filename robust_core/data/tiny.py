"""Tiny *learnable* stand-ins for MNIST, SVHN, CIFAR-10 and CIFAR-100, written in each dataset's own on-disk format
(the files torchvision reads), so the real loaders run unchanged. Used by the ``smoke`` pipeline profile and tests.

Each class has a fixed random template; an image is its class template plus noise, so a small model learns it in a
few steps (random pixels would make every accuracy ≈ chance and hide bugs that swap labels). Not real data: numbers
on it only show that a code path runs.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

# (train, test) examples; CIFAR-100 keeps 4 training images per class so class-balanced splits exist
SIZES = {"mnist": (200, 50), "svhn": (200, 50), "cifar10": (200, 50), "cifar100": (400, 100)}
_CLASSES = {"mnist": 10, "svhn": 10, "cifar10": 10, "cifar100": 100}
MARKER = ".robust-sweep-tiny"


def _images(rng: np.random.Generator, y: np.ndarray, templates: np.ndarray) -> np.ndarray:
    noise = rng.normal(0, 40, size=(len(y), *templates.shape[1:]))
    return np.clip(templates[y] + noise, 0, 255).astype(np.uint8)


def write_idx(path: Path, magic: int, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f">{1 + a.ndim}I", magic, *a.shape) + a.astype(np.uint8).tobytes())


def write_pickle(path: Path, d: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(d, f)


def write_tiny_dataset(name: str, root: str | Path, seed: int = 0) -> Path:
    """Write tiny ``name`` under ``root`` (idempotent: an existing tiny copy is kept). Refuses to overwrite real
    files: only writes where the dataset's files are absent or were written by this function."""
    root = Path(root)
    if name not in SIZES:
        raise ValueError(f"no tiny version of {name!r}; have {sorted(SIZES)}")
    marker = root / f"{MARKER}-{name}"
    if marker.exists():
        return root
    sub = {"mnist": root / "MNIST", "svhn": root / "train_32x32.mat", "cifar10": root / "cifar-10-batches-py",
           "cifar100": root / "cifar-100-python"}[name]
    if sub.exists():
        raise FileExistsError(f"{sub} exists and was not written by write_tiny_dataset; refusing to overwrite what "
                              f"may be the real {name} (use another data_root for the smoke profile)")
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    n_tr, n_te = SIZES[name]
    k = _CLASSES[name]
    c, hw = (1, 28) if name == "mnist" else (3, 32)
    templates = rng.uniform(30, 225, size=(k, c, hw, hw))
    y_tr, y_te = np.arange(n_tr) % k, np.arange(n_te) % k
    x_tr, x_te = _images(rng, y_tr, templates), _images(rng, y_te, templates)
    write_in_format(name, root, x_tr, y_tr, x_te, y_te)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("tiny generated data, not the real dataset\n")
    return root


def write_in_format(name: str, root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray,
                    y_te: np.ndarray) -> None:
    """Write uint8 NCHW images and 0-based labels as the files torchvision reads for ``name`` under ``root``."""
    n_tr, n_te = len(y_tr), len(y_te)
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        for split, x, y in (("train", x_tr, y_tr), ("t10k", x_te, y_te)):
            write_idx(raw / f"{split}-images-idx3-ubyte", 2051, x[:, 0])
            write_idx(raw / f"{split}-labels-idx1-ubyte", 2049, y)
    elif name == "svhn":
        import scipy.io

        root.mkdir(parents=True, exist_ok=True)
        for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            y_file = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)  # the file stores digit 0 as 10
            scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y_file})
    elif name == "cifar10":
        folder = root / "cifar-10-batches-py"
        for i, chunk in enumerate(np.array_split(np.arange(n_tr), 5), start=1):
            write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"training batch",
                                                      b"labels": y_tr[chunk].tolist(),
                                                      b"data": x_tr[chunk].reshape(len(chunk), -1)})
        write_pickle(folder / "test_batch", {b"labels": y_te.tolist(), b"data": x_te.reshape(n_te, -1)})
    else:
        folder = root / "cifar-100-python"
        for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            write_pickle(folder / split, {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                                          "data": x.reshape(len(x), -1)})

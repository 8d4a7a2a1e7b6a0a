"""Tiny *learnable* stand-ins for the datasets whose source defines a ``TinyFormat`` (MNIST, SVHN, CIFAR-10 and
CIFAR-100), written in each dataset's own on-disk format by the source's own writer, so the real loaders run
unchanged. Used by the ``smoke`` pipeline profile and tests.

Each class has a fixed random template; an image is its class template plus noise, so a small model learns it in a
few steps (random pixels would make every accuracy ≈ chance and hide bugs that swap labels). Not real data: numbers
on it only show that a code path runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MARKER = ".robust-sweep-tiny"


def tiny_datasets() -> list[str]:
    """Registered datasets that have a tiny stand-in."""
    from robust_core.registry import DATASETS

    return [n for n in DATASETS.names() if DATASETS.get(n).tiny is not None]


def _tiny(name: str):
    from robust_core.registry import DATASETS

    src = DATASETS.get(name)
    if src.tiny is None:
        raise ValueError(f"no tiny version of {name!r}; have {tiny_datasets()}")
    return src


def _images(rng: np.random.Generator, y: np.ndarray, templates: np.ndarray) -> np.ndarray:
    noise = rng.normal(0, 40, size=(len(y), *templates.shape[1:]))
    return np.clip(templates[y] + noise, 0, 255).astype(np.uint8)


def write_tiny_dataset(name: str, root: str | Path, seed: int = 0) -> Path:
    """Write tiny ``name`` under ``root`` (idempotent: an existing tiny copy is kept). Refuses to overwrite real
    files: only writes where the dataset's files are absent or were written by this function."""
    root = Path(root)
    src = _tiny(name)
    marker = root / f"{MARKER}-{name}"
    if marker.exists():
        return root
    guard = root / src.tiny.guard
    if guard.exists():
        raise FileExistsError(f"{guard} exists and was not written by write_tiny_dataset; refusing to overwrite what "
                              f"may be the real {name} (use another data_root for the smoke profile)")
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    n_tr, n_te = src.tiny.sizes
    k = src.info.num_classes
    templates = rng.uniform(30, 225, size=(k, *src.info.shape))
    y_tr, y_te = np.arange(n_tr) % k, np.arange(n_te) % k
    x_tr, x_te = _images(rng, y_tr, templates), _images(rng, y_te, templates)
    write_in_format(name, root, x_tr, y_tr, x_te, y_te)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("tiny generated data, not the real dataset\n")
    return root


def write_in_format(name: str, root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray,
                    y_te: np.ndarray) -> None:
    """Write uint8 NCHW images and 0-based labels as the files the loader of ``name`` reads under ``root``."""
    _tiny(name).tiny.write(Path(root), x_tr, y_tr, x_te, y_te)

"""Dataset sources: what every registered dataset provides — how to load it and the facts other layers need
(display name, sizes, default evaluation radii, how to write a tiny stand-in), so that adding a dataset is one file
under ``robust_core/data/sources/`` and no other module keeps a table keyed by dataset name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # C, H, W of one input, values in [0, 1]
    mean: tuple[float, ...]  # per-channel, applied inside the model (so ε stays in pixel units)
    std: tuple[float, ...]


@dataclass(frozen=True)
class Arrays:
    """A whole dataset as tensors: ``x`` float32 in [0, 1], shape (N, C, H, W); ``y`` int64, shape (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class DataMissingError(FileNotFoundError):
    """Dataset files are absent and could not be downloaded; the message names the files and the folder."""


@dataclass(frozen=True)
class EvalDefaults:
    """A dataset's default evaluation radii and curve grids, pixel units of inputs in [0, 1] (8/255 stays 8/255).

    linf_eps / l2_eps: the threat model's radius for L∞ / L2 attacks. linf_grid / l2_grid: the radii of the
    accuracy-vs-ε curves (0 = clean). An evaluation's settings override any of them. fixed_set_norms: the norms of
    the one-step attacks that make Shaham et al.'s fixed adversarial set on this kind of data (default L∞ and L2,
    their CIFAR-10 set A_cifar10, §5.2; MNIST adds L1, A_mnist, §5.1)."""

    linf_eps: float
    l2_eps: float
    linf_grid: tuple[float, ...]
    l2_grid: tuple[float, ...]
    fixed_set_norms: tuple[str, ...] = ("linf", "l2")


# (x_train, y_train, x_test, y_test) as uint8 NCHW images and 0-based int labels -> files under root
TinyWriter = Callable[[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class TinyFormat:
    """How ``robust_core.data.tiny`` writes a tiny learnable stand-in of this dataset in its own on-disk format.

    sizes: (train, test) examples. guard: a path under the data root whose presence means the real files may be
    there (the tiny writer never writes over it). write: writes the arrays as the files the loader reads."""

    sizes: tuple[int, int]
    guard: str
    write: TinyWriter


@dataclass(frozen=True)
class Source:
    """A registered dataset: static ``info`` (known without loading), a ``load(root, download)`` function and its
    facts. display: name in table headers (e.g. "CIFAR-10"). train_size / test_size: examples in the loaded
    training / test arrays (for cost estimates before anything is loaded). eval: default evaluation radii and grids
    (required: a new dataset states its threat model instead of inheriting another's). tiny: how to write a tiny
    stand-in (None: the dataset has none, e.g. when it ships with a package)."""

    info: DatasetInfo
    load: Callable[[Path, bool], Arrays]
    display: str
    train_size: int
    test_size: int
    eval: EvalDefaults
    description: str = ""
    tiny: TinyFormat | None = None

"""Dataset sources: what every registered dataset provides."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
class Source:
    """A registered dataset: static ``info`` (known without loading) and a ``load(root, download)`` function."""

    info: DatasetInfo
    load: Callable[[Path, bool], Arrays]
    description: str = ""

"""Datasets (registry ``DATASETS``) and the prepared, split data a run trains on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robust_core.data.base import Arrays, DataMissingError, DatasetInfo, Source
from robust_core.data.splits import Splits, make_splits
from robust_core.registry import DATASETS

__all__ = ["Arrays", "DataMissingError", "DatasetInfo", "PreparedData", "Source", "Splits", "make_splits",
           "prepare_data", "load_arrays"]


@dataclass(frozen=True)
class PreparedData:
    info: DatasetInfo
    arrays: Arrays
    splits: Splits

    @property
    def labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(self.splits.labeled)
        return self.arrays.x_train[i], self.arrays.y_train[i]

    @property
    def unlabeled(self) -> torch.Tensor:
        return self.arrays.x_train[torch.from_numpy(self.splits.unlabeled)]

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(self.splits.val)
        return self.arrays.x_train[i], self.arrays.y_train[i]

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.arrays.x_test, self.arrays.y_test


def load_arrays(name: str, root: str | Path = "./data", download: bool = True) -> Arrays:
    src: Source = DATASETS.get(name)
    return src.load(Path(root).expanduser(), download)


def prepare_data(cfg) -> PreparedData:
    """Load the dataset named in a ``DataConfig`` and split it with ``cfg.split_seed``."""
    src: Source = DATASETS.get(cfg.name)
    arrays = src.load(Path(cfg.root).expanduser(), cfg.download)
    splits = make_splits(arrays.y_train, src.info.num_classes, cfg.n_val, cfg.n_labeled, cfg.split_seed)
    return PreparedData(src.info, arrays, splits)

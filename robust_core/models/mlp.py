"""MLP of VAT (Miyato et al., TPAMI 2018) and FAT for MNIST: 1200-600-300-150 hidden units, BN, ReLU."""
from __future__ import annotations

import math

from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


@MODELS.register("mlp")
class MLP(Classifier):
    def __init__(self, info: DatasetInfo, hidden: tuple[int, ...] = (1200, 600, 300, 150), batch_norm: bool = True):
        super().__init__(info)
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(info.shape)
        for h in hidden:
            layers += [nn.Linear(d, h, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = d
        self.head = nn.Linear(d, info.num_classes)

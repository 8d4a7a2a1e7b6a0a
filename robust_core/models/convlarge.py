"""Conv-Large of VAT (Miyato et al., TPAMI 2018, table 4) and FAT, used for SVHN, CIFAR-10 and CIFAR-100.

3×[3×3 conv 128] → maxpool → dropout → 3×[3×3 conv 256] → maxpool → dropout → 3×3 conv 512 (valid) →
1×1 conv 256 → 1×1 conv 128 → global average pool → linear; BN + LeakyReLU(0.1) after every conv.
"""
from __future__ import annotations

from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


def _block(cin: int, cout: int, k: int, pad: int, slope: float) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(slope)]


@MODELS.register("convlarge")
class ConvLarge(Classifier):
    def __init__(self, info: DatasetInfo, width: int = 128, dropout: float = 0.5, slope: float = 0.1):
        super().__init__(info)
        w = width
        c = info.shape[0]
        layers: list[nn.Module] = []
        layers += _block(c, w, 3, 1, slope) + _block(w, w, 3, 1, slope) + _block(w, w, 3, 1, slope)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _block(w, 2 * w, 3, 1, slope) + _block(2 * w, 2 * w, 3, 1, slope) + _block(2 * w, 2 * w, 3, 1, slope)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _block(2 * w, 4 * w, 3, 0, slope) + _block(4 * w, 2 * w, 1, 0, slope) + _block(2 * w, w, 1, 0, slope)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = w
        self.head = nn.Linear(w, info.num_classes)

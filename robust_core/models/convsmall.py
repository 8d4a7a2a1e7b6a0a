"""The CNNs of FAT for SVHN and CIFAR-10 (Kim, Choi & Kim, "Understanding and Improving Virtual Adversarial
Training", arXiv:1909.06737, appendix 7.4.2, table 4; ``../shared/papers/fat.txt``; VAT's "Conv-Small", Miyato et
al., TPAMI 2018): with w = 64 (SVHN) or 96 (CIFAR-10),

    3×[3×3 conv w] → 2×2 max-pool, stride 2 → dropout 0.5 → 3×[3×3 conv 2w] → 2×2 max-pool → dropout 0.5 →
    3×3 conv 2w (valid: 8×8 → 6×6) → 1×1 conv 2w → 1×1 conv 2w → global average pool → dense 2w → C,

with leaky ReLU after every conv, and "all the convolutional layers and fully-connected layers are followed by BN":
BN after every conv and after the dense layer (VAT's ``top_bn``). The leaky-ReLU slope is not in the paper; 0.1 as
in VAT's code (and ``convlarge``). ``features`` is the pooled 2w-dim vector, ``head`` the dense layer + its BN (an
affine map in eval mode). FAT's CIFAR-100 network is ``convlarge``.

Args: width: w above, default 96 (CIFAR-10; 64 for SVHN). dropout: 0.5. slope: leaky-ReLU slope, 0.1.
top_bn: BN after the dense layer, default True (table 4).
"""
from __future__ import annotations

from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.models.convlarge import _block
from robust_core.registry import MODELS


@MODELS.register("convsmall")
class ConvSmall(Classifier):
    tiny_params = {"width": 8}

    def __init__(self, info: DatasetInfo, width: int = 96, dropout: float = 0.5, slope: float = 0.1,
                 top_bn: bool = True):
        super().__init__(info)
        if width < 1 or not 0 <= dropout < 1:
            raise ValueError(f"convsmall: width ≥ 1 and dropout in [0, 1) (got {width}, {dropout})")
        w, c = width, info.shape[0]
        layers: list[nn.Module] = _block(c, w, 3, 1, slope) + _block(w, w, 3, 1, slope) + _block(w, w, 3, 1, slope)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _block(w, 2 * w, 3, 1, slope) + _block(2 * w, 2 * w, 3, 1, slope) + _block(2 * w, 2 * w, 3, 1, slope)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _block(2 * w, 2 * w, 3, 0, slope) + _block(2 * w, 2 * w, 1, 0, slope) + _block(2 * w, 2 * w, 1, 0, slope)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = 2 * w
        dense = nn.Linear(2 * w, info.num_classes)
        self.head = nn.Sequential(dense, nn.BatchNorm1d(info.num_classes)) if top_bn else dense

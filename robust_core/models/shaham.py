"""The two networks of Shaham, Yamada & Negahban, "Understanding adversarial training: Increasing local stability of
supervised models through robust optimization" (Neurocomputing 2018, arXiv:1511.05432;
``../shared/papers/shaham-robust-optimization.txt``).

``shaham_cnn`` (§5.1, MNIST "baseline net"): "a convnet with ReLU units, two convolutional layers (containing 32 and
64 5×5 filters), max pooling (3×3 and 2×2) after every convolutional layer, and two fully connected layers (of sizes
200 and 10) on top": 5×5 conv 32 → ReLU → 3×3 max-pool → 5×5 conv 64 → ReLU → 2×2 max-pool → fc 200 → ReLU → fc 10.
The paper is silent on padding and pooling strides: we pad the convs to keep the size ('same', as the TensorFlow
MNIST tutorial net the field used) and pool with stride = window (the frameworks' default), so 28 → 9 → 4 and the fc
layer reads 64·4·4 = 1024 values. ``features`` is the 200-unit layer.

``vgg_bn_drop`` (§5.2, CIFAR-10 "baseline net"): "a variant of the VGG net, publicly available online at [26]"
(Zagoruyko, "92.45% on cifar-10 in torch", 2015: ``models/vgg_bn_drop.lua`` of szagoruyko/cifar.torch), i.e. 13
3×3 convs (pad 1) each followed by BN (eps 1e-3) and ReLU, in blocks of 64, 64 | 128, 128 | 256 ×3 | 512 ×3 | 512 ×3
channels with a 2×2 max-pool (ceil mode) after each block and dropout 0.3 after the first conv and 0.4 after every
other conv that is not last in its block; then dropout 0.5 → fc 512 → BN → ReLU → dropout 0.5 → fc 10. ``features``
is the 512-unit layer after its ReLU and the last dropout (dropout acts in training mode only), ``head`` the final
fc. (The paper disabled the batch-flip augmentation module; nothing here flips.) MSR (He) initialisation of the
convs, zero biases, as in that code.

Args (shaham_cnn): channels: the two convs' output channels, default (32, 64). hidden: fc units, default 200.
Args (vgg_bn_drop): width: channels of the first block (the others 2×, 4×, 8×, 8×), default 64. dropout: scale on
every dropout rate (1 = the code's 0.3/0.4/0.5), default 1.0.
"""
from __future__ import annotations

import torch
from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


def _flat_size(layers: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(layers(torch.zeros(1, *shape)).numel())


@MODELS.register("shaham_cnn")
class ShahamCNN(Classifier):
    tiny_params = {"channels": (4, 8), "hidden": 16}

    def __init__(self, info: DatasetInfo, channels: tuple[int, int] = (32, 64), hidden: int = 200):
        super().__init__(info)
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"shaham_cnn: channels must be two positive ints and hidden ≥ 1 (got {channels}, "
                             f"{hidden})")
        c1, c2 = channels
        convs = nn.Sequential(nn.Conv2d(info.shape[0], c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3),
                              nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.body = nn.Sequential(*convs, nn.Linear(_flat_size(convs, info.shape), hidden), nn.ReLU())
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, info.num_classes)


# (out channels, dropout after it) per conv, blocks separated by "M" (2×2 max-pool, ceil mode); widths in units of w
_VGG = [(1, 0.3), (1, 0), "M", (2, 0.4), (2, 0), "M", (4, 0.4), (4, 0.4), (4, 0), "M",
        (8, 0.4), (8, 0.4), (8, 0), "M", (8, 0.4), (8, 0.4), (8, 0), "M"]


@MODELS.register("vgg_bn_drop")
class VGGBNDrop(Classifier):
    tiny_params = {"width": 4}

    def __init__(self, info: DatasetInfo, width: int = 64, dropout: float = 1.0):
        super().__init__(info)
        if width < 1 or not 0 <= dropout * 0.5 < 1:
            raise ValueError(f"vgg_bn_drop: width ≥ 1 and dropout scale in [0, 2) (got {width}, {dropout})")
        layers: list[nn.Module] = []
        c = info.shape[0]
        for item in _VGG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            k, p = item
            layers += [nn.Conv2d(c, k * width, 3, 1, 1), nn.BatchNorm2d(k * width, eps=1e-3), nn.ReLU()]
            layers += [nn.Dropout(p * dropout)] if p else []
            c = k * width
        layers.append(nn.Flatten())
        d = _flat_size(nn.Sequential(*layers), info.shape)
        layers += [nn.Dropout(0.5 * dropout), nn.Linear(d, c), nn.BatchNorm1d(c), nn.ReLU(), nn.Dropout(0.5 * dropout)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.head = nn.Linear(c, info.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # MSR init as in the torch code: N(0, sqrt(2 / (k·k·out))), zero bias
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
                nn.init.zeros_(m.bias)

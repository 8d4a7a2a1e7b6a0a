"""ResNet-18 for 32×32 inputs (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; the
CIFAR adaptation used throughout the adversarial-robustness literature): 3×3 conv 64 (stride 1, no max-pool) → BN →
ReLU → four stages of two basic blocks (3×3 conv-BN-ReLU-3×3 conv-BN, plus the input — through a 1×1 conv + BN where
the shape changes — then ReLU) with 64, 128, 256, 512 channels and strides 1, 2, 2, 2 → global average pool →
linear. ``features`` is the pooled 512-dim vector. ATLD's transfer table (``../shared/papers/atld.txt`` §V-C, table
III) uses ResNet-18 "agent models" (vanilla and PGD-trained) as the sources of its black-box attacks.

Args: width: channels of the first stage (the others 2×, 4×, 8×), default 64. blocks: blocks per stage,
default (2, 2, 2, 2) (ResNet-18).
"""
from __future__ import annotations

import torch
from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.short(x))


@MODELS.register("resnet18")
class ResNet18(Classifier):
    tiny_params = {"width": 4, "blocks": (1, 1, 1, 1)}

    def __init__(self, info: DatasetInfo, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__(info)
        if width < 1 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"resnet18: width ≥ 1 and four stages of ≥ 1 blocks (got {width}, {blocks})")
        layers: list[nn.Module] = [nn.Conv2d(info.shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU()]
        c = width
        for s, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            for i in range(n):
                layers.append(ResBlock(c, width * 2 ** s, stride if i == 0 else 1))
                c = width * 2 ** s
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.head = nn.Linear(c, info.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

"""Wide residual network WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), the CIFAR variant:
3×3 conv 16 → 3 groups of n = (d − 4)/6 pre-activation basic blocks (BN-ReLU-conv3×3-[dropout]-BN-ReLU-conv3×3)
with 16k, 32k, 64k channels (strides 1, 2, 2; 1×1 conv shortcut where the shape changes) → BN-ReLU → global average
pool. ``features`` is that pooled 64k-dim vector; ``head`` the final linear layer. ATLD uses WRN-28-10.

Args: depth d (6n + 4, default 28), widen_factor k (default 10), dropout inside blocks (default 0.0).
"""
from __future__ import annotations

import torch
from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.short = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv2(self.drop(self.relu(self.bn2(self.conv1(o)))))
        return y + (x if self.short is None else self.short(o))


@MODELS.register("wrn")
class WideResNet(Classifier):
    def __init__(self, info: DatasetInfo, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
        super().__init__(info)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"wrn: depth={depth} is not 6n + 4 with n ≥ 1; use e.g. 10, 16, 22, 28, 34, 40")
        if widen_factor < 1:
            raise ValueError(f"wrn: widen_factor={widen_factor} must be an integer ≥ 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"wrn: dropout={dropout} must be in [0, 1)")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(info.shape[0], widths[0], 3, 1, 1, bias=False)]
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                layers.append(BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                         stride if i == 0 else 1, dropout))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = widths[3]
        self.head = nn.Linear(widths[3], info.num_classes)
        for m in self.modules():  # He init as in the authors' code
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

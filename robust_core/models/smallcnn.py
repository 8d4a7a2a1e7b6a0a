"""Small MNIST convnet of the TensorFlow MNIST tutorial: 5×5 conv 32 → 2×2 maxpool → 5×5 conv 64 → 2×2 maxpool →
fc 1024 → linear; ReLU after every hidden layer, 'same' padding. ``features`` is the 1024-unit layer. Works for any input size (the
flattened size is taken from ``info``). (Not Shaham et al.'s MNIST net, which pools 3×3 then 2×2 and has a 200-unit
fc layer: that is ``shaham_cnn``.)

Args: channels: output channels of the two convs, default (32, 64). hidden: units of the fc layer, default 1024.
"""
from __future__ import annotations

from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier
from robust_core.registry import MODELS


@MODELS.register("smallcnn")
class SmallCNN(Classifier):
    def __init__(self, info: DatasetInfo, channels: tuple[int, int] = (32, 64), hidden: int = 1024):
        super().__init__(info)
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"smallcnn: channels must be two positive ints and hidden ≥ 1 (got {channels}, {hidden})")
        c, h, w = info.shape
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        )
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, info.num_classes)

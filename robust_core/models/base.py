"""Classifier base: inputs in [0, 1], normalisation inside the model, ``features`` and ``head`` exposed."""
from __future__ import annotations

import torch
from torch import nn

from robust_core.data.base import DatasetInfo


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer, so attacks and ε live in pixel units."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """Every model: ``features(x)`` is the last hidden layer, ``head`` maps it to logits (a linear layer, or linear +
    BN for the nets with BN after their last dense layer: affine in eval mode), ``forward = head∘features``.

    Subclasses build ``self.body`` (normalised input -> features) and set ``self.feature_dim``.
    """

    feature_dim: int

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        self.info = info
        self.normalize = Normalize(info.mean, info.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

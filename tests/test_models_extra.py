"""smallcnn (Shaham et al. 2018) and wrn (Zagoruyko & Komodakis 2016): shapes, feature sizes, a WRN forward/backward."""
from __future__ import annotations

import pytest
import torch

from robust_core.data.base import DatasetInfo
from robust_core.models import Classifier
from robust_core.registry import MODELS

MNIST = DatasetInfo("gray28", 10, (1, 28, 28), (0.1307,), (0.3081,))
CIFAR = DatasetInfo("rgb32", 100, (3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def test_smallcnn_paper_shapes():
    torch.manual_seed(0)
    m = MODELS.get("smallcnn")(MNIST)
    assert isinstance(m, Classifier) and m.feature_dim == 1024
    convs = [l for l in m.body if isinstance(l, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    fc = [l for l in m.body if isinstance(l, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fc] == [(7 * 7 * 64, 1024)]
    x = torch.rand(3, 1, 28, 28)
    assert m(x).shape == (3, 10) and m.features(x).shape == (3, 1024)
    assert MODELS.get("smallcnn")(CIFAR, channels=(4, 8), hidden=16)(torch.rand(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("depth, k", [(10, 1), (16, 2)])
def test_wrn_shapes_and_backward(depth, k):
    torch.manual_seed(0)
    m = MODELS.get("wrn")(CIFAR, depth=depth, widen_factor=k)
    n_blocks = sum(type(b).__name__ == "BasicBlock" for b in m.modules())
    assert n_blocks == 3 * (depth - 4) // 6 and m.feature_dim == 64 * k
    x = torch.rand(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 100) and m.features(x).shape == (2, 64 * k)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_wrn_28_10_parameter_count():
    """WRN-28-10 has 36.5M parameters (paper, table 1), built without a forward pass."""
    n = sum(p.numel() for p in MODELS.get("wrn")(DatasetInfo("c10", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)).parameters())
    assert 36.4e6 < n < 36.6e6, n


@pytest.mark.parametrize("kw, match", [({"depth": 12}, "6n \\+ 4"), ({"depth": 4}, "6n \\+ 4"),
                                       ({"widen_factor": 0}, "widen_factor"), ({"dropout": 1.0}, "dropout")])
def test_wrn_bad_args_raise_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        MODELS.get("wrn")(CIFAR, **kw)

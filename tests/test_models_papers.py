"""The papers' networks, layer by layer against the papers' descriptions: Shaham et al. §5.1 (MNIST convnet) and §5.2
(the VGG of their ref. [26]), ResNet-18 (ATLD table III's transfer sources), FAT's table 4 CNNs for SVHN and CIFAR-10.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_core.data.base import DatasetInfo
from robust_core.modes import eval_mode
from robust_core.registry import MODELS

MNIST = DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,))
C10 = DatasetInfo("cifar10", 10, (3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def shapes_into(model, kind, x):
    """Input shape of every ``kind`` layer during a forward pass."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append(tuple(a[0].shape[1:]))) for m in of(model, kind)]
    with eval_mode(model), torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return seen, out


def test_shaham_mnist_convnet_is_section_5_1():
    """conv 32 5×5 → max-pool 3×3 → conv 64 5×5 → max-pool 2×2 → FC 200 → FC 10, ReLU units."""
    torch.manual_seed(0)
    m = MODELS.get("shaham_cnn")(MNIST)
    convs = of(m, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert [p.kernel_size for p in of(m, nn.MaxPool2d)] == [3, 2]
    assert [(f.in_features, f.out_features) for f in of(m, nn.Linear)] == [(64 * 4 * 4, 200), (200, 10)]
    assert len(of(m, nn.ReLU)) == 3 and not of(m, nn.BatchNorm2d) and not of(m, nn.Dropout)
    seen, out = shapes_into(m, nn.MaxPool2d, torch.rand(2, 1, 28, 28))
    assert seen == [(32, 28, 28), (64, 9, 9)] and out.shape == (2, 10)
    assert m.feature_dim == 200 and m.features(torch.rand(2, 1, 28, 28)).shape == (2, 200)


def test_shaham_cifar_vgg_is_zagoruykos_vgg_bn_drop():
    torch.manual_seed(0)
    m = MODELS.get("vgg_bn_drop")(C10)
    convs = of(m, nn.Conv2d)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    bns = of(m, nn.BatchNorm2d)
    assert len(bns) == 13 and all(b.eps == 1e-3 for b in bns)
    assert [d.p for d in of(m, nn.Dropout)] == [0.3] + [0.4] * 7 + [0.5, 0.5]
    seen, out = shapes_into(m, nn.MaxPool2d, torch.rand(2, 3, 32, 32))
    assert [s[1] for s in seen] == [32, 16, 8, 4, 2] and out.shape == (2, 10)  # 5 pools: 32 → 1
    assert [(f.in_features, f.out_features) for f in of(m, nn.Linear)] == [(512, 512), (512, 10)]
    assert [b.num_features for b in of(m, nn.BatchNorm1d)] == [512] and m.feature_dim == 512


def test_resnet18_structure():
    torch.manual_seed(0)
    m = MODELS.get("resnet18")(C10)
    blocks = [b for b in m.modules() if type(b).__name__ == "ResBlock"]
    assert len(blocks) == 8 and [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert len(of(m, nn.Conv2d)) == 1 + 16 + 3  # stem, two per block, three projection shortcuts
    assert m.feature_dim == 512 and m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    n = sum(p.numel() for p in m.parameters())
    assert 11.1e6 < n < 11.2e6, n  # the CIFAR ResNet-18: 11.2M parameters


@pytest.mark.parametrize("info, w", [(DatasetInfo("svhn", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3), 64), (C10, 96)])
def test_fat_table4_cnns(info, w):
    """SVHN: 64/128 channels, CIFAR-10: 96/192; 3×3 ×3, pool, dropout 0.5, 3×3 ×3, pool, dropout, 3×3 valid, 1×1,
    1×1, global average pool 6×6 → 1×1, dense → 10; BN after every conv and FC layer, leaky ReLU."""
    torch.manual_seed(0)
    m = MODELS.get("convsmall")(info, width=w)
    convs = of(m, nn.Conv2d)
    assert [c.out_channels for c in convs] == [w] * 3 + [2 * w] * 6
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1] and [c.padding[0] for c in convs] == [1] * 6 + [0] * 3
    assert len(of(m, nn.BatchNorm2d)) == 9 and len(of(m, nn.LeakyReLU)) == 9 and not of(m, nn.ReLU)
    assert [d.p for d in of(m, nn.Dropout)] == [0.5, 0.5]
    seen, out = shapes_into(m, nn.AdaptiveAvgPool2d, torch.rand(2, 3, 32, 32))
    assert seen == [(2 * w, 6, 6)] and out.shape == (2, 10)
    (dense,) = of(m, nn.Linear)
    assert (dense.in_features, dense.out_features) == (2 * w, 10) and [b.num_features for b in of(m, nn.BatchNorm1d)] == [10]

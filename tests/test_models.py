"""Invariants of every registered model (parametrised over the MODELS registry: a new model is tested for free)."""
from __future__ import annotations

import pytest
import torch

from robust_core.data.base import DatasetInfo
from robust_core.models import Classifier, Normalize, build_model
from robust_core.modes import eval_mode
from robust_core.registry import MODELS

from conftest import tiny_model

INFOS = {
    "gray28": DatasetInfo("gray28", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "rgb32": DatasetInfo("rgb32", 7, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CASES = [(m, i) for m in MODELS.names() for i in INFOS]


@pytest.fixture(params=CASES, ids=[f"{m}-{i}" for m, i in CASES])
def built(request):
    name, info_name = request.param
    info = INFOS[info_name]
    model = tiny_model(name, info, dtype=torch.float64)
    x = torch.rand(6, *info.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, info, x


def test_is_classifier_with_normalize_from_info(built):
    model, info, _ = built
    assert isinstance(model, Classifier)
    norms = [m for m in model.modules() if isinstance(m, Normalize)]
    assert len(norms) == 1 and model.normalize is norms[0]
    c = info.shape[0]
    assert torch.equal(model.normalize.mean.flatten().float(), torch.tensor(info.mean, dtype=torch.float32))
    assert torch.equal(model.normalize.std.flatten().float(), torch.tensor(info.std, dtype=torch.float32))
    assert model.normalize.mean.shape == (1, c, 1, 1)


def test_output_shape_features_and_head(built):
    model, info, x = built
    with eval_mode(model):
        logits = model(x)
        feats = model.features(x)
        assert logits.shape == (len(x), info.num_classes)
        assert feats.shape == (len(x), model.feature_dim)
        torch.testing.assert_close(model.head(feats), logits, rtol=0, atol=0)


def test_normalisation_is_inside_the_model(built):
    """features(x) = body((x - mean) / std): the model takes [0, 1] pixels, not pre-normalised inputs."""
    model, info, x = built
    mean = torch.tensor(info.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype).view(1, -1, 1, 1)
    with eval_mode(model):
        torch.testing.assert_close(model.features(x), model.body((x - mean) / std))
        assert not torch.allclose(model.body(x), model.features(x))


def test_every_parameter_gets_a_finite_gradient(built):
    model, info, x = built
    model.train()
    y = torch.arange(len(x)) % info.num_classes
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient"


def test_default_build_via_config(mnist5k_info):
    """build_model turns a YAML list into the tuple a model expects and passes params through."""
    from robust_core.config import ModelConfig

    m = build_model(ModelConfig(name="mlp", params={"hidden": [16, 8]}), mnist5k_info)
    assert m.feature_dim == 8 and m(torch.rand(3, 1, 28, 28)).shape == (3, 10)

"""Precision and layout options of ``fit``: bf16 autocast, float32 power iteration, channels_last, torch.compile."""
from __future__ import annotations

import pytest
import torch

from robust_core.methods._ops import vat_direction
from robust_core.train import fit

from conftest import tiny_model

SMALLCNN = ["model.name=smallcnn", "model.params.channels=[4,8]", "model.params.hidden=16"]  # a tiny conv model (no BN, no dropout)


def losses(res) -> list[tuple[float, float]]:
    return [(h["train_loss"], h["val_loss"]) for h in res.history]


@pytest.mark.parametrize("how", ["finite_difference", "exact"])
def test_power_iteration_direction_is_float32_under_autocast(how, mnist5k_100):
    """Inside a bf16 autocast region the direction is the float32 one, bit for bit (autocast is off there)."""
    model = tiny_model("mlp", mnist5k_100.info).train()
    x = mnist5k_100.arrays.x_train[:16]
    out = []
    for amp in (False, True):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            d, clean = vat_direction(model, x, power_iterations=2, how=how, xi=10.0)
        out.append((d, clean))
    (d32, c32), (dbf, cbf) = out
    assert dbf.dtype == cbf.dtype == torch.float32
    assert torch.equal(d32, dbf) and torch.equal(c32, cbf)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the check is not vacuous: the model itself runs in bf16 here
        assert model(x).dtype == torch.bfloat16


@pytest.mark.parametrize("model,method", [(SMALLCNN, "mle"), ([], "vat")], ids=["smallcnn-mle", "mlp-vat"])
def test_bf16_training_matches_fp32(model, method, tiny_cfg, mnist5k_100):
    base = model + [f"method.name={method}", "train.epochs=2", "train.steps_per_epoch=4", "train.lr=0.003"]
    fp32 = losses(fit(tiny_cfg(base), data=mnist5k_100))
    bf16 = losses(fit(tiny_cfg(base + ["train.amp=bf16"]), data=mnist5k_100))
    assert fp32 != bf16  # autocast was on
    for (a_tr, a_val), (b_tr, b_val) in zip(fp32, bf16):
        assert b_tr == pytest.approx(a_tr, rel=0.01) and b_val == pytest.approx(a_val, rel=0.01)


def test_channels_last_same_losses_and_layout(tiny_cfg, mnist5k_100):
    base = SMALLCNN + ["train.epochs=1", "train.steps_per_epoch=3"]
    plain = fit(tiny_cfg(base), data=mnist5k_100)
    nhwc = fit(tiny_cfg(base + ["train.channels_last=true"]), data=mnist5k_100)
    conv = nhwc.model.body[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[1] == 1
    assert nhwc.model.body[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.body[3].weight.is_contiguous(memory_format=torch.channels_last)
    for (a_tr, a_val), (b_tr, b_val) in zip(losses(plain), losses(nhwc)):
        assert b_tr == pytest.approx(a_tr, rel=1e-5) and b_val == pytest.approx(a_val, rel=1e-5)
    # a model without 2-D convolutions: the option changes nothing
    mlp = [fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=2", *extra]), data=mnist5k_100)
           for extra in ([], ["train.channels_last=true"])]
    assert losses(mlp[0]) == losses(mlp[1])


def test_compile_gives_the_eager_losses(tiny_cfg, mnist5k_100):
    """torch.compile (inductor, CPU) on a tiny MLP, two SGD steps: the same losses as eager within float rounding.
    SGD, not Adam: Adam turns rounding-level gradients of weights BN makes irrelevant into full-size steps."""
    base = ["train.epochs=1", "train.steps_per_epoch=2", "train.optimizer=sgd", "train.lr=0.05"]
    eager = fit(tiny_cfg(base), data=mnist5k_100)
    compiled = fit(tiny_cfg(base + ["train.compile=true"]), data=mnist5k_100)
    (a_tr, a_val), (b_tr, b_val) = losses(eager)[0], losses(compiled)[0]
    assert b_tr == pytest.approx(a_tr, rel=1e-5) and b_val == pytest.approx(a_val, rel=1e-5)
    w_eager, w_comp = eager.model.head.weight, compiled.model.head.weight  # checkpoints hold the plain model
    assert type(compiled.model) is type(eager.model) and torch.allclose(w_eager, w_comp, rtol=1e-4, atol=1e-6)

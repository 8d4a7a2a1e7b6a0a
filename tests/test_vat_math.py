"""VAT's math against float64 autograd references: the exact H·d, the power iteration, LDS, detaching, BN statistics.

H = ∇²_r Σ_i KL(p(x_i) ‖ p(x_i + r_i)) at r = 0 equals Jᵀ (diag p − p pᵀ) J with J the Jacobian of the logits in
x; the reference builds J explicitly with ``torch.autograd.functional.jacobian`` in float64 on a small model.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from robust_core.data.base import DatasetInfo
from robust_core.methods import Batch, StepContext, build_method
from robust_core.methods._ops import kl_hessian_direction, kl_logits, l2_normalize, vat_direction
from robust_core.config import MethodConfig
from robust_core.modes import eval_mode

from conftest import tiny_model

SMALL = DatasetInfo("mnist12", 10, (1, 12, 12), (0.1307,), (0.3081,))  # real digits, downsampled: D = 144


@pytest.fixture(scope="module")
def digits(mnist5k_arrays):
    """8 real MNIST digits, average-pooled to 12×12 (values stay in [0, 1]), float64."""
    return F.adaptive_avg_pool2d(mnist5k_arrays.x_train[:8].double(), 12)


def hessian(model, x):
    """Explicit float64 H (N·D × N·D) of Σ_i KL(p(x_i) ‖ p(x_i + r_i)) in r at r = 0: Jᵀ F J."""
    n, k = x.shape[0], SMALL.num_classes
    J = jacobian(lambda t: model(t), x, vectorize=True).reshape(n * k, -1)
    p = torch.softmax(model(x), -1)
    Fm = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p])
    return J.T @ Fm @ J


def cosines(a, b):
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


@pytest.fixture(scope="module")
def setup(digits):
    m64 = tiny_model("mlp", SMALL, torch.float64).train()
    H = hessian(m64, digits)
    d = torch.randn(digits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = (H @ d.flatten()).view_as(digits)
    return m64, H, d, ref


def test_reference_matches_float64_finite_difference(setup, digits):
    """Sanity of the reference itself: the float64 central difference of ∇KL agrees with Jᵀ F J d."""
    m64, _, d, ref = setup
    hd, _ = kl_hessian_direction(m64, digits, l2_normalize(d), "finite_difference", xi=1e-6)
    assert cosines(hd, ref).min() > 0.99


def test_exact_direction_float32_matches_float64_reference(setup, digits):
    m64, _, d, ref = setup
    m32 = copy.deepcopy(m64).float()
    hd, clean = kl_hessian_direction(m32, digits.float(), d.float(), "exact")
    assert hd.dtype == torch.float32 and not clean.requires_grad
    assert cosines(hd, ref).min() > 0.999
    torch.testing.assert_close(hd.double(), ref, rtol=1e-3, atol=1e-6 * ref.abs().max().item())
    hd64, _ = kl_hessian_direction(m64, digits, d, "exact")
    torch.testing.assert_close(hd64, ref, rtol=1e-9, atol=1e-12)


def test_paper_finite_difference_in_float32_is_wrong(setup, digits):
    """Documents the trap: Miyato's ∇KL(x + ξd)/ξ with ξ = 1e-6 in float32 is dominated by rounding error."""
    m64, _, d, ref = setup
    m32 = copy.deepcopy(m64).float()
    hd, _ = kl_hessian_direction(m32, digits.float(), l2_normalize(d.float()), "finite_difference", xi=1e-6)
    assert cosines(hd.flatten()[None], ref.flatten()[None]).item() < 0.9


@pytest.mark.parametrize("xi", [1.0, 10.0])
def test_finite_scale_secant_is_exact_in_float32(setup, digits, xi):
    """The secant option (``direction: finite_difference`` at a finite ξ) computed in float32 equals the same quantity
    in float64: at ξ ≥ 1 there is no cancellation, so the training precision does not change it."""
    m64, _, d, _ = setup
    m32 = copy.deepcopy(m64).float()
    g32, _ = kl_hessian_direction(m32, digits.float(), l2_normalize(d.float()), "finite_difference", xi=xi)
    g64, _ = kl_hessian_direction(m64, digits, l2_normalize(d), "finite_difference", xi=xi)
    assert cosines(g32, g64).min() > 0.9999


def test_exact_direction_under_bf16_autocast(setup, digits):
    m64, _, d, ref = setup
    m32 = copy.deepcopy(m64).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hd, clean = kl_hessian_direction(m32, digits.float(), d.float(), "exact")
    assert torch.isfinite(hd).all()
    assert cosines(hd, ref).min() > 0.99


def test_power_iteration_converges_to_top_eigenvector(digits):
    """Per example (no BN, so H is block-diagonal), vat_direction → the top eigenvector of H_i; one step is exactly
    normalize(H d0) with d0 the seeded random start."""
    from robust_core.models.mlp import MLP

    torch.manual_seed(0)
    m64 = MLP(SMALL, hidden=(32,), batch_norm=False).double()
    x = digits
    H = hessian(m64, x)
    n, D = x.shape[0], x[0].numel()
    tops, gaps = [], []
    for i in range(n):
        Hi = H[i * D:(i + 1) * D, i * D:(i + 1) * D]
        assert (H[i * D:(i + 1) * D].abs().sum() - Hi.abs().sum()).abs() < 1e-12  # no coupling between examples
        w, V = torch.linalg.eigh(Hi)
        tops.append(V[:, -1])
        gaps.append((w[-2] / w[-1]).item())
    K = 40
    assert max(gaps) ** K < 1e-2  # the top eigenvalue is separated enough for K steps to converge (angle ~ gap^K)
    torch.manual_seed(5)
    d1, _ = vat_direction(m64, x, power_iterations=1)
    torch.manual_seed(5)
    d0 = l2_normalize(torch.randn_like(x))
    torch.testing.assert_close(d1, l2_normalize((H @ d0.flatten()).view_as(x)))
    torch.manual_seed(5)
    dk, _ = vat_direction(m64, x, power_iterations=K)
    c = cosines(dk, torch.stack(tops).view_as(x)).abs()
    assert c.min() > 0.999, c
    assert (dk.flatten(1).norm(dim=1) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["vat", "vater", "fat"])
def test_vat_family_default_direction_is_the_exact_power_iteration_step(name, digits):
    """fat.txt §4.2, ater-vater.txt Algorithm 2: r_vadv lies along the dominant eigenvector of H, found by power
    iteration. With each method's default parameters one step from the seeded random start is normalize(H d0), H the
    explicit float64 Hessian (the ξ → 0 limit), not a finite-scale secant."""
    from robust_core.models.mlp import MLP
    from robust_core.registry import METHODS

    torch.manual_seed(0)
    m64 = MLP(SMALL, hidden=(32,), batch_norm=False).double()
    H = hessian(m64, digits)
    p = METHODS.get(name).Params()
    torch.manual_seed(5)
    d, _ = p.vadv_direction(m64, digits)
    torch.manual_seed(5)
    d0 = l2_normalize(torch.randn_like(digits))
    torch.testing.assert_close(d, l2_normalize((H @ d0.flatten()).view_as(digits)))
    # the secant stays available by name, and is a different vector
    torch.manual_seed(5)
    ds, _ = p.model_copy(update={"direction": "finite_difference"}).vadv_direction(m64, digits)
    assert cosines(ds, d).min() < 0.99


def test_kl_logits_nonnegative_zero_at_equal_and_matches_float64():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    q = p + torch.randn(16, 10, generator=g, dtype=torch.float64)
    assert kl_logits(p, p).item() == 0.0
    assert kl_logits(p, q).item() > 0
    ref = (torch.softmax(p, -1) * (torch.log_softmax(p, -1) - torch.log_softmax(q, -1))).sum(-1).mean()
    torch.testing.assert_close(kl_logits(p, q), ref)
    # half-precision logits are widened (finite, non-negative up to rounding)
    assert kl_logits(p.bfloat16(), q.bfloat16()).dtype == torch.float32


def vat(**params):
    return build_method(MethodConfig(name="vat", params=params), model=None, info=SMALL)


def test_lds_nonnegative_and_zero_at_r0(digits):
    m = tiny_model("mlp", SMALL, torch.float64).train()
    torch.manual_seed(0)
    lds, clean = vat(eps=1.0).lds(m, digits)
    assert lds.item() > 0 and not clean.requires_grad
    # at r = 0 (ε → 0) the distance is exactly zero: the same frozen-BN pass on the same batch
    from robust_core.modes import frozen_bn_stats

    with frozen_bn_stats(m):
        assert kl_logits(clean, m(digits)).item() == pytest.approx(0.0, abs=1e-14)
    torch.manual_seed(0)
    small, _ = vat(eps=1e-4).lds(m, digits)
    assert 0 <= small.item() < 1e-6 * lds.item()


def test_clean_side_is_detached(digits):
    """∇θ LDS equals the gradient with a manually detached clean target, and differs from the non-detached one."""
    m = tiny_model("mlp", SMALL, torch.float64).train()
    method = vat(eps=1.0)
    torch.manual_seed(3)
    lds, _ = method.lds(m, digits)
    g = torch.autograd.grad(lds, list(m.parameters()))
    torch.manual_seed(3)
    p = method.p
    d, _ = vat_direction(m, digits, p.power_iterations, p.direction, p.xi)  # the same direction lds used
    clean = m(digits)  # with graph; the batch statistics (train mode) are the same as in lds
    from robust_core.modes import frozen_bn_stats

    with frozen_bn_stats(m):
        adv = m(digits + 1.0 * d)
    g_det = torch.autograd.grad(kl_logits(clean.detach(), adv), list(m.parameters()), retain_graph=True)
    g_both = torch.autograd.grad(kl_logits(clean, adv), list(m.parameters()))
    for a, b in zip(g, g_det):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(g, g_both))


def bn_buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("params", [{}, {"power_iterations": 3}, {"direction": "finite_difference", "xi": 1e-3},
                                    {"entmin": 1.0}], ids=["default", "K3", "fd", "entmin"])
def test_vat_loss_bn_stats_see_only_clean_batches(params, digits):
    m = tiny_model("mlp", SMALL, torch.float32).train()
    x, ux = digits[:4].float(), digits[4:].float()
    twin = copy.deepcopy(m)
    batch = Batch(x, torch.arange(4), torch.arange(4), ux, torch.arange(4, 8))
    out = vat(**params).loss(m, batch, StepContext(0, 0, 1, 1))
    out.loss.backward()
    with torch.no_grad():
        twin(x)
        twin(ux)
    got, want = bn_buffers(m), bn_buffers(twin)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)

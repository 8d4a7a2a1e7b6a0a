"""xAT / xVAT (multiplicative, hard-concrete masks), FAT (VAT + sign choice + K+1 bad samples): the math in float64,
the game's gradient signs, BN/mode contracts, resume, and short real runs. ATLD has its own file (test_atld.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from robust_core.config import MethodConfig
from robust_core.methods import Batch, StepContext, build_method
from robust_core.methods._ops import kl_logits, kl_per_example, l2_normalize
from robust_core.methods.fat import choose_sign, loss_fake, loss_true
from robust_core.methods.xat import hard_concrete_nonzero_prob, hard_concrete_sample
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS
from robust_core.reporting import CheckpointDir
from robust_core.train import fit

BETA, GAMMA, ZETA = 0.66, -0.1, 1.1
CASES = [("xat", {"mode": "transductive"}), ("xat", {"mode": "inductive"}), ("xvat", {"mode": "transductive"}),
         ("xvat", {"mode": "inductive"}), ("fat", {})]
IDS = ["xat-trans", "xat-ind", "xvat-trans", "xvat-ind", "fat"]
N_TRAIN = 40


def setup(name, params, info, dtype=torch.float64, seed=0, ssl=True):
    model = tiny_model("mlp", info, dtype, seed).train()
    method = build_method(MethodConfig(name=name, params=params), model, info, n_train=N_TRAIN)
    for m in method.modules().values():
        m.to(dtype).train()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(8, *info.shape, generator=g, dtype=dtype)
    y = torch.randint(0, info.num_classes, (8,), generator=g)
    batch = Batch(x, y, torch.arange(8))
    if ssl and method.uses_unlabeled:
        batch.ux, batch.uidx = torch.rand(12, *info.shape, generator=g, dtype=dtype), torch.arange(20, 32)
    return model, method, batch


def ctx(epoch=0):
    return StepContext(epoch=epoch, step=epoch * 10, epochs=20, steps_per_epoch=10, n_train=N_TRAIN)


# ------------------------------------------------------------------------------------------- hard concrete
def concrete_cdf(t, log_alpha):
    """P(s̄ ≤ t) for the stretched binary concrete s̄ = s(ζ − γ) + γ, t ∈ (γ, ζ)."""
    q = (t - GAMMA) / (ZETA - GAMMA)
    return torch.sigmoid(BETA * torch.log(q / (1 - q)) - log_alpha)


@pytest.mark.parametrize("log_alpha", [-1.5, 0.0, 2.0])
def test_hard_concrete_matches_closed_forms(log_alpha):
    torch.manual_seed(0)
    la = torch.full((2_000_000,), log_alpha, dtype=torch.float64)
    z = hard_concrete_sample(la, BETA, GAMMA, ZETA)
    assert z.min() >= 0 and z.max() <= 1
    la0 = torch.tensor(log_alpha, dtype=torch.float64)
    p0 = torch.sigmoid(BETA * math.log(-GAMMA / ZETA) - la0)
    p1 = 1 - torch.sigmoid(BETA * math.log((1 - GAMMA) / (ZETA - 1)) - la0)
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    ez = torch.trapezoid(1 - concrete_cdf(t, la0), t)  # E z = ∫₀¹ P(z > t) dt
    assert abs((z == 0).double().mean() - p0) < 3e-3
    assert abs((z == 1).double().mean() - p1) < 3e-3
    assert abs(z.mean() - ez) < 3e-3
    assert abs(hard_concrete_nonzero_prob(la0, BETA, GAMMA, ZETA) - (1 - p0)) < 1e-12
    assert 0.02 < p0 < 0.98 or 0.02 < p1 < 0.98  # the masses are not degenerate at these log α


def test_expected_l0_gradient_matches_formula():
    la = torch.linspace(-4, 4, 17, dtype=torch.float64).requires_grad_(True)
    hard_concrete_nonzero_prob(la, BETA, GAMMA, ZETA).sum().backward()
    s = torch.sigmoid(la.detach() - BETA * math.log(-GAMMA / ZETA))
    torch.testing.assert_close(la.grad, s * (1 - s), rtol=1e-12, atol=1e-14)


# -------------------------------------------------------------------------------- the xAT/xVAT game's signs
@pytest.mark.parametrize("name,params", CASES[:4], ids=IDS[:4])
def test_mask_ascends_and_classifier_descends(name, params, mnist5k_info):
    model, method, batch = setup(name, params, mnist5k_info)
    p = method.p
    mask_params = list(method.mask.parameters())
    torch.manual_seed(3)
    out = method.loss(model, batch, ctx())
    g_loss = torch.autograd.grad(out.loss, mask_params + list(model.parameters()))

    # the same game without reversal: A = α·D + λ·L0 at the same uniform noise (the loss draws it once)
    xu, iu = (batch.ux, batch.uidx) if batch.ux is not None else (batch.x, batch.idx)
    x_reg, idx_reg = (xu, iu) if name == "xvat" else (batch.x, batch.idx)
    torch.manual_seed(3)
    la = method.log_alpha(x_reg, idx_reg)
    u = torch.rand_like(la)
    z = hard_concrete_sample(la, p.beta, p.gamma, p.zeta, u)
    with frozen_bn_stats(model):
        if name == "xat":
            div = F.cross_entropy(model(x_reg * z), batch.y)
        else:
            div = kl_logits(model(x_reg).detach(), model(x_reg * z))
    adv = p.alpha * div + p.lam * hard_concrete_nonzero_prob(la, p.beta, p.gamma, p.zeta).mean()
    g_adv = torch.autograd.grad(adv, mask_params)
    for got, want in zip(g_loss[: len(mask_params)], g_adv):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, -want, rtol=1e-9, atol=1e-12)  # descent on the loss = ascent on A

    # the classifier descends CE + α·D (no reversal on its side)
    with frozen_bn_stats(model):
        ce = F.cross_entropy(model(batch.x), batch.y)
        cls = ce + p.alpha * (F.cross_entropy(model(x_reg * z.detach()), batch.y) if name == "xat"
                              else kl_logits(model(x_reg).detach(), model(x_reg * z.detach())))
    g_cls = torch.autograd.grad(cls, list(model.parameters()))
    for got, want in zip(g_loss[len(mask_params):], g_cls):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_transductive_table_is_indexed_per_example(mnist5k_info):
    model, method, batch = setup("xvat", {"mode": "transductive"}, mnist5k_info)
    theta = method.mask.theta
    with torch.no_grad():
        theta.copy_(torch.arange(N_TRAIN, dtype=theta.dtype).view(-1, 1, 1, 1).expand_as(theta))
    la = method.log_alpha(batch.ux, batch.uidx)
    assert torch.equal(la[:, 0, 0, 0], method.p.mask_lr_scale * batch.uidx.to(la.dtype))
    method.loss(model, batch, ctx()).loss.backward()
    touched = theta.grad.flatten(1).abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == batch.uidx.tolist()
    with pytest.raises(IndexError, match="n_train"):
        method.log_alpha(batch.ux[:1], torch.tensor([N_TRAIN]))


def test_transductive_needs_n_train(mnist5k_info):
    with pytest.raises(ValueError, match="n_train"):
        build_method(MethodConfig(name="xat"), tiny_model("mlp", mnist5k_info), mnist5k_info, n_train=0)


class Interrupt(CheckpointDir):
    def report(self, metrics, state):
        super().report(metrics, state)
        raise KeyboardInterrupt("stop after the first epoch")


def test_transductive_masks_resume_exactly(tiny_cfg, mnist5k_100, tmp_path):
    cfg = tiny_cfg(["method.name=xvat", "method.params.mask_lr_scale=1.0", "train.epochs=2",
                    "train.steps_per_epoch=3"])
    full = fit(cfg, data=mnist5k_100)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, Interrupt(tmp_path), data=mnist5k_100)
    resumed = fit(cfg, CheckpointDir(tmp_path), data=mnist5k_100)
    assert resumed.resumed_from_epoch == 1
    theta_full, theta_res = full.method.mask.theta, resumed.method.mask.theta
    assert (theta_full != 0).any()  # the table moved from its initial value (0), so restoring it matters
    assert torch.equal(theta_full, theta_res)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------------------------------------- FAT
def test_k_plus_one_losses_are_the_papers_and_stable():
    """fat.txt §4.3 (below eq. (8)) in float64, written out from the paper: p̃_k = e^{g_k} / (1 + Σ e^{g_k'}),
    L^true = −Σ_{k≤K} p̃_k log p̃_k, L^fake = −log 1/(1 + Σ e^{g_k}). Not Bad GAN's −log(1 − p̃_{K+1})."""
    g = torch.Generator().manual_seed(0)
    f64 = 3 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    denom = 1 + f64.exp().sum(-1, keepdim=True)
    pt = f64.exp() / denom
    torch.testing.assert_close(loss_true(f64), -(pt * pt.log()).sum(-1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss_fake(f64), -torch.log(1 / denom.squeeze(-1)), rtol=1e-12, atol=1e-14)
    bad_gan = -torch.log(1 - 1 / denom.squeeze(-1))
    assert (loss_true(f64) - bad_gan).abs().max() > 0.1  # the formula this file used before issue 14

    big = torch.tensor([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 3.0]], requires_grad=True)
    lt, lf = loss_true(big), loss_fake(big)
    lse = torch.logsumexp(big.detach().double(), -1)
    torch.testing.assert_close(lf.double(), torch.logaddexp(torch.zeros_like(lse), lse), rtol=1e-6, atol=1e-6)
    # one real class certain, all real classes impossible (p̃_{K+1} = 1), two real classes tied: 0, 0, log 2
    torch.testing.assert_close(lt.double(), torch.tensor([0.0, 0.0, math.log(2)], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    (lt.sum() + lf.sum()).backward()
    assert torch.isfinite(big.grad).all()


def test_fat_sign_choice_picks_larger_kl(mnist5k_info):
    model, _, _ = setup("fat", {}, mnist5k_info)
    torch.manual_seed(0)
    x = torch.rand(64, *mnist5k_info.shape, dtype=torch.float64)
    d = l2_normalize(torch.randn_like(x))
    clean = model(x).detach()
    sign, kl = choose_sign(model, x, d, clean, eps=3.0)
    with torch.no_grad(), frozen_bn_stats(model):
        kp, kn = kl_per_example(clean, model(x + 3.0 * d)), kl_per_example(clean, model(x - 3.0 * d))
    s = sign.flatten()
    assert (s == 1).any() and (s == -1).any()  # both signs occur: the choice is not trivial
    assert torch.equal(s == 1, kp >= kn)
    torch.testing.assert_close(kl.detach(), torch.maximum(kp, kn))


def test_fat_defaults_are_table_2_and_lambda_warms_up_to_exactly_one(mnist5k_info):
    """fat.txt Table 2 (MNIST, 100 labels): optimum ε = 1.5, C = 2, α = 0.01; §5.1: λ starts at 0 and grows by 0.1
    after every epoch up to one."""
    p = METHODS.get("fat").Params()
    assert (p.eps, p.bad_scale, p.bad_alpha, p.alpha, p.direction) == (1.5, 2.0, 0.01, 1.0, "exact")
    model, method, batch = setup("fat", {}, mnist5k_info)
    assert [method.lam(e) for e in range(13)] == [k / 10 for k in range(11)] + [1.0, 1.0]
    assert "l_fake" not in method.loss(model, batch, ctx(0)).logs
    out = method.loss(model, batch, ctx(5))
    assert out.logs["lam"] == 0.5 and 0 <= float(out.logs["bad_kept"]) <= 1
    assert float(out.logs["l_true"]) > 0 and float(out.logs["l_fake"]) >= 0


def test_fat_loss_is_eq_8(mnist5k_info):
    """The whole objective of fat.txt eq. (8) on a BN-free model in float64: CE + L^VAT + λ (L^true + L^fake), with
    the sign of the direction chosen by the larger KL and bad samples at C along it, filtered by α."""
    from robust_core.models.mlp import MLP

    torch.manual_seed(0)
    model = MLP(mnist5k_info, hidden=(16,), batch_norm=False).double()
    _, method, batch = setup("fat", {}, mnist5k_info)
    p = method.p
    torch.manual_seed(3)
    d, clean = p.vadv_direction(model, batch.ux)
    sign, _ = choose_sign(model, batch.ux, d, clean, p.eps)
    with torch.no_grad():
        kl = torch.maximum(kl_per_example(clean, model(batch.ux + p.eps * d)),
                           kl_per_example(clean, model(batch.ux - p.eps * d)))
        logits_bad = model(batch.ux + p.bad_scale * sign * d)
        conf = F.softmax(logits_bad, -1).amax(-1)
        alpha = 1 - conf.median().item()  # the filter keeps about half: it is exercised
        keep = conf <= 1 - alpha
        want = (F.cross_entropy(model(batch.x), batch.y) + kl.mean()
                + 0.4 * (loss_true(model(batch.ux)).mean() + loss_fake(logits_bad[keep]).mean()))
    assert 0 < keep.sum() < len(keep)
    method = build_method(MethodConfig(name="fat", params={"bad_alpha": alpha}), model, mnist5k_info)
    torch.manual_seed(3)
    out = method.loss(model, batch, ctx(4))
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-10, atol=1e-12)
    assert out.logs["bad_kept"].item() == keep.double().mean().item()


# ------------------------------------------------------------------------------- contracts shared by all six
BN_UPDATES = {"xat": 1, "xvat": 2, "fat": 2}  # clean passes that update BN statistics (see docstrings)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_bn_stats_modes_grads_and_no_side_effects(name, params, mnist5k_info):
    model, method, batch = setup(name, params, mnist5k_info)
    bn = model.body[2]
    mean0, n0 = bn.running_mean.clone(), int(bn.num_batches_tracked)
    aux = list(method.modules().values())
    params_all = list(model.parameters()) + [q for m in aux for q in m.parameters()]
    before = [q.detach().clone() for q in params_all]
    opt = torch.optim.SGD(params_all, lr=0.1)
    out = method.loss(model, batch, ctx(epoch=5))  # epoch 5: FAT's bad-sample terms are on
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert int(bn.num_batches_tracked) - n0 == BN_UPDATES[name]
    if name == "xat":  # exactly one clean pass's update: the perturbed pass left the statistics alone
        ref = tiny_model("mlp", mnist5k_info, torch.float64).train()
        ref.body[2].running_mean.copy_(mean0)
        ref(batch.x)
        torch.testing.assert_close(bn.running_mean, ref.body[2].running_mean)
    assert model.training and all(m.training for m in model.modules())
    assert all(m.training for a in aux for m in a.modules())
    out.loss.backward()
    missing = [n for n, q in list(model.named_parameters()) + [(f"aux.{n}", q) for a in aux for n, q in
               a.named_parameters()] if q.grad is None or not torch.isfinite(q.grad).all() or q.grad.abs().sum() == 0]
    assert not missing, f"{name}: no (finite, non-zero) gradient for {missing}"
    assert not opt.state and all(torch.equal(a, b) for a, b in zip(before, params_all))
    # eval mode as found stays as found
    model.eval()
    method.loss(model, batch, ctx())
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["xat", "xvat", "fat"])
def test_default_params_supervised_batch(name, mnist5k_info):
    model, method, batch = setup(name, {}, mnist5k_info, dtype=torch.float32, ssl=False)
    out = method.loss(model, batch, ctx())
    assert torch.isfinite(out.loss) and out.logits.shape == (8, 10)


# ------------------------------------------------------------------------------------------------ real runs
@pytest.fixture
def one_thread():
    """Intra-op threads fight each other on the shared 2-core machine (a FAT step is ~50x slower with 2 threads
    under load); the real runs use one and restore the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xat", "xvat", "fat"])
def test_short_real_run_learns(name, tiny_cfg, mnist5k_arrays, mnist5k_100, one_thread):
    """200 updates of a 784-64-10 MLP on mnist5k: semi-supervised methods with 100 labels, the others with all."""
    from robust_core.data import PreparedData, make_splits

    ssl = name in ("xvat", "fat")
    over = {"fat": ["method.params.lam_step=0.5"]}.get(name, [])
    cfg = tiny_cfg([f"method.name={name}", "model.params.hidden=[64]", "train.epochs=2", "train.steps_per_epoch=100",
                    *over])
    data = mnist5k_100
    if not ssl:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"n_labeled": None})})
        info = mnist5k_100.info
        data = PreparedData(info, mnist5k_arrays, make_splits(mnist5k_arrays.y_train, info.num_classes, 500, None, 0))
    res = fit(cfg, data=data)
    print(f"{name}: val_acc {[h['val_acc'] for h in res.history]}")
    assert res.last["val_acc"] > (0.5 if ssl else 0.75), res.history  # chance is 0.1

"""Math and mode invariants of at_fgsm, at_l2, ro, pgd_at, trades, ater, vater, and one short real run each."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_core.attacks.threat import ThreatModel
from robust_core.data.base import DatasetInfo
from robust_core.methods import Batch, StepContext
from robust_core.methods.ater import energy, input_hvp
from robust_core.methods.at_fgsm import input_grad_ce, one_step
from robust_core.methods.trades import kl_per_example
from robust_core.methods._ops import kl_logits
from robust_core.modes import eval_mode, frozen_bn_stats
from robust_core.registry import METHODS, MODELS
from robust_core.train import fit

from conftest import tiny_model

INFO = DatasetInfo("gray4", 3, (1, 4, 4), (0.5,), (0.25,))
CTX = StepContext(0, 0, 1, 1, 0)
NAMES = ["at_fgsm", "at_l2", "ro", "pgd_at", "trades", "ater", "vater"]
G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731


def make(name: str, **params):
    cls = METHODS.get(name)
    return cls(cls.Params(**params), model=None, info=INFO)


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()


def smooth_model(seed: int = 0) -> nn.Module:
    """tanh MLP (C², no BN) in float64: its input Hessian is well defined everywhere."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def data(n: int = 5, lo: float = 0.3, hi: float = 0.7, seed: int = 0):
    x = lo + (hi - lo) * torch.rand(n, 1, 4, 4, dtype=torch.float64, generator=G(seed))
    y = torch.randint(0, 3, (n,), generator=G(seed + 1))
    return x, y


def linear_ce_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed form ∇ₓ CE(Wx + b, y) = Wᵀ(softmax − onehot), per example, no autograd."""
    lin = model[1]
    p = F.softmax(x.flatten(1) @ lin.weight.T + lin.bias, dim=1)
    return ((p - F.one_hot(y, 3).double()) @ lin.weight).view_as(x)


# ---------------------------------------------------------------- one-step methods (FGSM, L2, RO)

def test_fgsm_perturbation_is_eps_sign_grad_and_alpha_mix_matches_hand_computation():
    model, (x, y) = linear_model(), data()
    eps, alpha = 0.05, 0.3
    g = linear_ce_grad(model, x, y)
    _, g_auto = input_grad_ce(model, x, y)
    torch.testing.assert_close(g_auto, g)
    x_adv = one_step(x, g_auto, ThreatModel("linf", eps), clip=True)
    torch.testing.assert_close(x_adv - x, eps * g.sign())
    out = make("at_fgsm", eps=eps, alpha=alpha).loss(model, Batch(x, y, torch.arange(5)), CTX)
    expect = alpha * F.cross_entropy(model(x), y) + (1 - alpha) * F.cross_entropy(model(x + eps * g.sign()), y)
    torch.testing.assert_close(out.loss, expect)
    assert out.loss.item() > F.cross_entropy(model(x), y).item()  # the adversarial term is larger


def test_at_l2_perturbation_is_eps_normalised_grad():
    model, (x, y) = linear_model(1), data(seed=3)
    eps, alpha = 0.2, 0.5
    g = linear_ce_grad(model, x, y)
    r = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    out = make("at_l2", eps=eps, alpha=alpha).loss(model, Batch(x, y, torch.arange(5)), CTX)
    expect = alpha * F.cross_entropy(model(x), y) + (1 - alpha) * F.cross_entropy(model(x + r), y)
    torch.testing.assert_close(out.loss, expect)
    assert METHODS.get("at_l2").Params().eps == 2.0 and METHODS.get("at_fgsm").Params().eps == 0.25


@pytest.mark.parametrize("norm, dual", [("linf", 1.0), ("l2", 2.0), ("l1", float("inf"))])
def test_one_step_reaches_the_dual_norm_bound_on_a_linear_loss(norm, dual):
    """For L(x) = wᵀx the step raises L by exactly ε‖w‖_* (the dual norm): the linearised inner max is solved."""
    x = data(4)[0]
    w = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=G(7))
    eps = 0.01
    x_adv = one_step(x, w, ThreatModel(norm, eps), clip=False)
    gain = ((x_adv - x) * w).flatten(1).sum(1)
    torch.testing.assert_close(gain, eps * w.flatten(1).norm(p=dual, dim=1))
    assert ThreatModel(norm, eps).contains(x_adv - x, tol=1e-12).all()
    if norm == "l1":
        assert ((x_adv - x).flatten(1) != 0).sum(1).tolist() == [1] * 4  # exactly one coordinate per example


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ro_trains_on_the_perturbed_batch_only(norm):
    model, (x, y) = linear_model(2), data(seed=5)
    eps = 0.05
    g = linear_ce_grad(model, x, y)
    x_adv = one_step(x, g, ThreatModel(norm, eps), clip=True)
    out = make("ro", norm=norm, eps=eps).loss(model, Batch(x, y, torch.arange(5)), CTX)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_adv), y))
    assert out.loss.item() > F.cross_entropy(model(x), y).item()


def test_clip_keeps_one_step_inputs_in_the_box():
    x = torch.rand(6, 1, 4, 4, generator=G(1))
    g = torch.randn(6, 1, 4, 4, generator=G(2))
    for norm, eps in [("linf", 0.3), ("l2", 3.0), ("l1", 5.0)]:
        z = one_step(x, g, ThreatModel(norm, eps), clip=True)
        assert z.min() >= 0 and z.max() <= 1
        assert ThreatModel(norm, eps).contains(z - x).all()


# ---------------------------------------------------------------- PGD-AT and TRADES

@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pgd_at_adversary_stays_in_ball_and_box_and_raises_the_loss(norm, eps, mode):
    torch.manual_seed(0)
    model = tiny_model("mlp", INFO, dtype=torch.float64)
    x, y = data(8, 0.0, 1.0)
    m = make("pgd_at", eps=eps, steps=5, step_frac=0.3, norm=norm, attack_mode=mode)
    x_adv = m.adversary(model, x, y)
    assert ThreatModel(norm, eps).contains(x_adv - x, tol=1e-9).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad(), eval_mode(model):
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_trades_kl_nonnegative_and_zero_at_x():
    a = torch.randn(20, 3, dtype=torch.float64, generator=G(0))
    b = torch.randn(20, 3, dtype=torch.float64, generator=G(1))
    assert (kl_per_example(a, b) >= 0).all() and kl_per_example(a, b).sum() > 0
    torch.testing.assert_close(kl_per_example(a, a), torch.zeros(20, dtype=torch.float64))
    torch.testing.assert_close(kl_per_example(a, b).mean(), kl_logits(a, b))


def test_trades_loss_is_ce_when_x_adv_is_x_and_adversary_raises_kl():
    model, (x, y) = linear_model(3), data(seed=9)
    m = make("trades", eps=0.1, steps=5, beta=6.0)
    x_adv = m.adversary(model, x)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert kl_logits(model(x), model(x_adv)) > 0
    m.adversary = lambda model, x: x.clone()
    out = m.loss(model, Batch(x, y, torch.arange(5)), CTX)
    assert out.logs["kl"].item() == pytest.approx(0.0, abs=1e-15)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))


# ---------------------------------------------------------------- ATER / VATER

def dropout_model(seed: int = 0) -> nn.Module:
    """tanh MLP with a Dropout(0.5) layer (as conv-large has), float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Dropout(0.5), nn.Linear(12, 3)).double()


@pytest.mark.parametrize("make_model", [smooth_model, dropout_model], ids=["tanh", "dropout"])
def test_ater_hvp_and_x_max_match_autograd_float64(make_model):
    """H g of ater-vater.txt eq. (37) (the ξ → 0 limit) against torch's hvp on the same function, in float64. With
    dropout in training mode the reference fixes one mask (same seed, one forward pass): the method must use one mask
    for g and H g, where the paper's finite difference of two training-mode passes draws two."""
    model, (x, y) = make_model().train(), data(6)
    f = lambda z: F.cross_entropy(model(z), y, reduction="sum")  # noqa: E731  per-example rows of the Hessian
    torch.manual_seed(11)
    g, hv = input_hvp(model, x, y)
    torch.manual_seed(11)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(f(xr), xr)
    v = g_ref / g_ref.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.manual_seed(11)
    _, hv_ref = torch.autograd.functional.hvp(f, x, v)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-12)
    # x_max is x + ε_E · H g / ‖H g‖, per example
    m = make("ater", eps=0.1, energy_eps=0.05, clip=False)
    torch.manual_seed(11)
    d = m.x_max(model, x, y) - x
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.full((6,), 0.05, dtype=torch.float64))
    torch.testing.assert_close(d / 0.05, hv_ref / hv_ref.flatten(1).norm(dim=1).view(-1, 1, 1, 1))


def test_finite_difference_across_dropout_masks_is_not_the_hvp():
    """Why ATER no longer uses the paper's finite difference: two training-mode passes draw two dropout masks, and
    (∇ℓ(x + ξv; mask B) − ∇ℓ(x; mask A)) / ξ is then mask noise, far from H v, at any small ξ."""
    model, (x, y) = dropout_model().train(), data(6)
    torch.manual_seed(11)
    g, hv = input_hvp(model, x, y)

    def grad_at(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)[0]

    v = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.manual_seed(11)
    g_a = grad_at(x)  # mask A (the same as input_hvp's)
    torch.manual_seed(12)
    fd = (grad_at(x + 1e-5 * v) - g_a) / 1e-5  # mask B
    torch.manual_seed(11)
    fd_same = (grad_at(x + 1e-5 * v) - g_a) / 1e-5  # mask A again: the difference is H v
    assert F.cosine_similarity(fd_same.flatten(1), hv.flatten(1), dim=1).min() > 0.999
    assert F.cosine_similarity(fd.flatten(1), hv.flatten(1), dim=1).abs().max() < 0.9
    assert fd.abs().max() > 1e3 * hv.abs().max()


def test_energy_is_the_per_example_input_gradient_norm_and_reaches_every_parameter():
    info = DatasetInfo("gray4", 3, (1, 4, 4), (0.5,), (0.25,))
    model = tiny_model("mlp", info, dtype=torch.float64)
    x, y = data(8)
    e = energy(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    xr = x.clone().requires_grad_(True)
    with frozen_bn_stats(model):
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    torch.testing.assert_close(e, g.flatten(1).norm(dim=1).mean())
    grads = torch.autograd.grad(e, list(model.parameters()), allow_unused=True)
    names = [n for n, _ in model.named_parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads), names


@pytest.mark.parametrize("name", ["ater", "vater"])
def test_energy_term_gradient_reaches_every_parameter_through_the_method(name):
    model = tiny_model("mlp", INFO, dtype=torch.float64)
    x, y = data(8)
    base = make(name, lam=0.0).loss(model, Batch(x, y, torch.arange(8)), CTX)
    torch.manual_seed(0)  # vater's random start
    with_e = make(name, lam=1.0).loss(model, Batch(x, y, torch.arange(8)), CTX)
    e = with_e.logs["energy"]
    assert e > 0
    grads = torch.autograd.grad(with_e.loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert base.loss.requires_grad


def test_vater_uses_unlabeled_and_energy_is_at_vat_point():
    assert METHODS.get("vater").uses_unlabeled and not METHODS.get("ater").uses_unlabeled
    p, v = METHODS.get("vater").Params(), METHODS.get("vat").Params()
    assert (p.eps, p.alpha, p.direction, p.xi) == (v.eps, v.alpha, v.direction, v.xi)  # vat's defaults


# ---------------------------------------------------------------- modes, BN statistics, parameter .grad

def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# training passes that update BN running statistics per loss call (the rest leave them untouched)
BN_UPDATES = {"at_fgsm": 1, "at_l2": 1, "ro": 1, "pgd_at": 1, "trades": 2, "ater": 1, "vater": 2}


@pytest.mark.parametrize("name", NAMES)
def test_bn_updates_modes_and_grads(name):
    torch.manual_seed(0)
    model = MODELS.get("mlp")(INFO, hidden=(8, 8)).double()  # two BN layers: body.2 and body.5
    x, y = data(8)
    params = {"pgd_at": {"eps": 0.1, "steps": 2}, "trades": {"eps": 0.1, "steps": 2}}.get(name, {})
    m = make(name, **params)
    before = bn_state(model)
    model.train()
    model.body[2].eval()  # a mixed-mode model: the method must give it back exactly so
    flags = {n: s.training for n, s in model.named_modules()}
    out = m.loss(model, Batch(x, y, torch.arange(8)), CTX)
    assert {n: s.training for n, s in model.named_modules()} == flags
    assert all(p.grad is None for p in model.parameters())  # only the loop fills .grad
    after = bn_state(model)
    steps = {k: int(after[k] - before[k]) for k in after if "num_batches" in k}
    # the frozen BN layer (eval mode) is never updated; the other one exactly BN_UPDATES[name] times
    assert sorted(steps.values()) == sorted([0, BN_UPDATES[name]]), steps
    assert torch.isfinite(out.loss) and out.loss.dim() == 0


@pytest.mark.parametrize("name", ["at_fgsm", "at_l2", "ater"])
def test_clean_pass_is_the_only_bn_update(name):
    """Exactly the statistics of one training-mode pass over the clean batch: perturbed passes leave them alone."""
    model = tiny_model("mlp", INFO, dtype=torch.float64)
    x, y = data(8)
    ref = copy.deepcopy(model).train()
    ref(x)
    model.train()
    make(name).loss(model, Batch(x, y, torch.arange(8)), CTX)
    for k, v in bn_state(ref).items():
        torch.testing.assert_close(bn_state(model)[k], v, rtol=0, atol=0)


def test_bad_params_raise_clear_errors():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="alpha"):
        METHODS.get("at_fgsm").Params(alpha=1.5)
    with pytest.raises(ValidationError, match="norm"):
        METHODS.get("ro").Params(norm="l3")
    with pytest.raises(ValidationError, match="eps"):
        METHODS.get("pgd_at").Params(eps=0)
    assert METHODS.get("pgd_at").Params(eps="8/255").eps == pytest.approx(8 / 255)


# ---------------------------------------------------------------- short real runs

REAL = {
    "at_fgsm": ["method.params.eps=0.1"],
    "at_l2": ["method.params.eps=1.0"],
    "ro": ["method.params.eps=0.1"],
    "pgd_at": ["method.params.eps=0.1", "method.params.steps=3", "method.params.step_frac=0.5"],
    "trades": ["method.params.eps=0.1", "method.params.steps=3", "method.params.step_frac=0.5",
               "method.params.beta=1.0"],
    "ater": ["method.params.eps=1.0"],
    "vater": [],
}


@pytest.fixture
def one_thread():
    """2 shared cores: two intra-op threads per process oversubscribe them (a 1 s run measured 100 s); restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_short_real_run_learns(name, tiny_cfg, mnist5k_100, one_thread):
    """120 updates of a 64-unit MLP on mnist5k with 100 labels (vater also sees the unlabeled rest): chance is 0.1."""
    cfg = tiny_cfg([f"method.name={name}", "model.params.hidden=[64]", "train.epochs=2",
                    "train.steps_per_epoch=60", *REAL[name]])
    res = fit(cfg, data=mnist5k_100)
    assert res.last["val_acc"] > 0.6, res.history

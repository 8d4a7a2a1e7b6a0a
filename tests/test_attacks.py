"""Attack invariants, parametrised over the ATTACKS registry (a new attack is covered automatically), plus
closed forms on linear models, the threat models and the loop's bookkeeping (forward counts, modes, seeds)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_core.attacks import ThreatModel, ce_loss, cw_margin_loss, perturb
from robust_core.attacks.autoattack import AutoAttack
from robust_core.attacks.gradient import CW, FGSM, PGD, L2Grad
from robust_core.attacks.rays import RayS
from robust_core.attacks.threat import norm_of
from robust_core.registry import ATTACKS

EPS = {"linf": 0.1, "l2": 0.5, "l1": 1.0}
CASES = [(name, norm) for name in ATTACKS.names() for norm in ATTACKS.get(name).supported_norms]


def _mlp(seed=0, d=36, k=4, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(d, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh(), nn.Dropout(0.2),
                                                                                        nn.Linear(16, k)]
    return nn.Sequential(*layers).double()


def _data(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def _attack_loss(attack, y):
    return cw_margin_loss(y) if isinstance(attack, CW) else ce_loss(y)


def test_registry_has_the_papers_attacks():
    assert {"fgsm", "pgd", "cw", "l2grad", "autoattack"} <= set(ATTACKS.names())


@pytest.mark.parametrize("name,norm", CASES)
def test_stays_in_ball_and_box_and_raises_loss(name, norm):
    model = _mlp().eval()
    x, y = _data()
    x[:3] = x[:3].round()  # pixels at the box edges, so clipping matters
    attack = ATTACKS.get(name).smoke(EPS[norm], norm)
    xa = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
    assert (xa >= 0).all() and (xa <= 1).all()
    assert (norm_of(xa - x, norm) <= EPS[norm] * (1 + 1e-6) + 1e-9).all()
    loss_fn = _attack_loss(attack, y)
    with torch.no_grad():
        before, after = loss_fn(model(x)).mean().item(), loss_fn(model(xa)).mean().item()
    assert after > before


@pytest.mark.parametrize("name", ATTACKS.names())
def test_same_seed_same_result(name):
    model = _mlp().eval()
    x, y = _data()
    norm = ATTACKS.get(name).supported_norms[0]
    attack = ATTACKS.get(name).smoke(EPS[norm], norm)
    a = attack(model, x, y, generator=torch.Generator().manual_seed(3))
    b = attack(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("training", [True, False])
def test_mode_and_params_untouched(name, training):
    model = _mlp(bn=True)
    model.train(training)
    model[2].training = False  # BN in eval, dropout as `training`: a mixed state must come back exactly as found
    before = [m.training for m in model.modules()]
    x, y = _data()
    norm = ATTACKS.get(name).supported_norms[0]
    ATTACKS.get(name).smoke(EPS[norm], norm)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())


class _Counter(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class _Rows(_Counter):
    rows = 0

    def forward(self, x):
        self.rows += len(x)
        return super().forward(x)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_exact_forward_counts(name):
    x, y = _data()
    cls = ATTACKS.get(name)
    if cls is AutoAttack:  # the authors' code: its budget is n_iter per sub-attack and restart, checked as such
        # ε tiny: no example is broken, so every restart runs all its iterations; the difference between two
        # budgets removes AutoAttack's fixed overhead (clean pass, its checks, each restart's start)
        counts = []
        for n_iter in (7, 14):
            m = _Counter(_mlp().eval())
            a = cls(eps=1e-7, version="custom", attacks=("apgd-ce",), n_iter=n_iter)
            a(m, x, y)
            counts.append(m.calls)
        assert a.restarts == 5 and counts[1] - counts[0] == 7 * a.restarts
        return
    if cls is RayS:  # a query budget per example: every forwarded example is one query of its own budget
        m = _Rows(_mlp().eval())
        _, _, used = RayS(eps=1e-4, queries=40).search(m, x, y)
        assert m.rows == int(used.sum()) and used.max() == 40
        return
    for kw, expected in [({}, None), ({"n_steps": 4}, 4), ({"n_steps": 5, "n_restarts": 3}, 3 * 5 + 3),
                         ({"n_steps": 2, "eot_samples": 3}, 6)]:
        if not set(kw) <= {f.name for f in dataclasses.fields(cls)}:
            continue  # this attack has no such option (e.g. FGSM has no steps): covered by the plain case
        attack = cls(eps=0.1, **kw)
        m = _Counter(_mlp().eval())
        attack(m, x, y, generator=torch.Generator().manual_seed(0))
        want = expected if expected is not None else attack.steps * attack.restarts + (
            attack.restarts if attack.restarts > 1 else 0)
        assert m.calls == want, (name, kw)


# ---- closed forms on linear models (float64, no box clipping: x = 0.5, small ε) ----

def _linear_binary(d=20, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(d, 2).double()
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _worst_delta(w: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """argmax_{‖δ‖≤ε} w·δ: ε·sign(w) (L∞), ε·w/‖w‖₂ (L2), ε·sign(w_i)e_i at i = argmax|w_i| (L1)."""
    if norm == "linf":
        return eps * w.sign()
    if norm == "l2":
        return eps * w / w.norm()
    out = torch.zeros_like(w)
    i = w.abs().argmax()
    out[i] = eps * w[i].sign()
    return out


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3), ("l1", 0.4)])
def test_fgsm_is_the_worst_case_of_a_linear_binary_classifier(norm, eps):
    model, lin = _linear_binary()
    x = torch.full((3, 1, 4, 5), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    xa = FGSM(eps=eps, norm=norm)(model, x, y)
    for i in range(3):
        w = lin.weight[1 - y[i]] - lin.weight[y[i]]  # raising the other logit's margin raises CE (2 classes)
        torch.testing.assert_close((xa[i] - x[i]).flatten(), _worst_delta(w.detach(), norm, eps), atol=1e-12,
                                   rtol=0)


def test_l2grad_is_the_worst_case_of_a_linear_binary_classifier():
    model, lin = _linear_binary()
    x = torch.full((2, 1, 4, 5), 0.5, dtype=torch.float64)
    y = torch.tensor([1, 0])
    xa = L2Grad(eps=0.3)(model, x, y)
    for i in range(2):
        w = (lin.weight[1 - y[i]] - lin.weight[y[i]]).detach()
        torch.testing.assert_close((xa[i] - x[i]).flatten(), _worst_delta(w, "l2", 0.3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", [PGD, CW])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_pgd_and_cw_reach_the_linear_worst_case(cls, norm, eps):
    model, lin = _linear_binary()
    x = torch.full((2, 1, 4, 5), 0.5, dtype=torch.float64)
    if cls is CW:  # keep CW's margin below the κ=0 cap along the whole path: far from the boundary
        with torch.no_grad():
            lin.bias.copy_(torch.tensor([20.0, -20.0], dtype=torch.float64))
    y = torch.tensor([0, 0])
    xa = cls(eps=eps, norm=norm, n_steps=40, step_frac=0.5)(model, x, y, generator=torch.Generator().manual_seed(0))
    w = (lin.weight[1] - lin.weight[0]).detach()
    for i in range(2):
        torch.testing.assert_close((xa[i] - x[i]).flatten(), _worst_delta(w, norm, eps), atol=1e-7, rtol=0)


def test_cw_margin_of_given_logits():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 4.5], [0.0, 0.0, 7.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 2])
    torch.testing.assert_close(cw_margin_loss(y, kappa=float("inf"))(z), torch.tensor([2.0, -0.5, -7.0]).double())
    torch.testing.assert_close(cw_margin_loss(y)(z), torch.tensor([0.0, -0.5, -7.0]).double())
    torch.testing.assert_close(cw_margin_loss(y, kappa=1.0)(z), torch.tensor([1.0, -0.5, -7.0]).double())
    torch.testing.assert_close(ce_loss(y)(z), F.cross_entropy(z, y, reduction="none"))


# ---- threat models ----

def _l1_projection_bisection(v: torch.Tensor, eps: float) -> torch.Tensor:
    if v.abs().sum() <= eps:
        return v
    lo, hi = 0.0, v.abs().max().item()
    for _ in range(200):
        mid = (lo + hi) / 2
        if (v.abs() - mid).clamp_min(0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - hi).clamp_min(0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_is_the_nearest_point_of_the_ball(norm):
    t = ThreatModel(norm, 0.7)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    d[0] *= 1e-3  # already inside: unchanged
    p = t.project(d)
    assert t.contains(p, tol=1e-9).all()
    torch.testing.assert_close(p[0], d[0])
    if norm == "l1":
        for i in range(1, 6):
            torch.testing.assert_close(p[i].flatten(), _l1_projection_bisection(d[i].flatten(), 0.7), atol=1e-9,
                                       rtol=0)
    elif norm == "l2":
        torch.testing.assert_close(norm_of(p[1:], "l2"), torch.full((5,), 0.7, dtype=torch.float64))
    else:
        torch.testing.assert_close(p, d.clamp(-0.7, 0.7))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_init_inside_ball_seeded_and_step_has_norm_step_size(norm):
    t = ThreatModel(norm, 0.3)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    a = t.random_init(x, torch.Generator().manual_seed(1))
    b = t.random_init(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == x.dtype and t.contains(a).all() and (a != 0).any()
    s = t.step(torch.randn_like(x), 0.2)
    torch.testing.assert_close(norm_of(s, norm), torch.full((5,), 0.2, dtype=torch.float64))
    if norm == "l1":
        assert ((s != 0).flatten(1).sum(1) == 1).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="norm"):
        ThreatModel("l3", 0.1)
    with pytest.raises(ValueError, match="pixel units"):
        ThreatModel("linf", -1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturb(_mlp(), torch.rand(2, 1, 6, 6).double() * 255, ce_loss(torch.tensor([0, 1])),
                ThreatModel("linf", 0.1), 1, 0.1)
    with pytest.raises(ValueError, match="per-example"):
        perturb(_mlp(), torch.rand(2, 1, 6, 6).double(), lambda z: z.sum(), ThreatModel("linf", 0.1), 1, 0.1)
    with pytest.raises(ValueError, match="supports norms"):
        L2Grad(eps=0.1, norm="linf")
    with pytest.raises(ValueError, match="loss"):
        PGD(eps=0.1, loss="hinge")


def test_restarts_keep_the_best_per_example():
    model = _mlp().eval()
    x, y = _data()
    one = [PGD(eps=0.1, n_steps=2, step_frac=0.5)(model, x, y, generator=torch.Generator().manual_seed(s))
           for s in range(1)]
    best = PGD(eps=0.1, n_steps=2, step_frac=0.5, n_restarts=4)(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        l1, lb = ce_loss(y)(model(one[0])), ce_loss(y)(model(best))
    assert (lb >= l1 - 1e-12).all()  # the first restart uses the same random stream, so restarts only add

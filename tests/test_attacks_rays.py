"""RayS (hard-label L∞ ray search) where the answer is known: a linear classifier's exact L∞ distance to its
decision boundary |m(x)| / ‖w‖₁ (the box does not bind: x near 0.5, distances ≤ 0.15). The registry-wide invariants
(ball, box, seeds, modes) are in test_attacks.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_core.attacks.rays import RayS

pytestmark = pytest.mark.usefixtures("one_thread")
D = 20


def _linear(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(D, 2).double()
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _points(lin, n=16, seed=1):
    """Inputs near 0.5 labelled by the model (clean accuracy 100 %) and their exact L∞ boundary distances, spread
    over [0.02, 0.15] on both sides of the boundary (x ∈ [0.29, 0.71]: the box never binds within 0.15)."""
    g = torch.Generator().manual_seed(seed)
    w = (lin.weight[1] - lin.weight[0]).detach()
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.0, -0.5 * w.sum().item()], dtype=torch.float64))  # boundary through 0.5
    u = 0.03 * (2 * torch.rand(n, D, generator=g, dtype=torch.float64) - 1)
    target = 0.02 + 0.13 * torch.rand(n, generator=g, dtype=torch.float64)
    side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    alpha = (target * side * w.abs().sum() - u @ w) / w.abs().sum()
    x = (0.5 + u + alpha[:, None] * w.sign()).reshape(n, 1, 4, 5)
    with torch.no_grad():
        m = x.flatten(1) @ w + (lin.bias[1] - lin.bias[0])
    y = (m > 0).long()
    return x, y, m.abs() / w.abs().sum()


def test_rays_finds_the_exact_linf_distance_of_a_linear_classifier():
    model, lin = _linear()
    x, y, dist = _points(lin)
    assert dist.max() < 0.151 and dist.min() > 0.019 and ((x > 0.28) & (x < 0.72)).all()
    att = RayS(eps=0.0, queries=800)
    _, radius, used = att.search(model, x, y)
    tol = 1e-3 / D ** 0.5
    # no adversarial point is closer than the exact distance; the search ends within its tolerance above it
    assert (radius >= dist - 1e-12).all()
    assert (radius - dist <= tol + 1e-12).all(), (radius - dist).max()
    assert (used <= 800).all()


def test_rays_robust_accuracy_is_the_fraction_beyond_eps():
    model, lin = _linear()
    x, y, dist = _points(lin, n=32, seed=2)
    eps = float(dist.median())
    eps += 0.5 * float(dist[dist > eps].min() - eps)  # no distance within the tolerance of ε
    att = RayS(eps=eps, queries=800)
    xa = att(model, x, y)
    pred = model(xa).argmax(1)
    assert torch.equal(pred == y, dist > eps)
    assert (xa - x).abs().flatten(1).amax(1).max() <= eps + 1e-12
    assert torch.equal(xa[dist > eps], x[dist > eps])  # nothing found in the ball: the input itself


def test_rays_uses_only_the_predicted_label_and_stops_at_the_budget():
    model, lin = _linear()
    x, y, _ = _points(lin)

    class HardLabel(nn.Module):  # what a decision-based attacker sees
        def forward(self, z):
            return F.one_hot(model(z).argmax(1), 2).double()

    a = RayS(eps=0.05, queries=500).search(model, x, y)
    b = RayS(eps=0.05, queries=500).search(HardLabel(), x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    small = RayS(eps=0.0, queries=37).search(model, x, y)[2]
    assert (small == 37).all()  # nothing found in the ball: the whole budget, never more


def test_rays_misclassified_input_is_broken_at_radius_zero_with_one_query():
    model, lin = _linear()
    x, y, _ = _points(lin, n=4)
    y = 1 - y  # every input misclassified
    xa, radius, used = RayS(eps=0.01, queries=100).search(model, x, y)
    assert torch.equal(xa, x) and (radius == 0).all() and (used == 1).all()

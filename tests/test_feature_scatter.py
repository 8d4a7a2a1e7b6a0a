"""Feature Scattering: the Sinkhorn transport cost against exact optimal transport (brute force over permutations and
a linear program), the plan's marginals, the cost function, the scattering step and the label-smoothed loss."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from conftest import tiny_model
from robust_core.config import MethodConfig
from robust_core.methods import Batch, StepContext, build_method
from robust_core.methods._ops import smoothed_ce
from robust_core.methods.feature_scatter import cosine_cost, ot_loss, sinkhorn_plan

CTX = StepContext(epoch=0, step=0, epochs=2, steps_per_epoch=5, n_train=40)


def exact_ot(cost: np.ndarray) -> float:
    """min Σ T_ij C_ij over T ≥ 0 with rows summing to 1/m and columns to 1/n (a linear program)."""
    m, n = cost.shape
    a_eq = np.zeros((m + n, m * n))
    for i in range(m):
        a_eq[i, i * n:(i + 1) * n] = 1
    for j in range(n):
        a_eq[m + j, j::n] = 1
    b_eq = np.r_[np.full(m, 1 / m), np.full(n, 1 / n)]
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.success
    return float(res.fun)


def test_cosine_cost_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    want = torch.tensor([[max(0.0, 1 - float(F.cosine_similarity(a[i], b[j], dim=0))) for j in range(5)]
                         for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(cosine_cost(a, b), want)
    assert float(cosine_cost(a, a).diagonal().abs().max()) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_cost_matches_exact_assignment_by_brute_force(seed):
    """Uniform marginals on n = n points: the optimal plan is a permutation / n (Birkhoff), so the exact OT cost is
    the best assignment, found here by trying all 6! permutations."""
    g = torch.Generator().manual_seed(seed)
    n = 6
    cost = cosine_cost(torch.randn(n, 4, generator=g, dtype=torch.float64),
                       torch.randn(n, 4, generator=g, dtype=torch.float64))
    c = cost.numpy()
    exact = min(sum(c[i, s[i]] for i in range(n)) for s in itertools.permutations(range(n))) / n
    sharp = float((sinkhorn_plan(cost, 2e-3, iters=5000, tol=1e-10) * cost).sum())
    assert sharp == pytest.approx(exact, abs=8e-3)  # entropic bias ≲ ε·log(n²)
    assert exact_ot(c) == pytest.approx(exact, abs=1e-9)  # the LP agrees with the brute force


def test_sinkhorn_rectangular_against_linear_program_and_marginals():
    g = torch.Generator().manual_seed(3)
    cost = cosine_cost(torch.randn(4, 5, generator=g, dtype=torch.float64),
                       torch.randn(7, 5, generator=g, dtype=torch.float64))
    t = sinkhorn_plan(cost, 2e-3, iters=5000, tol=1e-10)
    torch.testing.assert_close(t.sum(1), torch.full((4,), 1 / 4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(t.sum(0), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float((t * cost).sum()) == pytest.approx(exact_ot(cost.numpy()), abs=8e-3)


def test_ot_loss_per_example_sums_to_the_transport_cost_and_its_gradient_is_the_plans():
    g = torch.Generator().manual_seed(4)
    nat = torch.randn(5, 3, generator=g, dtype=torch.float64)
    pert = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    per = ot_loss(nat, 0.01, 100, 0.1)(pert)
    assert per.shape == (5,)
    t = sinkhorn_plan(cosine_cost(nat, pert.detach()), 0.01)
    torch.testing.assert_close(per.sum(), (t * cosine_cost(nat, pert)).sum())
    (grad,) = torch.autograd.grad(per.sum(), pert)  # envelope theorem: Σ_ij T_ij ∇C_ij with T held fixed
    ref = pert.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad((t * cosine_cost(nat, ref)).sum(), ref)
    torch.testing.assert_close(grad, want)


def test_label_smoothing_as_the_authors_code():
    y = torch.tensor([0, 3, 9])
    logits = torch.randn(3, 10, dtype=torch.float64)
    t = torch.full((3, 10), 0.5 / 9, dtype=torch.float64)
    t[torch.arange(3), y] = 0.5
    torch.testing.assert_close(smoothed_ce(logits, y, 0.5), -(t * F.log_softmax(logits, -1)).sum(1).mean())
    torch.testing.assert_close(smoothed_ce(logits, y, 0.0), F.cross_entropy(logits, y))


def test_scattering_step_raises_the_transport_cost_and_the_loss_is_smoothed_ce_on_it(mnist5k_info):
    model = tiny_model("mlp", mnist5k_info, torch.float64).train()
    method = build_method(MethodConfig(name="feature_scatter", params={"eps": 0.1, "step_size": 0.02}), model,
                          mnist5k_info)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, *mnist5k_info.shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    torch.manual_seed(0)
    x_adv = method.scatter(model, x)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1
    torch.manual_seed(0)
    x0 = (x + (torch.rand_like(x) * 2 - 1) * 0.1).clamp(0, 1)  # the same random start
    model.eval()
    with torch.no_grad():
        nat = model(x)
        d0 = ot_loss(nat, 0.01, 100, 0.1)(model(x0)).sum()
        d1 = ot_loss(nat, 0.01, 100, 0.1)(model(x_adv)).sum()
    model.train()
    assert d1 > d0  # the step scatters the perturbed features away from the natural ones
    method.scatter = lambda m, xx: x_adv
    out = method.loss(model, Batch(x, y, torch.arange(16)), CTX)
    torch.testing.assert_close(out.loss, smoothed_ce(model(x_adv), y, 0.5))

"""Feature Scattering adversarial training (Zhang & Wang, "Defense Against Adversarial Attacks Using Feature
Scattering-based Adversarial Training", NeurIPS 2019; the main baseline of ATLD, ``../shared/papers/atld.txt`` §V,
tables I, II, IV and figures 4–5; the paper's own text is not in ``../shared/papers``, so the details below follow
its algorithm as the authors' code, github Haichao-Zhang/FeatureScatter, implements it).

The perturbation is unsupervised and couples the batch: it *scatters* the perturbed examples' features away from the
natural ones by maximising the optimal-transport distance between the two empirical feature distributions,

    D(μ, ν) = min_{T ∈ Π(1/n, 1/n)} Σ_ij T_ij C_ij,   C_ij = max(0, 1 − cos(f(x_i), f(x'_j))),

with f the logits (the authors' code), μ = Σ δ_{f(x_i)}/n the natural and ν = Σ δ_{f(x'_j)}/n the perturbed codes.
x' = Π_{B(x,ε)∩[0,1]}(x₀ + α·sign(∇_{x'} D)), x₀ = x + U(−ε, ε): one signed step (the authors' setting), through
the one attack loop. The classifier then minimises the label-smoothed cross-entropy on x' (true class 1 − s, the
others s/(C − 1), s = 0.5; the loss is on x' only, like PGD-AT).

D is computed with Sinkhorn's algorithm in the log domain (entropic regularisation ``sinkhorn_eps`` in cost units,
uniform marginals; stop when the dual potential u moves less than ``sinkhorn_tol`` in L1, or after
``sinkhorn_iters``). With the authors' loose tolerance (0.1 at ε = 0.01) it stops after a few iterations, so the
plan's row sums are only roughly 1/n: the perturbation follows a coarse transport plan, as in their code (the tests
check the algorithm against exact OT at tight settings). The plan T is computed without gradient and the loss is Σ T ⊙ C: by the
envelope theorem its gradient is the OT distance's (the authors differentiate through the iterations, which adds
the plan's own dependence on C; for a sign step the two agree up to the entropic bias).

Threat model (training): L∞ ball of radius ε, pixel units, intersected with [0, 1].
Modes: the perturbation is computed with the model in eval mode (the authors' ``aux_net.eval()``), restored
afterwards; ``attack_mode='train'`` uses training mode with BN running statistics frozen instead. The training pass
at x' updates BN statistics.

Params:
    eps: L∞ radius ε, pixel units. Default 8/255 (authors' CIFAR setting).
    step_size: α, pixel units; None = ε. Default None (authors).
    steps: ascent steps on D. Default 1 (authors).
    label_smoothing: s in [0, 1). Default 0.5 (authors).
    sinkhorn_eps: entropic regularisation, cost units. Default 0.01 (authors).
    sinkhorn_iters: maximum Sinkhorn iterations. Default 100 (authors).
    sinkhorn_tol: stopping tolerance on Σ|Δu|. Default 0.1 (authors).
    attack_mode: ``eval`` (default, authors) or ``train``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.attacks.loop import perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.config import Number
from robust_core.methods._ops import smoothed_ce, widen
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.methods.pgd_at import attack_context
from robust_core.registry import METHODS


def cosine_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C_ij = max(0, 1 − cos(a_i, b_j)) for rows of a (m, d) and b (n, d)."""
    cos = F.normalize(a, dim=1, eps=1e-6) @ F.normalize(b, dim=1, eps=1e-6).T
    return (1 - cos).clamp_min(0)


@torch.no_grad()
def sinkhorn_plan(cost: torch.Tensor, eps: float, iters: int = 100, tol: float = 0.1) -> torch.Tensor:
    """Entropic OT plan between uniform marginals for ``cost`` (m, n): log-domain Sinkhorn, T = exp((−C + u_i + v_j)/ε)
    with rows summing to 1/m and columns to 1/n (at convergence).

    Stops updating once an iteration moves u by less than ``tol`` (L1), as the authors' code does, but decides that
    on the device: the remaining iterations run with the update masked off (same plan as breaking out of the loop,
    and no host synchronisation inside a training step; ``tests/test_step_sync.py``)."""
    m, n = cost.shape
    log_mu, log_nu = -torch.log(cost.new_tensor(float(m))), -torch.log(cost.new_tensor(float(n)))
    u, v = cost.new_zeros(m), cost.new_zeros(n)
    done = torch.zeros((), dtype=torch.bool, device=cost.device)
    for _ in range(iters):
        u_new = eps * (log_mu - torch.logsumexp((-cost + u[:, None] + v[None, :]) / eps, dim=1)) + u
        v_new = eps * (log_nu - torch.logsumexp((-cost + u_new[:, None] + v[None, :]) / eps, dim=0)) + v
        u, v, moved = torch.where(done, u, u_new), torch.where(done, v, v_new), (u_new - u).abs().sum()
        done = done | (moved < tol)
    return torch.exp((-cost + u[:, None] + v[None, :]) / eps)


def ot_loss(nat: torch.Tensor, eps: float, iters: int, tol: float):
    """Per perturbed example j, Σ_i T_ij C_ij against the natural codes ``nat`` (their sum is the OT distance)."""
    nat = widen(nat.detach())

    def fn(pert: torch.Tensor) -> torch.Tensor:
        cost = cosine_cost(nat, widen(pert))
        return (sinkhorn_plan(cost.detach(), eps, iters, tol) * cost).sum(0)

    return fn


@METHODS.register("feature_scatter")
class FeatureScatter(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        eps: Number = Field(8 / 255, gt=0, le=1)
        step_size: Number | None = Field(None, gt=0, le=1)
        steps: int = Field(1, ge=1, le=100)
        label_smoothing: float = Field(0.5, ge=0, lt=1)
        sinkhorn_eps: float = Field(0.01, gt=0)
        sinkhorn_iters: int = Field(100, ge=1, le=10000)
        sinkhorn_tol: float = Field(0.1, ge=0)
        attack_mode: Literal["train", "eval"] = "eval"

    def scatter(self, model, x: torch.Tensor) -> torch.Tensor:
        """x': ``steps`` signed ascent steps on the OT distance between natural and perturbed logits."""
        p = self.p
        with attack_context(model, p.attack_mode):
            with torch.no_grad():
                nat = model(x)
            loss = ot_loss(nat, p.sinkhorn_eps, p.sinkhorn_iters, p.sinkhorn_tol)
            step = p.step_size if p.step_size is not None else p.eps
            return perturb(model, x, loss, ThreatModel("linf", p.eps), p.steps, step, random_start=True,
                           check_range=False)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.scatter(model, batch.x)
        logits_adv = model(x_adv)
        ce = smoothed_ce(logits_adv, batch.y, self.p.label_smoothing)
        adv_acc = (logits_adv.argmax(1) == batch.y).float().mean()
        return LossOutput(ce, {"ce_ls": ce.detach(), "adv_acc": adv_acc.detach()}, None)

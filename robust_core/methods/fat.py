"""FAT (Kim, Choi & Kim, "Understanding and Improving Virtual Adversarial Training", arXiv:1909.06737,
``../shared/papers/fat.txt``): VAT whose virtual adversarial direction has its sign chosen (§4.2), plus "bad samples"
(§4.1.2) trained against with a (K+1)-class loss (§4.3, eq. (8)). Semi-supervised.

With g(x) ∈ R^K the pre-softmax vector (logits) and the fake class K+1 given the fixed logit 0, the (K+1)-way softmax
is p̃_k(x) = exp g_k / (1 + Σ_k' exp g_k') for k ≤ K and p̃_{K+1}(x) = 1 / (1 + Σ_k' exp g_k'):

    v      = unit top eigenvector of H = ∇²_r KL(p(x) ‖ p(x + r)) at r = 0, by power iteration (as in ``vat``; with
             the default ``direction: exact`` a real eigen-direction, not a finite-scale secant);
    s      = argmax_{s ∈ {+1, −1}} KL(p(x) ‖ p(x + s ε v))   (§4.2: "there always exist two dominant eigenvectors,
             ±v, and the sign should be selected carefully"; per example);
    L^VAT  = KL(p(x) ‖ p(x + s ε v)),  clean side detached (eq. (1)–(2));
    x_bad  = x + C · s v   (§4.1.2: x + C r_advr/‖r_advr‖), kept only when max_k p(k | x_bad) ≤ 1 − α
             (softmax over the K real classes, as the classifier's p; no gradient through the filter);
    L^true = −Σ_{k≤K} p̃_k(x) log p̃_k(x)          (§4.3, below eq. (8); unlabeled batch)
    L^fake = −log p̃_{K+1}(x_bad) = softplus(LSE(g(x_bad)))   (§4.3; kept bad samples)
    loss   = CE(labeled) + α_LDS · L^VAT + λ(t) · (L^true + L^fake)                      (eq. (8), α_LDS = 1)
    λ(t)   = min(λ_max, λ_step · epoch), epoch 0-based: 0, 0.1, …, 1 (§5.1: "We set λ by zero and increase it by 0.1
             after every training epoch up to one").
CE and L^VAT use the K-way softmax of the classifier (eq. (2); Bad GAN's eq. (3) conditions on y ≤ K the same way).
L^true and L^fake are computed from log-softmax over (g, 0), so they are finite and exact at logits of any size.
Note that the paper's L^true is small both when p̃ is confident on one real class and when p̃_{K+1} → 1; it is not
Bad GAN's −log(1 − p̃_{K+1}) (eq. (3), second term), which this file used before issue 14.

Threat model (training-time only): L2 ball of radius ε (pixel units, [0, 1] inputs) for the virtual adversarial
perturbation; bad samples lie at L2 distance C along the same direction; neither is clipped to the data box (as in
VAT). Regulariser on the unlabeled batch in semi-supervised runs, on the labeled batch otherwise.
BatchNorm: the clean passes (labeled, unlabeled) update running statistics; every pass at a perturbed input (power
iteration, ±ε v, bad samples) leaves them untouched.

Params (defaults: Table 2's optimum for MNIST with 100 labels, "the other parameters fixed at the optimal values":
ε = 1.5, C = 2, α = 0.01; §5.2, ``fat.txt`` l. 212):
    eps: L2 radius ε of the virtual adversarial perturbation, pixel units. Default 1.5.
    power_iterations, direction, xi: how v is found, as in ``vat`` (defaults 1, ``exact``, 10.0).
    alpha: weight of L^VAT, unitless. Default 1.0 (eq. (8) has no weight). Not the paper's α: that is ``bad_alpha``.
    bad_scale: the paper's C, L2 distance of the bad samples from x, pixel units. Default 2.0.
    bad_alpha: the paper's α of the confidence filter, kept when max_k p(k|x_bad) ≤ 1 − α; in [0, 1). Default 0.01.
    lam_max: final λ. Default 1.0 (§5.1; not searched).
    lam_step: λ's increment per epoch. Default 0.1 (§5.1; not searched).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.config import Number
from robust_core.methods._ops import kl_per_example, widen
from robust_core.methods.base import Batch, LossOutput, Method, StepContext
from robust_core.methods.vat import VATDirectionParams
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


def k_plus_one_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log p̃ (B, K+1): log-softmax over (g_1, …, g_K, 0), the fake class K+1 last (widened to ≥ float32)."""
    g = widen(logits)
    return F.log_softmax(torch.cat([g, g.new_zeros(g.shape[0], 1)], dim=-1), dim=-1)


def loss_true(logits: torch.Tensor) -> torch.Tensor:
    """Per example L^true = −Σ_{k≤K} p̃_k log p̃_k over the real classes of the (K+1)-way softmax (fat.txt §4.3)."""
    logp = k_plus_one_log_softmax(logits)[:, :-1]
    return -(logp.exp() * logp).sum(-1)


def loss_fake(logits: torch.Tensor) -> torch.Tensor:
    """Per example L^fake = −log p̃_{K+1} = softplus(logsumexp(g)) (fat.txt §4.3)."""
    return F.softplus(torch.logsumexp(widen(logits), dim=-1))


def choose_sign(model, x: torch.Tensor, d: torch.Tensor, clean: torch.Tensor, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example sign s ∈ {+1, −1} maximising KL(p(x) ‖ p(x + s ε d)); returns (s shaped like x's batch dim
    broadcastable to x, the KL at the chosen sign with gradient to the model). BN statistics untouched."""
    with frozen_bn_stats(model):
        kp = kl_per_example(clean, model(x + eps * d))
        kn = kl_per_example(clean, model(x - eps * d))
    pick = kp >= kn
    sign = torch.where(pick, 1.0, -1.0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return sign, torch.where(pick, kp, kn)


@METHODS.register("fat")
class FAT(Method):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(VATDirectionParams):
        eps: Number = Field(1.5, gt=0)
        alpha: float = Field(1.0, ge=0)
        bad_scale: Number = Field(2.0, gt=0)
        bad_alpha: float = Field(0.01, ge=0, lt=1)
        lam_max: float = Field(1.0, ge=0)
        lam_step: float = Field(0.1, ge=0)

    def lam(self, epoch: int) -> float:
        """λ at a 0-based epoch: 0, λ_step, 2 λ_step, … up to λ_max (rounded to 12 digits: 0.1 · 3 is 0.3)."""
        return min(self.p.lam_max, round(self.p.lam_step * epoch, 12))

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p = self.p
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        if batch.ux is not None:
            xu = batch.ux
            logits_u = model(xu)  # clean unlabeled pass: updates BN statistics, carries L^true's gradient
        else:
            xu, logits_u = batch.x, logits
        clean = logits_u.detach()
        with frozen_bn_stats(model):  # the power iteration's passes are perturbed-input passes here
            d, _ = p.vadv_direction(model, xu)
        sign, kl = choose_sign(model, xu, d, clean, p.eps)
        lds = kl.mean()
        loss = ce + p.alpha * lds
        logs = {"ce": ce.detach(), "lds": lds.detach()}
        lam = self.lam(ctx.epoch)
        logs["lam"] = lam
        if lam > 0:
            x_bad = (xu + p.bad_scale * sign * d).detach()
            with frozen_bn_stats(model):
                logits_bad = model(x_bad)
            keep = (F.softmax(widen(logits_bad.detach()), -1).amax(-1) <= 1 - p.bad_alpha).to(logits_bad.dtype)
            l_fake = (keep * loss_fake(logits_bad)).sum() / keep.sum().clamp_min(1)
            l_true = loss_true(logits_u).mean()
            loss = loss + lam * (l_true + l_fake)
            logs.update(l_true=l_true.detach(), l_fake=l_fake.detach(), bad_kept=keep.mean())
        return LossOutput(loss, logs, logits)

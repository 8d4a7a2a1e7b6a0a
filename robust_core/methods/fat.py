"""FAT (Kim, Choi & Kim, "Understanding and Improving Virtual Adversarial Training", arXiv:1909.06737): VAT whose
virtual adversarial direction has its sign chosen, plus "bad samples" trained against with the K+1-class losses of
bad-GAN semi-supervised learning. Semi-supervised.

With f(x) ∈ R^K the pre-softmax vector (logits) and the fake class K+1 given the fixed logit 0
(p(K+1|x) = 1 / (1 + Σ_k exp f_k(x))):

    d      = unit top eigenvector of ∇²_r KL(p(x) ‖ p(x + r)) by power iteration (``_ops.vat_direction``);
    s      = argmax_{s ∈ {+1, −1}} KL(p(x) ‖ p(x + s ε d))   (per example: the eigenvector's sign is arbitrary,
             the higher-order terms are not);
    LDS    = KL(p(x) ‖ p(x + s ε d)),  clean side detached;
    x_bad  = x + C · s d   (C·r/‖r‖ with r = s d), kept only when max_k p(k | x_bad) ≤ 1 − α_bad
             (softmax over the K real classes, no gradient through the filter);
    L_true = E_x  −log(1 − p(K+1|x))   = E softplus(−LSE(f(x)))        (unlabeled batch)
    L_fake = E_bad −log p(K+1|x_bad)   = E softplus( LSE(f(x_bad)))    (kept bad samples)
    loss   = CE(labeled) + α·LDS + λ(t)·(L_true + L_fake),   λ(t) = min(λ_max, λ_step · epoch)  (0 in epoch 0).

L_true and L_fake use logsumexp and softplus, so they are finite and exact at logits of any size (1e4 included).

Threat model (training-time only): L2 ball of radius ε (pixel units, [0, 1] inputs) for the virtual adversarial
perturbation; bad samples lie at L2 distance C along the same direction; neither is clipped to the data box (as in
VAT). Regulariser on the unlabeled batch in semi-supervised runs, on the labeled batch otherwise.
BatchNorm: the clean passes (labeled, unlabeled) update running statistics; every pass at a perturbed input (power
iteration, ±ε d, bad samples) leaves them untouched.

Params:
    eps: L2 radius ε of the virtual adversarial perturbation, pixel units. Default 2.0 (VAT's MNIST value).
    alpha: weight α of the LDS term, unitless. Default 1.0.
    power_iterations: power-iteration steps. Default 1.
    direction: ``finite_difference`` (with ``xi``, default) or ``exact`` (the ξ → 0 limit), as in ``vat``.
    xi: finite-difference step, pixel units (``finite_difference`` only). Default 10.0, as in ``vat``.
    bad_scale: distance C of the bad samples from x, L2, pixel units. Default 4.0 (our choice: 2ε).
    bad_alpha: α_bad of the confidence filter, kept when max_k p(k|x_bad) ≤ 1 − α_bad; in [0, 1). Default 0.1.
    lam_max: final weight λ_max of L_true + L_fake. Default 1.0.
    lam_step: warm-up increment of λ per epoch (λ = 0 in the first epoch). Default 0.1.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.config import Number
from robust_core.methods._ops import vat_direction, widen
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of each example for distributions given by logits (log-softmax, stable)."""
    logp = F.log_softmax(widen(p_logits), dim=-1)
    logq = F.log_softmax(widen(q_logits), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def loss_true(logits: torch.Tensor) -> torch.Tensor:
    """Per example −log(1 − p(K+1|x)) with the fake class at logit 0: softplus(−logsumexp(f))."""
    return F.softplus(-torch.logsumexp(widen(logits), dim=-1))


def loss_fake(logits: torch.Tensor) -> torch.Tensor:
    """Per example −log p(K+1|x) with the fake class at logit 0: softplus(logsumexp(f))."""
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

    class Params(MethodParams):
        eps: Number = Field(2.0, gt=0)
        alpha: float = Field(1.0, ge=0)
        power_iterations: int = Field(1, ge=1, le=10)
        direction: Literal["exact", "finite_difference"] = "finite_difference"
        xi: Number = Field(10.0, gt=0)
        bad_scale: Number = Field(4.0, gt=0)
        bad_alpha: float = Field(0.1, ge=0, lt=1)
        lam_max: float = Field(1.0, ge=0)
        lam_step: float = Field(0.1, ge=0)

    def lam(self, epoch: int) -> float:
        return min(self.p.lam_max, self.p.lam_step * epoch)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p = self.p
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        if batch.ux is not None:
            xu = batch.ux
            logits_u = model(xu)  # clean unlabeled pass: updates BN statistics, carries L_true's gradient
        else:
            xu, logits_u = batch.x, logits
        clean = logits_u.detach()
        with frozen_bn_stats(model):  # the power iteration's passes are perturbed-input passes here
            d, _ = vat_direction(model, xu, p.power_iterations, p.direction, p.xi)
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

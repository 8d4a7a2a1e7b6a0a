"""ATLD (Qian, Zhang, Huang et al., "Improving Model Robustness with Latent Distribution Locally and Globally",
arXiv:2107.04401): adversarial training guided by a discriminator on the classifier's latent output (its logits),
with inference-time manifold transformation (IMT).

Discriminator D on the logits l = f(x) with two heads: a real/adversarial logit a(l) (p_adv = σ(a)) and a C-class
head c(l). With x̃ = clip_[0,1](x + δ₀ + ε·sign(∇_x L_gen)), δ₀ ~ U[−ε, ε] (one signed step from a random start, in the
L∞ ball; no labels needed):

    L_gen(x̃)  = softplus(a(f(x̃)))                      the discriminator's loss for calling x̃ natural (−log(1−p_adv))
    L_D       = BCE(a(f(x)), natural) + BCE(a(f(x̃)), adversarial) + CE(c(f(x)), y) + CE(c(f(x̃)), y)
    L_cls     = CE_ls(f(x̃), y) + w·[ BCE(a(f(x̃)), natural) + CE(c(f(x̃)), y) ]

CE_ls is the cross-entropy with label smoothing (targets (1 − s)·onehot(y) + s/C, summing to one). The classifier
minimises L_cls (it learns on latent-manifold adversarial examples and pulls their latent codes onto the natural
manifold, i.e. fools D); D minimises L_D.

One optimiser, simultaneous updates (our choice, instead of alternating by step parity): L_D is computed on
detached logits (no gradient reaches the classifier) and the D terms inside L_cls are computed with detached copies
of D's weights (``torch.func.functional_call``; gradient reaches the classifier through D, none reaches D). The loop
then minimises L_cls + L_D in one backward pass and one step: each player descends its own loss, so the classifier
gets the non-saturating generator objective rather than −L_D (which plain gradient reversal would give).

Inference (``inference_model``): ``imt='none'`` (ATLD−) returns the classifier. ``imt='imt'``: x' = clip(x − ε_imt ·
sign(∇_x p_adv(x))), one signed step that lowers D's adversarial probability, then f(x'). ``imt='imt_plus'``
(ATLD+): the step is halved for the examples whose p_adv(x) ∈ [0.3, 0.7]. The wrapper is differentiable end to end:
the step's sign and size are piecewise constant in x (zero derivative a.e.), so ∂f(x')/∂x = ∂f/∂x' · ∂clip/∂x exactly.
``discriminator_loss`` (method and wrapper) gives the per-example L_gen for adaptive attacks.

Threat model (training): L∞ ball of radius ε around x, in pixel units, intersected with [0, 1].
BatchNorm: the natural pass and the training pass at x̃ update running statistics (the classifier is trained on
x̃, as in the reference training); the attack-generation pass leaves them untouched.

Params:
    eps: L∞ radius ε of the training perturbation, pixel units. Default 8/255 (paper, CIFAR-10).
    step_size: size of the signed step, pixel units; None = ε. Default None.
    label_smoothing: s in [0, 1). Default 0.5 (the Feature Scattering recipe ATLD builds on).
    disc_weight: w, weight of the fool-the-discriminator terms in L_cls. Default 0.1 (our choice: at w = 1 the
        classifier learns to push its logits where D's heads extrapolate and its accuracy collapses in short MNIST
        runs; tune it).
    disc_hidden: hidden width of D's two-layer MLP trunk. Default 128.
    imt: ``none`` | ``imt`` | ``imt_plus``. Default ``imt_plus`` (ATLD+).
    imt_eps: IMT step size, L∞, pixel units; None = ε. Default None.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from robust_core.config import Number
from robust_core.methods._ops import widen
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


class LatentDiscriminator(nn.Module):
    """D(l): logits (N, C) -> (adversarial logit (N,), class logits (N, C))."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.adv = nn.Linear(hidden, 1)
        self.cls = nn.Linear(hidden, num_classes)

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(logits)
        return self.adv(h).squeeze(-1), self.cls(h)


def smoothed_targets(y: torch.Tensor, num_classes: int, s: float, dtype: torch.dtype) -> torch.Tensor:
    """(1 − s)·onehot(y) + s/C: each row sums to one."""
    return F.one_hot(y, num_classes).to(dtype) * (1 - s) + s / num_classes


def imt_step_scale(p_adv: torch.Tensor, plus: bool) -> torch.Tensor:
    """Factor on the IMT step per example: 0.5 where ATLD+ and p_adv ∈ [0.3, 0.7], else 1."""
    if not plus:
        return torch.ones_like(p_adv)
    half = (p_adv >= 0.3) & (p_adv <= 0.7)
    return torch.where(half, 0.5, 1.0).to(p_adv.dtype)


def _is_logits(t: torch.Tensor, num_classes: int) -> bool:
    return t.dim() == 2 and t.shape[1] == num_classes


class IMTModel(nn.Module):
    """Classifier preceded by the inference-time manifold transformation; see ``atld`` module docstring."""

    def __init__(self, model: nn.Module, disc: LatentDiscriminator, eps: float, plus: bool) -> None:
        super().__init__()
        self.model, self.disc, self.eps, self.plus = model, disc, eps, plus
        self.num_classes = disc.cls.out_features

    def discriminator_loss(self, logits_or_x: torch.Tensor) -> torch.Tensor:
        """Per-example −log(1 − p_adv): small when D calls the input natural. Takes logits (N, C) or inputs."""
        t = logits_or_x
        logits = t if _is_logits(t, self.num_classes) else self.model(t)
        return F.softplus(widen(self.disc(logits)[0]))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # evaluation runs under no_grad; IMT needs ∇_x p_adv
            xr = x.detach().requires_grad_(True)
            with frozen_bn_stats(self.model):
                p_adv = torch.sigmoid(widen(self.disc(self.model(xr))[0]))
            (g,) = torch.autograd.grad(p_adv.sum(), xr)
        step = self.eps * imt_step_scale(p_adv.detach(), self.plus).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (x - step * g.sign()).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


@METHODS.register("atld")
class ATLD(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        eps: Number = Field(8 / 255, gt=0, le=1)
        step_size: Number | None = Field(None, gt=0, le=1)
        label_smoothing: float = Field(0.5, ge=0, lt=1)
        disc_weight: float = Field(0.1, ge=0)
        disc_hidden: int = Field(128, ge=1, le=4096)
        imt: Literal["none", "imt", "imt_plus"] = "imt_plus"
        imt_eps: Number | None = Field(None, gt=0, le=1)

    def __init__(self, params, model, info, n_train: int = 0) -> None:
        super().__init__(params, model, info, n_train)
        self.disc = LatentDiscriminator(info.num_classes, params.disc_hidden)

    def modules(self) -> dict[str, nn.Module]:
        return {"disc": self.disc}

    def discriminator_loss(self, model: nn.Module, logits_or_x: torch.Tensor) -> torch.Tensor:
        """Per-example L_gen = −log(1 − p_adv) for logits (N, C) or inputs (run through ``model``)."""
        return IMTModel(model, self.disc, 0.0, False).discriminator_loss(logits_or_x)

    def adversarial(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x̃: one signed ascent step on L_gen from a uniform random start; BN statistics untouched."""
        p = self.p
        step = p.step_size if p.step_size is not None else p.eps
        x0 = (x + torch.empty_like(x).uniform_(-p.eps, p.eps)).clamp(0, 1).detach().requires_grad_(True)
        with frozen_bn_stats(model):
            lg = self.discriminator_loss(model, model(x0)).sum()
        (g,) = torch.autograd.grad(lg, x0)
        x_adv = torch.min(torch.max(x0.detach() + step * g.sign(), x - p.eps), x + p.eps)
        return x_adv.clamp(0, 1).detach()

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p, k = self.p, self.info.num_classes
        x, y = batch.x, batch.y
        logits = model(x)  # natural pass (updates BN statistics)
        x_adv = self.adversarial(model, x)
        logits_adv = model(x_adv)  # training pass at x̃ (updates BN statistics)

        # classifier: smoothed CE on x̃ + fool D (D's weights detached: no gradient to D from here)
        frozen = {n: t.detach() for n, t in self.disc.named_parameters()}
        a_adv, c_adv = functional_call(self.disc, frozen, (logits_adv,))
        targets = smoothed_targets(y, k, p.label_smoothing, widen(logits_adv).dtype)
        ce_ls = torch.sum(-targets * F.log_softmax(widen(logits_adv), -1), -1).mean()
        fool = F.softplus(widen(a_adv)).mean() + F.cross_entropy(widen(c_adv), y)
        l_cls = ce_ls + p.disc_weight * fool

        # discriminator: natural vs adversarial and class heads, on detached logits
        a_n, c_n = self.disc(logits.detach())
        a_a, c_a = self.disc(logits_adv.detach())
        l_disc = (F.softplus(-widen(a_a)).mean() + F.softplus(widen(a_n)).mean()
                  + F.cross_entropy(widen(c_n), y) + F.cross_entropy(widen(c_a), y))
        d_acc = 0.5 * ((a_n < 0).float().mean() + (a_a > 0).float().mean())
        logs = {"ce_ls": ce_ls.detach(), "fool": fool.detach(), "disc": l_disc.detach(), "disc_acc": d_acc}
        return LossOutput(l_cls + l_disc, logs, logits)

    def adaptive_objectives(self, model: nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """Per-example losses for adaptive attacks through the whole inference pipeline (ATLD table V), each
        differentiable in x and maximised by the attacker (the evaluation adds the classifier's own CE):

        ``discriminator``: CE of D's class head on the logits the deployed model produces (after IMT), i.e. the
        attacker uses the discriminator's class prediction as the loss; ``both``: classifier CE + that term.
        (Our reading of "discriminator loss" in table V; the paper text was not available to check it.)
        """
        wrapped = self.inference_model(model)

        def disc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(widen(self.disc(wrapped(x))[1]), y, reduction="none")

        def both(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(widen(wrapped(x)), y, reduction="none") + disc(x, y)

        return {"discriminator": disc, "both": both}

    def inference_model(self, model: nn.Module) -> nn.Module:
        if self.p.imt == "none":
            return model
        eps = self.p.imt_eps if self.p.imt_eps is not None else self.p.eps
        return IMTModel(model, self.disc, eps, plus=self.p.imt == "imt_plus")

"""Fast-gradient-sign adversarial training (Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015, eq. 6), and the one-step machinery shared with ``at_l2``, ``ro`` and ``ater``.

Loss: α · CE(f(x), y) + (1 − α) · CE(f(x + r), y),  r = ε · sign(∇ₓ CE(f(x), y)).
The gradient is taken at the current parameters from the same clean forward pass and r is a constant (no gradient
flows through it), as in the paper. One step needs no loop: r is the threat model's steepest-ascent step of length ε
(``ThreatModel.step``), so FGSM here and the first step of ``robust_core.attacks.perturb`` are the same formula.
Threat model (training-time only): L∞ ball of radius ε, pixel units (inputs in [0, 1]); x + r is clipped to the data
box [0, 1] when ``clip`` is on (the paper does not clip; clipping keeps training inputs valid images).
BatchNorm: the clean pass is an ordinary training-mode pass (updates running statistics); the perturbed pass uses
batch statistics but leaves running statistics untouched (``update_batch_stats=False`` in Miyato's AT baseline).

Params:
    eps: L∞ radius ε, pixel units. Default 0.25 (the paper's MNIST value, §6; 8/255 is the usual CIFAR value).
    alpha: weight α of the clean term, in [0, 1]; 1 − α weighs the adversarial term. Default 0.5 (paper).
    clip: clip x + r to [0, 1]. Default True.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.attacks.threat import Norm, ThreatModel
from robust_core.config import Number
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


def input_grad_ce(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, ∇ₓ of it per example) with the graph of the CE kept for a later backward to the parameters.

    The CE is summed over the batch so that each example's row of the gradient is the gradient of its own loss
    (the mean would scale every row by 1/B, which matters for an L2-normalised step at tiny gradients).
    """
    xr = x.detach().clone().requires_grad_(True)
    logits = model(xr)
    ce_sum = F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(ce_sum, xr, retain_graph=True)
    return logits, g.detach()


def one_step(x: torch.Tensor, grad: torch.Tensor, threat: ThreatModel, clip: bool = True) -> torch.Tensor:
    """x + (steepest-ascent step of length ε in the threat model's norm), optionally clipped to [0, 1]; detached.

    linf: ε·sign(g) (FGSM); l2: ε·g/‖g‖₂ (Miyato's L2 adversarial direction); l1: ±ε on the single coordinate of
    largest |g| (Shaham et al.). For a linear loss wᵀx each raises the loss by ε‖w‖_* (the dual norm).
    """
    x_adv = x.detach() + threat.step(grad.to(x.dtype), threat.eps)
    return (x_adv.clamp(0.0, 1.0) if clip else x_adv).detach()


class OneStepAT(Method):
    """α · CE(x) + (1 − α) · CE(x + r) with r one steepest-ascent step of length ε in ``norm`` (subclasses pick it)."""

    norm: ClassVar[Norm] = "linf"

    class Params(MethodParams):
        eps: Number = Field(0.25, gt=0)
        alpha: float = Field(0.5, ge=0, le=1)
        clip: bool = True

    def threat(self) -> ThreatModel:
        return ThreatModel(getattr(self.p, "norm", self.norm), self.p.eps)

    def at_terms(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean CE, adversarial CE, clean logits, ∇ₓ summed clean CE); both CEs are batch means with graphs."""
        logits, g = input_grad_ce(model, batch.x, batch.y)
        x_adv = one_step(batch.x, g, self.threat(), self.p.clip)
        with frozen_bn_stats(model):
            ce_adv = F.cross_entropy(model(x_adv), batch.y)
        return F.cross_entropy(logits, batch.y), ce_adv, logits, g

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        ce, ce_adv, logits, _ = self.at_terms(model, batch)
        a = self.p.alpha
        loss = a * ce + (1 - a) * ce_adv
        return LossOutput(loss, {"ce": ce.detach(), "ce_adv": ce_adv.detach()}, logits.detach())


@METHODS.register("at_fgsm")
class ATFGSM(OneStepAT):
    __doc__ = __doc__
    norm = "linf"

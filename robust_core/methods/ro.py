"""Robust optimisation (Shaham, Yamada, Negahban, "Understanding adversarial training: Increasing local stability
of supervised models through robust optimization", Neurocomputing 2018), for the L1, L2 and L∞ balls.

Minimises max_{‖r‖ ≤ ε} CE(f(x + r), y) with the inner maximum replaced by one steepest-ascent step of the loss
linearised at x (their eq. for the first-order approximation):
    r = argmax_{‖r‖ ≤ ε} ∇ₓCEᵀ r  =  ε·sign(g) (L∞),  ε·g/‖g‖₂ (L2),  ±ε on the single coordinate of largest |g| (L1),
then θ is updated on the perturbed batch ONLY: loss = CE(f(x + r), y). For a linear loss wᵀx the step raises the
loss by exactly ε‖w‖₁, ε‖w‖₂, ε‖w‖_∞ respectively (the dual norms).
Threat model (training-time only): the ``norm`` ball of radius ε, pixel units (inputs in [0, 1]); x + r is clipped
to [0, 1] when ``clip`` is on (with clip and ε > 1 the L1 step moves its pixel by less than ε).
BatchNorm: the clean pass only supplies the gradient, so it leaves running statistics untouched; the perturbed pass
is the training pass and updates them. The clean logits (detached) are returned for the train accuracy.

Params:
    norm: ``linf`` (default), ``l2`` or ``l1``: the ball of the threat model.
    eps: radius ε in that norm, pixel units. Default 0.1 (a common L∞ value for MNIST; ε is a property of the threat
        model, so set it per norm and dataset: e.g. L2 1–3 and L1 2–10 on MNIST, L∞ 8/255 on CIFAR).
    clip: clip x + r to [0, 1]. Default True.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from robust_core.attacks.threat import ThreatModel
from robust_core.config import Number
from robust_core.methods.at_fgsm import input_grad_ce, one_step
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


@METHODS.register("ro")
class RO(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        norm: Literal["linf", "l2", "l1"] = "linf"
        eps: Number = Field(0.1, gt=0)
        clip: bool = True

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        with frozen_bn_stats(model):
            logits, g = input_grad_ce(model, batch.x, batch.y)
        x_adv = one_step(batch.x, g, ThreatModel(self.p.norm, self.p.eps), self.p.clip)
        ce_adv = F.cross_entropy(model(x_adv), batch.y)
        ce = F.cross_entropy(logits.detach(), batch.y)
        return LossOutput(ce_adv, {"ce_adv": ce_adv.detach(), "ce": ce}, logits.detach())

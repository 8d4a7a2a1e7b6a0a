"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between Robustness and
Accuracy", ICML 2019).

Loss: CE(f(x), y) + β · KL(p(x) ‖ p(x_adv)), batch means, gradients through both sides of the KL (paper eq. 5 and
its code). x_adv maximises the per-example KL(p̂(x) ‖ p(x')) over x' in the ball ∩ [0, 1], with p̂(x) the clean
prediction computed once and detached, by PGD-k of step ``step_frac``·ε (``robust_core.attacks.perturb``).
The KL is flat (zero gradient) at x' = x, so the attack needs a random start: it starts at a uniformly random point
of the ball (the paper's code starts at x + 0.001·N(0, I)).
Threat model: ``norm`` ball of radius ε, pixel units (inputs in [0, 1]).
Modes: the attack runs with ``attack_mode='eval'`` (default, as the paper's code: ``model.eval()`` during the attack)
or in training mode with BN running statistics frozen; modes are restored. The two training passes (x and x_adv)
are ordinary training-mode passes, as in the paper's code.

Params:
    beta: weight β of the KL term (1/λ in the paper). Default 6.0 (paper, CIFAR-10 and MNIST).
    eps: radius ε, pixel units. Default 0.031 (paper's CIFAR-10 value, ≈ 8/255; MNIST: 0.3).
    steps: PGD steps. Default 10 (CIFAR-10; MNIST: 40).
    step_frac: step size as a fraction of ε. Default 0.007/0.031 ≈ 0.226 (CIFAR-10; MNIST: 0.01/0.3).
    norm: ``linf`` (default, paper), ``l2`` or ``l1``.
    attack_mode: ``eval`` (default) or ``train``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.attacks.loop import perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.config import Number
from robust_core.methods._ops import kl_logits, widen
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.methods.pgd_at import attack_context
from robust_core.registry import METHODS


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per example (B,), distributions given by logits (log-softmax, widened to ≥ float32)."""
    logp = F.log_softmax(widen(p_logits), dim=-1)
    logq = F.log_softmax(widen(q_logits), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@METHODS.register("trades")
class TRADES(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        beta: float = Field(6.0, ge=0)
        eps: Number = Field(0.031, gt=0)
        steps: int = Field(10, ge=1, le=1000)
        step_frac: Number = Field(0.007 / 0.031, gt=0, le=2.5)
        norm: Literal["linf", "l2", "l1"] = "linf"
        attack_mode: Literal["eval", "train"] = "eval"

    def adversary(self, model, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        with attack_context(model, p.attack_mode):
            with torch.no_grad():
                target = model(x).detach()
            return perturb(model, x, lambda logits: kl_per_example(target, logits), ThreatModel(p.norm, p.eps),
                           p.steps, p.step_frac * p.eps, random_start=True, check_range=False)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversary(model, batch.x)
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        kl = kl_logits(logits, model(x_adv))
        return LossOutput(ce + self.p.beta * kl, {"ce": ce.detach(), "kl": kl.detach()}, logits.detach())

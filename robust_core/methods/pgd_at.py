"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018).

Loss: CE(f(x_adv), y) on the adversarial examples only (the saddle-point objective, eq. 2.1), with
x_adv = PGD-k on CE: k steps of size ``step_frac``·ε from a uniformly random point of the ball, each step the
threat model's steepest-ascent step followed by projection onto the ball ∩ [0, 1]
(``robust_core.attacks.perturb``, the one attack loop).
Threat model: ``norm`` ball of radius ε, pixel units (inputs in [0, 1]).
Modes: with ``attack_mode='train'`` (default, as in Madry's code) the attack runs in training mode (batch statistics,
dropout on) with BN running statistics left untouched; ``'eval'`` runs it in eval mode (as TRADES does). Either way
the model's modes are restored, and the training pass on x_adv is an ordinary training-mode pass (it updates the BN
running statistics, as in the paper, where the model only ever sees adversarial inputs).
No clean forward pass is made, so no train accuracy is reported; ``adv_acc`` is the accuracy on x_adv.

Params:
    eps: radius ε, pixel units. Default 8/255 (the paper's CIFAR-10 value; MNIST: 0.3).
    steps: PGD steps k. Default 7 (CIFAR-10; the paper uses 40 on MNIST).
    step_frac: step size as a fraction of ε. Default 0.25 (CIFAR-10: 2/255 of 8/255; MNIST: 0.01/0.3 = 1/30).
    random_start: start from a uniformly random point of the ball (else from x). Default True (paper).
    norm: ``linf`` (default, paper), ``l2`` or ``l1``.
    attack_mode: ``train`` (default) or ``eval``: the mode the attack's forward passes run in.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.attacks.loop import ce_loss, perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.config import Number
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import eval_mode, frozen_bn_stats
from robust_core.registry import METHODS


def attack_context(model, attack_mode: str):
    """Where a training-time attack runs: eval mode, or training mode with BN running statistics frozen."""
    if attack_mode == "eval":
        return eval_mode(model)
    if attack_mode == "train":
        return frozen_bn_stats(model)
    raise ValueError(f"attack_mode={attack_mode!r}; use 'train' or 'eval'")


@METHODS.register("pgd_at")
class PGDAT(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        eps: Number = Field(8 / 255, gt=0)
        steps: int = Field(7, ge=1, le=1000)
        step_frac: Number = Field(0.25, gt=0, le=2.5)
        random_start: bool = True
        norm: Literal["linf", "l2", "l1"] = "linf"
        attack_mode: Literal["train", "eval"] = "train"

    def adversary(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD-k on CE inside the ball ∩ [0, 1], in the mode ``attack_mode`` picks (restored afterwards)."""
        p = self.p
        with attack_context(model, p.attack_mode):
            return perturb(model, x, ce_loss(y), ThreatModel(p.norm, p.eps), p.steps, p.step_frac * p.eps,
                           random_start=p.random_start, check_range=False)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        x_adv = self.adversary(model, batch.x, batch.y)
        logits_adv = model(x_adv)
        ce_adv = F.cross_entropy(logits_adv, batch.y)
        adv_acc = (logits_adv.argmax(1) == batch.y).float().mean()
        return LossOutput(ce_adv, {"ce_adv": ce_adv.detach(), "adv_acc": adv_acc.detach()}, None)

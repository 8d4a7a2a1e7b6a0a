"""xVAT: virtual adversarial training with multiplicative perturbations (Yang & Ji, "Learning with Multiplicative
Perturbations", ICPR 2020, arXiv:1912.01810). Semi-supervised.

Same game as xAT (see ``robust_core/methods/xat.py`` for the hard-concrete mask, the expected-L0 price, the
gradient-reversal trick that plays the min-max in one optimiser step, the transductive/inductive modes and every
parameter), with the label-free divergence

    D = KL(p(x) ‖ p(x ⊙ z)),   the clean side p(x) detached,

so the mask ascends α·D + λ·L0 and the classifier descends CE(labeled) + α·D. D is applied to the unlabeled batch
(masks indexed by ``batch.uidx``) in semi-supervised runs and to the labeled batch (``batch.idx``) otherwise.

BatchNorm: the clean passes (labeled, unlabeled) update running statistics; the pass at x ⊙ z does not.

Params: as xAT — mode ``transductive``, alpha 1.0, lam 1.0, beta 0.66, gamma −0.1, zeta 1.1, init_log_alpha 0.0,
mask_lr_scale 0.01, scale 1.0, generator_width 16; plus
    entmin: weight of the conditional entropy of p(x_u) (the authors' ``ent`` trainers); 0 disables. Default 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.methods._ops import entropy_logits, kl_logits
from robust_core.methods.base import Batch, LossOutput, StepContext
from robust_core.methods.xat import MaskParams, _MultiplicativeBase
from robust_core.registry import METHODS


@METHODS.register("xvat")
class XVAT(_MultiplicativeBase):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(MaskParams):
        entmin: float = Field(0.0, ge=0)

    def divergence(self, model, x_pert, target):
        # target: detached clean logits
        return kl_logits(target, model(x_pert))

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        if batch.ux is not None:
            xu, iu = batch.ux, batch.uidx
            with torch.set_grad_enabled(self.p.entmin > 0):  # only the entropy term needs its graph
                logits_u = model(xu)
        else:
            xu, iu, logits_u = batch.x, batch.idx, logits
        game, kl, l0 = self.perturbation_terms(model, xu, logits_u.detach(), self.log_alpha(xu, iu))
        loss = ce + game
        logs = {"ce": ce.detach(), "lds": kl.detach(), "l0": l0.detach()}
        if self.p.entmin > 0:
            ent = entropy_logits(logits_u)
            loss = loss + self.p.entmin * ent
            logs["entropy"] = ent.detach()
        return LossOutput(loss, logs, logits)

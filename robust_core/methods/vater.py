"""VATER: virtual adversarial training with energy regularisation (Zhang, Huang, Xu, "On model robustness against
adversarial examples"), the semi-supervised half of ATER / VATER (``ater``).

Loss: CE(labeled) + α · LDS + λ · mean_i ‖∇ₓ L_i(x_max,i)‖₂ (+ β_ent · H(p(x_u)) as in ``vat``), where
    L(x') = KL(p̂(x) ‖ p(x')), p̂(x) the clean prediction, detached: VAT's loss on the unlabeled batch (labeled batch
            in a supervised run);
    x_max = x + ε · d, d the normalised Hessian-vector-product direction of L at x.
At x' = x the KL is minimal, so ∇L(x) = 0: the normalised gradient g that ATER's finite difference starts from is
undefined, the difference (∇L(x + ξ g) − ∇L(x)) / ξ reduces to VAT's ∇L(x + ξ g)/ξ, and starting g at random makes
it VAT's power iteration. So d is VAT's r_vadv direction and x_max = x + r_vadv (one direction serves both terms);
``direction='finite_difference'`` (default) computes it with the finite difference at scale ξ, ``'exact'``
the ξ → 0 limit with forward-mode AD (see ``vat`` for why the default is ξ = 10). LDS = mean_i L_i(x_max) and the energy come from one forward pass at x_max; the
energy is built with ``create_graph=True`` (double backpropagation).
Threat model (training-time only): L2 ball of radius ε, pixel units (inputs in [0, 1]); not clipped (as VAT).
BatchNorm: clean passes update running statistics; the passes at perturbed inputs leave them untouched.

Params: those of ``vat`` (eps 2.0, xi 10.0, alpha 1.0, power_iterations 1, direction 'finite_difference',
entmin 0), plus
    lam: weight λ of the energy term, unitless (≥ 0). Default 1.0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.methods._ops import vat_direction
from robust_core.methods.ater import grad_norm
from robust_core.methods.base import Batch, LossOutput, StepContext
from robust_core.methods.trades import kl_per_example
from robust_core.methods.vat import VAT, entropy_logits
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


@METHODS.register("vater")
class VATER(VAT):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(VAT.Params):
        lam: float = Field(1.0, ge=0)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p = self.p
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        xu = batch.ux if batch.ux is not None else batch.x
        d, clean = vat_direction(model, xu, p.power_iterations, p.direction, p.xi)
        xm = (xu.detach() + p.eps * d).requires_grad_(True)
        with frozen_bn_stats(model):
            per = kl_per_example(clean, model(xm))
        (g,) = torch.autograd.grad(per.sum(), xm, create_graph=True)
        lds, e = per.mean(), grad_norm(g).mean()
        loss = ce + p.alpha * lds + p.lam * e
        logs = {"ce": ce.detach(), "lds": lds.detach(), "energy": e.detach()}
        if p.entmin > 0:
            with frozen_bn_stats(model):
                ent = entropy_logits(model(xu))
            loss = loss + p.entmin * ent
            logs["entropy"] = ent.detach()
        return LossOutput(loss, logs, logits)

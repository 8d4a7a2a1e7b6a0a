"""VATER: virtual adversarial training with energy regularisation (Zhang, Huang, Xu, "On model robustness against
adversarial examples", ``../shared/papers/ater-vater.txt``, Algorithm 2 (l. 512–524) and the appendix's practical
algorithm (eq. (32)–(37))), the semi-supervised half of ATER / VATER (``ater``).

Loss: CE(labeled) + α · LDS + λ · mean_i ‖∇ₓ L_i(x_max,i)‖₂ (+ β_ent · H(p(x_u)) as in ``vat``), where
    L(x') = KL(p̂(x) ‖ p(x')), p̂(x) the clean prediction, detached: VAT's loss on the unlabeled batch (labeled batch
            in a supervised run);
    x_max = x + ε · d, d = H∇L / ‖H∇L‖ the normalised Hessian-vector-product direction of L at x (appendix: the
            maximiser of the first-order change of ‖∇ₓL‖ over the ε-ball, eq. (34)–(37)).
At x' = x the KL is minimal, so ∇L(x) = 0: the gradient that ATER's direction starts from is undefined, the paper's
difference (∇L(x + ξ g) − ∇L(x)) / ξ reduces to VAT's ∇L(x + ξ g)/ξ, and starting g at random makes it VAT's power
iteration (Algorithm 2, lines 3–5). So d is VAT's r_vadv direction and x_max = x + r_vadv (one direction serves both
terms), computed as ``vat`` does: ``direction='exact'`` (default, the ξ → 0 limit the paper's ξ = 1e-6 means) or
``'finite_difference'`` (secant at ξ). LDS = mean_i L_i(x_max) and the energy come from one forward pass at x_max;
the energy is built with ``create_graph=True`` (double backpropagation).
Threat model (training-time only): L2 ball of radius ε, pixel units (inputs in [0, 1]); not clipped (as VAT).
BatchNorm: clean passes update running statistics; the passes at perturbed inputs leave them untouched.

Params: those of ``vat`` (eps 5.0, power_iterations 1, direction 'exact', xi 10.0, alpha 1.0, entmin 0), plus
    lam: weight λ of the energy term, unitless (≥ 0). Default 0.1: the paper's MNIST value ("we simply set it to 0.1",
        l. 180); for CIFAR-10 and SVHN it uses 0.5, "chosen from {0.1, 0.2, 0.5, 0.7, 1.0}" (l. 180), the grid the
        search spaces use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.methods._ops import kl_per_example
from robust_core.methods.ater import PAPER_LAM_MNIST, grad_norm
from robust_core.methods.base import Batch, LossOutput, StepContext
from robust_core.methods.vat import VAT
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


@METHODS.register("vater")
class VATER(VAT):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(VAT.Params):
        lam: float = Field(PAPER_LAM_MNIST, ge=0)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p = self.p
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        xu = batch.ux if batch.ux is not None else batch.x
        d, clean = p.vadv_direction(model, xu)
        xm = (xu.detach() + p.eps * d).requires_grad_(True)
        with frozen_bn_stats(model):
            per = kl_per_example(clean, model(xm))
        (g,) = torch.autograd.grad(per.sum(), xm, create_graph=True)
        lds, e = per.mean(), grad_norm(g).mean()
        logs = {"ce": ce.detach(), "lds": lds.detach(), "energy": e.detach()}
        loss = self.entmin_term(model, xu, ce + p.alpha * lds + p.lam * e, logs)
        return LossOutput(loss, logs, logits)

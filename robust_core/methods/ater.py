"""ATER: adversarial training with energy regularisation (Zhang, Huang, Xu, "On model robustness against
adversarial examples"), the supervised half of ATER / VATER (``vater``).

Loss: L_AT + λ · mean_i ‖∇ₓ ℓ_i(x_max,i)‖₂, with
    L_AT   = α · CE(f(x), y) + (1 − α) · CE(f(x + r), y), r one steepest-ascent step of length ε in ``norm``
             (``at_fgsm`` for L∞, Miyato's ``at_l2`` for L2; same machinery, ``OneStepAT``);
    ℓ_i    = CE(f(·), y_i), the loss of example i as a function of its input;
    x_max  = x + ε_E · d,  d = H g / ‖H g‖₂ per example, H = ∇²ₓ ℓ, g = ∇ₓℓ(x)/‖∇ₓℓ(x)‖₂, the direction in which the
             loss's gradient changes fastest, with the Hessian-vector product by a finite difference of input
             gradients:  H g ≈ (∇ₓℓ(x + ξ g) − ∇ₓℓ(x)) / ξ.
(VAT's shortcut ∇KL(x + ξd)/ξ drops the second term because ∇KL = 0 at x; the CE's gradient at x is not zero, so it
is subtracted here.) The penalty, the "energy", needs the input gradient at x_max as a function of θ: it is built
with ``create_graph=True`` (double backpropagation). ∇ₓℓ(x) is the gradient that also makes r (no extra pass).
Threat model (training-time only): ``norm`` ball of radius ε for r, L2 ball of radius ε_E for x_max, pixel units
(inputs in [0, 1]); x + r and x_max are clipped to [0, 1] when ``clip`` is on.
BatchNorm: the clean pass updates running statistics; the finite-difference pass and the passes at x + r and x_max
use batch statistics and leave running statistics untouched.
Precision: the finite difference subtracts two gradients, so ξ must stay well above the rounding error of the
working precision (float32: ξ ≳ 1e-3); under half-precision autocast the direction is noisy.

Params:
    eps: radius ε of the adversarial step r, pixel units. Default 2.0 (L2, MNIST scale as in VAT / Miyato's AT).
    norm: ``l2`` (default) or ``linf``: the ball of r.
    alpha: weight α of the clean CE in L_AT, in [0, 1]. Default 0.5.
    lam: weight λ of the energy term, unitless (≥ 0). Default 1.0.
    energy_eps: L2 radius ε_E of x_max, pixel units; None (default) uses ``eps``.
    xi: finite-difference step ξ along the unit gradient, pixel units (L2). Default 1e-2.
    clip: clip x + r and x_max to [0, 1]. Default True.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.config import Number
from robust_core.methods._ops import l2_normalize, widen
from robust_core.methods.at_fgsm import OneStepAT
from robust_core.methods.base import Batch, LossOutput, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


def grad_norm(g: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm (B,) of ``g``, smooth at 0 (sqrt(‖g‖² + tiny)) so double backprop never yields NaN."""
    return (widen(g).flatten(1).pow(2).sum(1) + 1e-20).sqrt()


def fd_hvp(grad_fn, x: torch.Tensor, v: torch.Tensor, xi: float, g0: torch.Tensor | None = None) -> torch.Tensor:
    """(∇L(x + ξ v) − ∇L(x)) / ξ ≈ H v, with ``grad_fn(z)`` = ∇L(z) (detached); ``g0`` = ∇L(x) if already known."""
    g0 = grad_fn(x) if g0 is None else g0
    return ((grad_fn(x + xi * v) - g0) / xi).detach()


def ce_input_grad(model, y: torch.Tensor):
    """z -> ∇_z Σ_i CE(f(z_i), y_i) (per-example rows), BN running statistics untouched, no graph kept."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        with frozen_bn_stats(model):
            loss = F.cross_entropy(model(z), y, reduction="sum")
        return torch.autograd.grad(loss, z)[0].detach()

    return fn


def energy(model, x_max: torch.Tensor, loss_fn) -> torch.Tensor:
    """mean_i ‖∇ₓ ℓ_i(x_max)‖₂ with the graph kept (differentiable in θ); ``loss_fn(logits)`` -> per-example (B,)."""
    xm = x_max.detach().requires_grad_(True)
    with frozen_bn_stats(model):
        per = loss_fn(model(xm))
    (g,) = torch.autograd.grad(per.sum(), xm, create_graph=True)
    return grad_norm(g).mean()


@METHODS.register("ater")
class ATER(OneStepAT):
    __doc__ = __doc__

    class Params(OneStepAT.Params):
        eps: Number = Field(2.0, gt=0)
        norm: Literal["l2", "linf"] = "l2"
        lam: float = Field(1.0, ge=0)
        energy_eps: Number | None = Field(None, gt=0)
        xi: Number = Field(1e-2, gt=0)

    def x_max(self, model, x: torch.Tensor, y: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
        """x + ε_E · normalised finite-difference HVP along the normalised gradient (clipped to [0, 1] if ``clip``)."""
        p = self.p
        hv = fd_hvp(ce_input_grad(model, y), x.detach(), l2_normalize(g0), p.xi, g0=g0)
        xm = x.detach() + (p.energy_eps or p.eps) * l2_normalize(hv)
        return xm.clamp(0.0, 1.0) if p.clip else xm

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        ce, ce_adv, logits, g0 = self.at_terms(model, batch)
        a = self.p.alpha
        e = energy(model, self.x_max(model, batch.x, batch.y, g0),
                   lambda z: F.cross_entropy(z, batch.y, reduction="none"))
        loss = a * ce + (1 - a) * ce_adv + self.p.lam * e
        return LossOutput(loss, {"ce": ce.detach(), "ce_adv": ce_adv.detach(), "energy": e.detach()},
                          logits.detach())

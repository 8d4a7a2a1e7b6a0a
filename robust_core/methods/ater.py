"""ATER: adversarial training with energy regularisation (Zhang, Huang, Xu, "On model robustness against
adversarial examples", ``../shared/papers/ater-vater.txt``: the energy (4), its upper bound (32)–(33) and the
practical algorithm of the appendix, eq. (34)–(37)), the supervised half of ATER / VATER (``vater``).

Loss: L_AT + λ · mean_i ‖∇ₓ ℓ_i(x_max,i)‖₂, with
    L_AT   = α · CE(f(x), y) + (1 − α) · CE(f(x + r), y), r one steepest-ascent step of length ε in ``norm``
             (``at_fgsm`` for L∞, Miyato's ``at_l2`` for L2; same machinery, ``OneStepAT``);
    ℓ_i    = CE(f(·), y_i), the loss of example i as a function of its input;
    x_max  = x + ε_E · H g / ‖H g‖₂ per example, H = ∇²ₓ ℓ, g = ∇ₓℓ(x): the maximiser over the ε_E-ball of the
             first-order change of ‖∇ₓℓ‖ (appendix: r* = ε ∇F/‖∇F‖, ∇F = H∇ℓ/‖∇ℓ‖, the lines above (37)).
The paper evaluates H g by the finite difference (∇ℓ(x + ξ g) − ∇ℓ(x)) / ξ with ξ = 1e-6 (eq. (37), l. 506), i.e. it
means the ξ → 0 limit. Here H g is computed exactly, by double backward through ONE training-mode forward pass
(``input_hvp``): the finite difference takes its two input gradients from two training-mode passes, and with dropout
(conv-large has two Dropout(0.5) layers) those passes draw independent masks, so their difference is mask noise, not
H g. The penalty, the "energy", needs the input gradient at x_max as a function of θ: it is built with
``create_graph=True`` (double backpropagation).
Threat model (training-time only): ``norm`` ball of radius ε for r, L2 ball of radius ε_E for x_max, pixel units
(inputs in [0, 1]); x + r and x_max are clipped to [0, 1] when ``clip`` is on.
BatchNorm: the clean pass updates running statistics; the passes for H g, at x + r and at x_max use batch statistics
and leave running statistics untouched.

Params:
    eps: radius ε of the adversarial step r, pixel units. Default 2.0 (L2, MNIST scale as in VAT / Miyato's AT; the
        paper gives no value).
    norm: ``l2`` (default; the paper's AT baseline is "adversarial training with the l_2 norm constraint") or ``linf``.
    alpha: weight α of the clean CE in L_AT, in [0, 1]. Default 0.5.
    lam: weight λ of the energy term, unitless (≥ 0). Default 0.1: the paper's MNIST value ("we simply set it to 0.1",
        l. 180); for CIFAR-10 and SVHN it uses 0.5, "chosen from {0.1, 0.2, 0.5, 0.7, 1.0}" (l. 180), the grid the
        search spaces use.
    energy_eps: L2 radius ε_E of x_max, pixel units; None (default) uses ``eps``.
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


PAPER_LAM_MNIST = 0.1  # λ of ATER's and VATER's energy term on MNIST (ater-vater.txt l. 180)


def input_hvp(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, H v) for ℓ = Σ_i CE(f(x_i), y_i): g = ∇ₓℓ (per-example rows), v = g / ‖g‖₂ per example (detached),
    H v = ∇ₓ(g · v), exact by double backward through ONE forward pass, so a stochastic model (dropout) uses one mask
    for both. Training-mode pass with BN running statistics untouched; both results detached."""
    z = x.detach().requires_grad_(True)
    with frozen_bn_stats(model):
        loss = F.cross_entropy(model(z), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, z, create_graph=True)
    v = l2_normalize(g.detach())
    (hv,) = torch.autograd.grad((g * v).sum(), z)
    return g.detach(), hv.detach()


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
        lam: float = Field(PAPER_LAM_MNIST, ge=0)
        energy_eps: Number | None = Field(None, gt=0)

    def x_max(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + ε_E · H g / ‖H g‖ per example, H g exact (``input_hvp``); clipped to [0, 1] if ``clip``."""
        p = self.p
        _, hv = input_hvp(model, x, y)
        xm = x.detach() + (p.energy_eps or p.eps) * l2_normalize(hv)
        return xm.clamp(0.0, 1.0) if p.clip else xm

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        ce, ce_adv, logits, _ = self.at_terms(model, batch)
        a = self.p.alpha
        e = energy(model, self.x_max(model, batch.x, batch.y),
                   lambda z: F.cross_entropy(z, batch.y, reduction="none"))
        loss = a * ce + (1 - a) * ce_adv + self.p.lam * e
        return LossOutput(loss, {"ce": ce.detach(), "ce_adv": ce_adv.detach(), "energy": e.detach()},
                          logits.detach())

"""Adversarial training with an L2 perturbation: the "adversarial, L2" baseline of Miyato, Maeda, Koyama, Ishii,
"Virtual Adversarial Training" (TPAMI 2018, eq. 4–6 and tables 2–4; also Miyato et al., ICLR 2016).

Loss: α · CE(f(x), y) + (1 − α) · CE(f(x + r), y),  r = ε · g / ‖g‖₂,  g = ∇ₓ CE(f(x), y)  (per example).
Same machinery as ``at_fgsm`` (``OneStepAT``): gradient from the clean pass, r constant, x + r clipped to [0, 1] when
``clip`` is on (Miyato does not clip), clean pass updates BN running statistics, perturbed pass leaves them alone.
Miyato's code adds the two CE terms with weight 1 each; α = 0.5 halves both, which only rescales the learning rate.
Threat model (training-time only): L2 ball of radius ε, pixel units (inputs in [0, 1]).

Params:
    eps: L2 radius ε, pixel units. Default 2.0 (VAT's MNIST radius; Miyato tunes ε per dataset on validation data).
    alpha: weight α of the clean term, in [0, 1]. Default 0.5.
    clip: clip x + r to [0, 1]. Default True.
"""
from __future__ import annotations

from pydantic import Field

from robust_core.config import Number
from robust_core.methods.at_fgsm import OneStepAT
from robust_core.registry import METHODS


@METHODS.register("at_l2")
class ATL2(OneStepAT):
    __doc__ = __doc__
    norm = "l2"

    class Params(OneStepAT.Params):
        eps: Number = Field(2.0, gt=0)

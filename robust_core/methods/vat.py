"""Virtual adversarial training (Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial Training: a regularization
method for supervised and semi-supervised learning", TPAMI 2018), with the entropy-minimisation variant (VAT+EntMin).

Loss: CE(labeled) + α · LDS + β_ent · H(p(x_u)), with LDS = KL(p(x_u) ‖ p(x_u + r_vadv)), the clean side detached,
r_vadv = ε · d, and d the top eigenvector of ∇²_r KL estimated by power iteration (eq. 8–12 of the paper).
Threat model (training-time only): L2 ball of radius ε around x, in pixel units ([0, 1] inputs); r is not clipped to
the data box, as in the paper. The regulariser is applied to the unlabeled batch when the run is semi-supervised and
to the labeled batch otherwise. The forward passes at perturbed inputs leave BatchNorm running statistics untouched
(``update_batch_stats=False`` in the authors' code); the clean passes over labeled and unlabeled batches update them,
so at test time BN normalises with statistics of the whole training distribution, not of the few labeled examples.

Params:
    eps: L2 radius ε of the virtual adversarial perturbation, pixel units. Default 2.0 (paper's MNIST value).
    xi: finite-difference step ξ, pixel units, for ``direction='finite_difference'``. Default 10.0.
    alpha: weight α of the LDS term, unitless. Default 1.0.
    power_iterations: power-iteration steps K. Default 1 (the paper shows K = 1 suffices).
    direction: how the power-iteration step H·d is obtained.
        ``finite_difference`` (default): g = ∇_r KL(p(x) ‖ p(x + r)) at r = ξd, the paper's estimator (eq. 12).
        ``exact``: the ξ → 0 limit H·d = Jᵀ(diag p − ppᵀ)J d, computed with forward-mode AD, right in any precision.
    entmin: weight of the conditional-entropy term (VAT+EntMin, paper §4.1.2); 0 disables it. Default 0.

On ξ: the paper writes ξ = 1e-6, meaning the ξ → 0 limit; in float32 that finite difference is dominated by
rounding error (the logits move by ~1e-6, their own rounding error is of the same size; ``tests/test_vat_math.py``
measures cosine ≈ 0.3–0.4 with the true direction), so the paper's code effectively trained with a noisy direction.
``direction='exact'`` computes the intended limit exactly. On ``mnist5k`` with 100 labels that exact limit made the
predictions collapse onto few classes for ε ≥ 1 within ~1,000 updates, while the secant at a finite scale ξ = 10
(the value common PyTorch ports use) learned well; ``benchmarks/vat_direction.py`` reproduces the comparison, and
``xi``/``direction`` are searchable like any other parameter. With ξ = 10 the float32 finite difference is accurate
(no cancellation; tested against float64).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.config import Number
from robust_core.methods._ops import kl_logits, vat_direction, widen
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


def entropy_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(widen(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


@METHODS.register("vat")
class VAT(Method):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(MethodParams):
        eps: Number = Field(2.0, gt=0)
        xi: Number = Field(10.0, gt=0)
        alpha: float = Field(1.0, ge=0)
        power_iterations: int = Field(1, ge=1, le=10)
        direction: Literal["exact", "finite_difference"] = "finite_difference"
        entmin: float = Field(0.0, ge=0)

    def lds(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local distributional smoothness at x and the clean (detached) logits; BN statistics untouched."""
        p = self.p
        d, clean = vat_direction(model, x, p.power_iterations, p.direction, p.xi)
        with frozen_bn_stats(model):
            adv = model(x + p.eps * d)
        return kl_logits(clean, adv), clean

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        xu = batch.ux if batch.ux is not None else batch.x
        lds, clean_u = self.lds(model, xu)
        loss = ce + self.p.alpha * lds
        logs = {"ce": ce.detach(), "lds": lds.detach()}
        if self.p.entmin > 0:
            # entropy needs gradients through the unlabeled predictions: one more pass, BN statistics untouched
            with frozen_bn_stats(model):
                ent = entropy_logits(model(xu))
            loss = loss + self.p.entmin * ent
            logs["entropy"] = ent.detach()
        return LossOutput(loss, logs, logits)

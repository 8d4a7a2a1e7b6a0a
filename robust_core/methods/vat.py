"""Virtual adversarial training (Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial Training: a regularization
method for supervised and semi-supervised learning", TPAMI 2018), with the entropy-minimisation variant (VAT+EntMin).
As restated in ``../shared/papers/fat.txt`` §2.1 eq. (1)–(2) and ``ater-vater.txt`` eq. (2):

Loss: CE(labeled) + α · LDS + β_ent · H(p(x_u)), with LDS = KL(p(x_u) ‖ p(x_u + r_vadv)), the clean side detached,
r_vadv = ε · d, and d the top eigenvector of H = ∇²_r KL(p(x) ‖ p(x + r)) at r = 0, estimated by power iteration
(``fat.txt`` §4.2: "r_advr emerges as the first dominant eigenvector v of H with magnitude ε").
Threat model (training-time only): L2 ball of radius ε around x, in pixel units ([0, 1] inputs); r is not clipped to
the data box, as in the paper. The regulariser is applied to the unlabeled batch when the run is semi-supervised and
to the labeled batch otherwise. The forward passes at perturbed inputs leave BatchNorm running statistics untouched
(``update_batch_stats=False`` in the authors' code); the clean passes over labeled and unlabeled batches update them,
so at test time BN normalises with statistics of the whole training distribution, not of the few labeled examples.

Params (the first four, shared with ``vater`` and ``fat``, are ``VATDirectionParams``):
    eps: L2 radius ε of the virtual adversarial perturbation, pixel units. Default 5.0: the semi-supervised MNIST
        value issue 14 attributes to Miyato et al. (their paper is not in ``../shared/papers``, so not checked here);
        with the exact direction on mnist5k, ε in 4–8 trains well and ε in 1–2 does not (``benchmarks/RESULTS.md``).
    power_iterations: power-iteration steps K. Default 1 (the paper shows K = 1 suffices).
    direction: how the power-iteration step H·d is obtained.
        ``exact`` (default): the ξ → 0 limit the papers mean (they write ξ = 1e-6, ``ater-vater.txt`` l. 506),
            H·d = Jᵀ(diag p − ppᵀ)J d with J the Jacobian of the logits, by forward-mode AD; right in any precision.
        ``finite_difference``: the secant g = ∇_r KL(p(x) ‖ p(x + r)) at r = ξd (Miyato's estimator at a finite ξ).
    xi: secant step ξ, pixel units, for ``direction='finite_difference'`` only. Default 10.0 (common PyTorch ports).
    alpha: weight α of the LDS term, unitless. Default 1.0 (``fat.txt`` eq. (2): CE + L^VAT, weight 1).
    entmin: weight of the conditional-entropy term (VAT+EntMin, paper §4.1.2); 0 disables it. Default 0.

On the direction: in float32 the paper's ξ = 1e-6 secant is dominated by rounding error (``tests/test_vat_math.py``
measures cosine ≈ 0.3–0.4 with the true H·d), and the secant at ξ = 10 that PyTorch ports use is accurate arithmetic
but not H·d (it measures the KL's slope 10 pixel units away, farther than a digit's own norm): neither is the
eigen-direction of the papers. ``exact`` computes it. Its earlier "collapse" on mnist5k was an ε-scale effect: the
exact direction needs a larger ε than the secant (``benchmarks/vat_direction.py``; results in
``benchmarks/RESULTS.md``), so the MNIST search ranges span [1, 10]. Measured there (3 seeds, 800 updates, ε chosen
on validation): exact 87.2 % test accuracy, MLE 78.5 %, and the secant at ξ = 10, ε = 1 90.2 % — a different
regulariser that happens to suit this small budget better; it stays available as ``direction: finite_difference``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robust_core.config import Number
from robust_core.methods._ops import Direction, entropy_logits, kl_logits, vat_direction
from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


class VATDirectionParams(MethodParams):
    """The virtual adversarial perturbation shared by VAT, VATER and FAT: its radius and how its direction is found
    (see ``vat``'s docstring for units and defaults)."""

    eps: Number = Field(5.0, gt=0)
    power_iterations: int = Field(1, ge=1, le=10)
    direction: Direction = "exact"
    xi: Number = Field(10.0, gt=0)

    def vadv_direction(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-L2 direction d per example, clean detached logits) at x by ``power_iterations`` steps."""
        return vat_direction(model, x, self.power_iterations, self.direction, self.xi)


@METHODS.register("vat")
class VAT(Method):
    __doc__ = __doc__
    uses_unlabeled = True

    class Params(VATDirectionParams):
        alpha: float = Field(1.0, ge=0)
        entmin: float = Field(0.0, ge=0)

    def lds(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local distributional smoothness at x and the clean (detached) logits; BN statistics untouched."""
        p = self.p
        d, clean = p.vadv_direction(model, x)
        with frozen_bn_stats(model):
            adv = model(x + p.eps * d)
        return kl_logits(clean, adv), clean

    def entmin_term(self, model, xu: torch.Tensor, loss: torch.Tensor, logs: dict) -> torch.Tensor:
        """``loss`` + β_ent · H(p(x_u)) (logged as ``entropy``) when ``entmin`` > 0; BN statistics untouched."""
        if self.p.entmin <= 0:
            return loss
        # entropy needs gradients through the unlabeled predictions: one more pass, BN statistics untouched
        with frozen_bn_stats(model):
            ent = entropy_logits(model(xu))
        logs["entropy"] = ent.detach()
        return loss + self.p.entmin * ent

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        xu = batch.ux if batch.ux is not None else batch.x
        lds, clean_u = self.lds(model, xu)
        logs = {"ce": ce.detach(), "lds": lds.detach()}
        loss = self.entmin_term(model, xu, ce + self.p.alpha * lds, logs)
        return LossOutput(loss, logs, logits)

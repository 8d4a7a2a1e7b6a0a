"""ATLD: adversarial training with latent distribution (Qian, Zhang, Huang, Wang, Zhang, Yi, "Improving Model
Robustness with Latent Distribution Locally and Globally", arXiv:2107.04401; ``../shared/papers/atld.txt`` §IV,
eq. 7 and its appendix eq. 12–13 and 26–27), with inference-time manifold transformation (IMT, §IV-B).

A discriminator D_W reads the classifier's latent code f_θ(x) and has two heads (eq. 7): the manifold head D⁰ (one
logit a; D⁰ = σ(a) = the probability that the code comes from an adversarial example) and a C-class head D^{1:C}
(logits c). With x_adv the latent-manifold adversarial example (LMAE) and y the label, per batch (means over it):

    L_f       = CE_s(f(x_adv), y)                                   (label smoothing s, §V: 0.5)
    L_d⁰      = log D⁰(f(x_adv)) + log(1 − D⁰(f(x)))                (eq. 7; the paper's "(1 − log D⁰(f(x)))" is
                                                                      read as log(1 − D⁰), the GAN form of eq. 11)
    L_d^{1:C} = CE(D^{1:C}(f(x)), y) + CE(D^{1:C}(f(x_adv)), y)

    classifier θ minimises   L_f + w₀·L_d⁰ + w_c·L_d^{1:C}          (eq. 7: w₀ = w_c = 1; both branches, x and x_adv)
    discriminator W minimises  −L_d⁰ + L_d^{1:C}                    (sup_W L_d⁰, min_W L_d^{1:C})
    x_adv = Π_{B(x,ε)∩[0,1]}(x₀ + α·sign(∇_x L_d⁰(x₀))),  x₀ = x + U(−ε, ε)   (eq. 13/25: one signed step, no labels)

The game is played in turn, each player with its own optimiser (Fig. 2 "train the classifier and the discriminator
iteratively"): the method declares D an adversary (``adversaries()``), so ``fit`` steps the classifier on its
loss, then D ``disc_steps`` times with its own optimiser (SGD, lr 1e-3, momentum 0.9, weight decay 2e-4, two D
steps per classifier step, constant lr: the authors' code; the paper gives none of these). D's turn reuses the
latent codes of the classifier's step (detached), as the authors' code does. In the classifier's loss D is
evaluated with detached weights, so no gradient reaches D from it.

Discriminator (``LatentDiscriminator``): §V "we leverage the wideresnet as our basic classifier and discriminator
model structure"; the authors' code feeds the logits, shaped (N, C, 1, 1), to a WRN-28-5 (a 3×3 conv C → 16, three
groups of pre-activation blocks, BN-ReLU, pool) with a 1-unit and a C-unit linear head. We build the same from
``robust_core.models.wrn``'s block. Its input (``disc_input``): ``logits`` (default) — the paper defines f_θ as "the
last hidden layer (i.e., the layer before the softmax layer)" and writes the classifier loss as l(f_θ(x), y) with l
"e.g. the cross entropy" (§III-A), i.e. f_θ(x) is what the softmax reads: the logits, which is also what the code
feeds D; ``features`` feeds the penultimate layer (``model.features``) instead. D sees the natural and the adversarial
codes of a batch as one batch (one BN normalisation for both, so D is the same function on both terms of L_d⁰; the
authors' code makes two calls and hence normalises each branch on its own).
The LMAE step ascends Σ log D⁰(f(x')) over the batch (eq. 13; the authors' code descends D's BCE for calling x'
adversarial, the same thing). The LMAE pass and the classifier loss's D pass leave BN running statistics untouched
(``frozen_bn_stats``); the classifier's passes at x and at x_adv and D's own passes update them.

Where the authors' code differs from eq. 7 we follow the paper: their classifier minimises L_f plus an MSE between
adversarial and natural logits (rescaled by a gradient-norm ratio), so neither D term reaches the classifier; their
D's class head is trained on the smoothed labels (we use l(·, y) of eq. 7, plain CE).

Inference (``inference_model``): ``imt='none'`` (ATLD−) returns the classifier. ``imt='imt'`` (eq. 8/27): x' =
clip(x − ε_imt · sign(∇_x a(f(x)))), one signed step that lowers D's adversarial probability, then f(x').
``imt='imt_plus'`` (ATLD+, §V-A): the step is halved for the examples whose D⁰(f(x)) ∈ [0.3, 0.7]. The wrapper is
differentiable end to end: the step's sign and size are piecewise constant in x (zero derivative a.e.), so
∂f(x')/∂x = ∂f/∂x' · ∂clip/∂x exactly.

Adaptive attacks (table V, "'D' means the binary classification of the discriminator"): ``discriminator_logit(model,
x)`` is D's binary-head logit a(f(x)) for inputs x (differentiable in x; what IMT reads before its step), and
``adaptive_objectives(model)`` returns per-example losses keyed ``classifier`` (CE of the deployed pipeline),
``discriminator`` (−log(1 − D⁰(f(x))) = softplus(a), D's binary loss for calling x natural: maximising it drives the
input towards D's adversarial side, against IMT) and ``both`` (their sum).

Threat model (training): L∞ ball of radius ε around x, pixel units, intersected with [0, 1].

Params:
    eps: L∞ radius ε of the LMAE, pixel units. Default 8/255 (§V, "ε = 8").
    step_size: LMAE step α, pixel units; None = ε (authors' code). Default None.
    label_smoothing: s in [0, 1) of L_f (true class 1 − s, others s/(C − 1), as the authors' code). Default 0.5 (§V).
    manifold_weight: w₀ on L_d⁰ in the classifier's objective. Default 1.0 (eq. 7).
    class_weight: w_c on L_d^{1:C} in the classifier's objective. Default 1.0 (eq. 7).
    disc_input: ``logits`` (default) or ``features``: which latent code D reads (see above).
    disc_depth, disc_widen: D's WRN depth (6n + 4) and widening factor. Default 28, 5 (authors' code).
    disc_optimizer: ``sgd`` (default) or ``adam``. disc_lr: D's learning rate, default 1e-3. disc_momentum: 0.9.
        disc_weight_decay: 2e-4. disc_steps: D updates per classifier update, default 2. (All: authors' code.)
    imt: ``none`` | ``imt`` | ``imt_plus``. Default ``imt_plus`` (ATLD+).
    imt_eps: IMT step size, L∞, pixel units; None = ε (eq. 8: ‖r‖∞ ≤ ε). Default None.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from robust_core.attacks.loop import perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.config import Number
from robust_core.methods._ops import smoothed_ce, widen
from robust_core.methods.base import Adversaries, Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.models.wrn import BasicBlock
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


class LatentDiscriminator(nn.Module):
    """D(h): latent codes (N, d) -> (manifold logit a (N,), class logits c (N, C)); a WRN-depth-widen on the codes
    shaped (N, d, 1, 1), as the authors' ``Discriminator_2``."""

    def __init__(self, in_dim: int, num_classes: int, depth: int = 28, widen: int = 5) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 or widen < 1:
            raise ValueError(f"atld: disc_depth={depth} must be 6n + 4 ≥ 10 and disc_widen={widen} ≥ 1")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, w[0], 3, 1, 1, bias=False)]
        for g, stride in enumerate((1, 2, 2)):
            layers += [BasicBlock(w[g] if i == 0 else w[g + 1], w[g + 1], stride if i == 0 else 1, 0.0)
                       for i in range(n)]
        layers += [nn.BatchNorm2d(w[3]), nn.ReLU(), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.adv = nn.Linear(w[3], 1)
        self.cls = nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(h.reshape(*h.shape[:2], 1, 1))
        return self.adv(z).squeeze(-1), self.cls(z)


def latent(model: nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(code D reads, logits) of ``model`` at ``x``: the logits twice, or (features, head(features))."""
    if kind == "logits":
        out = model(x)
        return out, out
    h = model.features(x)
    return h, model.head(h)


def imt_step_scale(p_adv: torch.Tensor, plus: bool) -> torch.Tensor:
    """Factor on the IMT step per example: 0.5 where ATLD+ and p_adv ∈ [0.3, 0.7], else 1."""
    if not plus:
        return torch.ones_like(p_adv)
    half = (p_adv >= 0.3) & (p_adv <= 0.7)
    return torch.where(half, 0.5, 1.0).to(p_adv.dtype)


class IMTModel(nn.Module):
    """Classifier preceded by the inference-time manifold transformation; see the ``atld`` module docstring."""

    def __init__(self, model: nn.Module, disc: LatentDiscriminator, disc_input: str, eps: float, plus: bool) -> None:
        super().__init__()
        self.model, self.disc, self.disc_input, self.eps, self.plus = model, disc, disc_input, eps, plus

    def discriminator_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example manifold logit a(f(x)) of the inputs (D⁰ = σ(a) = P(adversarial))."""
        return self.disc(latent(self.model, x, self.disc_input)[0])[0]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # evaluation runs under no_grad; IMT needs ∇_x a
            xr = x.detach().requires_grad_(True)
            with frozen_bn_stats(self.model), frozen_bn_stats(self.disc):
                a = widen(self.discriminator_logit(xr))
            (g,) = torch.autograd.grad(a.sum(), xr)
        scale = imt_step_scale(torch.sigmoid(a.detach()), self.plus).to(x.dtype)
        step = self.eps * scale.view(-1, *([1] * (x.dim() - 1)))
        return (x - step * g.sign()).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


@METHODS.register("atld")
class ATLD(Method):
    __doc__ = __doc__

    class Params(MethodParams):
        eps: Number = Field(8 / 255, gt=0, le=1)
        step_size: Number | None = Field(None, gt=0, le=1)
        label_smoothing: float = Field(0.5, ge=0, lt=1)
        manifold_weight: float = Field(1.0, ge=0)
        class_weight: float = Field(1.0, ge=0)
        disc_input: Literal["logits", "features"] = "logits"
        disc_depth: int = Field(28, ge=10, le=100)
        disc_widen: int = Field(5, ge=1, le=20)
        disc_optimizer: Literal["sgd", "adam"] = "sgd"
        disc_lr: float = Field(1e-3, gt=0)
        disc_momentum: float = Field(0.9, ge=0, lt=1)
        disc_weight_decay: float = Field(2e-4, ge=0)
        disc_steps: int = Field(2, ge=1, le=20)
        imt: Literal["none", "imt", "imt_plus"] = "imt_plus"
        imt_eps: Number | None = Field(None, gt=0, le=1)

    def __init__(self, params, model, info, n_train: int = 0) -> None:
        super().__init__(params, model, info, n_train)
        p = self.p
        d = info.num_classes if p.disc_input == "logits" else model.feature_dim
        self.disc = LatentDiscriminator(d, info.num_classes, p.disc_depth, p.disc_widen)

    def modules(self) -> dict[str, nn.Module]:
        return {"disc": self.disc}

    def adversaries(self) -> Adversaries:
        p = self.p
        return Adversaries(modules=("disc",), lr=p.disc_lr, optimizer=p.disc_optimizer, momentum=p.disc_momentum,
                         weight_decay=p.disc_weight_decay, steps=p.disc_steps)

    # ------------------------------------------------------------------ the game
    def lmae(self, model: nn.Module, x: torch.Tensor, h_nat: torch.Tensor) -> torch.Tensor:
        """x_adv: one signed ascent step on Σ log D⁰(f(·)) (eq. 13) from a uniform random start; BN statistics of
        the classifier and of D untouched. ``h_nat``: the natural codes (D normalises both branches together)."""
        p, n, h_nat = self.p, len(x), h_nat.detach()
        step = p.step_size if p.step_size is not None else p.eps

        def log_d0(code: torch.Tensor) -> torch.Tensor:  # per example; summed by the attack loop
            return F.logsigmoid(widen(self.disc(torch.cat([h_nat, code]))[0][n:]))

        with frozen_bn_stats(model), frozen_bn_stats(self.disc):
            return perturb(lambda z: latent(model, z, p.disc_input)[0], x, log_d0, ThreatModel("linf", p.eps),
                           steps=1, step_size=step, random_start=True, check_range=False)

    @staticmethod
    def terms(a: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_d⁰, L_d^{1:C}) of eq. 7 from D's outputs on [natural; adversarial] codes (batch means)."""
        n = len(y)
        a, c = widen(a), widen(c)
        l_d0 = -F.softplus(-a[n:]).mean() - F.softplus(a[:n]).mean()  # log σ(a_adv) + log(1 − σ(a_nat))
        l_dc = F.cross_entropy(c[:n], y) + F.cross_entropy(c[n:], y)
        return l_d0, l_dc

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        p = self.p
        x, y = batch.x, batch.y
        h_nat, logits = latent(model, x, p.disc_input)  # natural pass (updates BN statistics)
        x_adv = self.lmae(model, x, h_nat)
        h_adv, logits_adv = latent(model, x_adv, p.disc_input)  # training pass at x_adv (updates BN statistics)
        frozen = {k: t.detach() for k, t in self.disc.named_parameters()}
        with frozen_bn_stats(self.disc):
            a, c = functional_call(self.disc, frozen, (torch.cat([h_nat, h_adv]),))
        l_d0, l_dc = self.terms(a, c, y)
        l_f = smoothed_ce(logits_adv, y, p.label_smoothing)
        total = l_f + p.manifold_weight * l_d0 + p.class_weight * l_dc
        adv_acc = (logits_adv.argmax(1) == y).float().mean()
        logs = {"ce_ls": l_f.detach(), "l_d0": l_d0.detach(), "l_dc": l_dc.detach(), "adv_acc": adv_acc.detach()}
        saved = {"h_nat": h_nat.detach(), "h_adv": h_adv.detach()}
        return LossOutput(total, logs, logits, saved)

    def adversary_loss(self, model, batch: Batch, ctx: StepContext, out: LossOutput) -> LossOutput:
        """D's turn: −L_d⁰ + L_d^{1:C} on the codes of the classifier's step (BN statistics of D updated)."""
        n = len(batch.y)
        a, c = self.disc(torch.cat([out.saved["h_nat"], out.saved["h_adv"]]))
        l_d0, l_dc = self.terms(a, c, batch.y)
        acc = 0.5 * ((a[:n] < 0).float().mean() + (a[n:] > 0).float().mean())
        return LossOutput(-l_d0 + l_dc, {"disc_loss": (l_dc - l_d0).detach(), "disc_acc": acc.detach()})

    # ------------------------------------------------------------------ inference and adaptive attacks
    def discriminator_logit(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-example manifold logit a(f(x)) of D's binary head for inputs ``x`` in [0, 1] (σ(a) = P(adversarial)),
        differentiable in x; D sees the inputs as given (no IMT)."""
        return IMTModel(model, self.disc, self.p.disc_input, 0.0, False).discriminator_logit(x)

    def adaptive_objectives(self, model: nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """Per-example losses an adaptive attacker maximises (table V), each differentiable in x:
        ``classifier``: CE of the deployed pipeline (IMT + classifier); ``discriminator``: softplus(a(f(x))) =
        −log(1 − D⁰), the binary head's loss for calling x natural; ``both``: their sum."""
        wrapped = self.inference_model(model)

        def classifier(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(widen(wrapped(x)), y, reduction="none")

        def disc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.softplus(widen(self.discriminator_logit(model, x)))

        def both(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return classifier(x, y) + disc(x, y)

        return {"classifier": classifier, "discriminator": disc, "both": both}

    def inference_model(self, model: nn.Module) -> nn.Module:
        if self.p.imt == "none":
            return model
        eps = self.p.imt_eps if self.p.imt_eps is not None else self.p.eps
        return IMTModel(model, self.disc, self.p.disc_input, eps, plus=self.p.imt == "imt_plus")

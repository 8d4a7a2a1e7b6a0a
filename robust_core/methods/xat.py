"""xAT: adversarial training with multiplicative perturbations (Yang & Ji, "Learning with Multiplicative
Perturbations", ICPR 2020, arXiv:1912.01810). ``xvat.py`` holds its virtual (semi-supervised) sibling xVAT.

The perturbed input is x ⊙ z, with z a hard-concrete mask (Louizos, Welling & Kingma, "Learning Sparse Neural
Networks through L0 Regularization", ICLR 2018), one gate per pixel (shared by the colour channels, as in the
authors' code):

    u ~ U(0, 1),  s = σ((log u − log(1 − u) + log α) / β),  z = clamp(s (ζ − γ) + γ, 0, 1),   γ < 0 < 1 < ζ.

The expected L0 norm of z (the expected number of gates that are not exactly 0, i.e. of pixels kept) is in closed
form: E‖z‖₀ = Σ P(z ≠ 0) = Σ σ(log α − β log(−γ/ζ)). We use its mean over pixels and examples (the fraction of kept
pixels, L0 ∈ [0, 1]) so λ does not depend on the image size.

Game (all in one optimiser step): the mask parameters ASCEND  α·D(x ⊙ z) + λ·L0  (find the most damaging mask, but
pay λ for every pixel dropped), while the classifier DESCENDS  CE(x, y) + α·D(x ⊙ z).  For xAT  D = CE(f(x ⊙ z), y).
Both happen in the single ``loss`` the fit loop minimises because log α goes through a gradient-reversal function
(identity forward, −1 × gradient backward) before the mask is sampled: the classifier sees +∇D, the mask parameters
−∇(α·D + λ·L0), so one descent step is ascent for them. (The logged loss therefore includes the +λ·L0 term, which is
constant for the classifier.) The authors' ``*One`` trainers do the same single-stage game with an extra optimiser.

Threat model (training-time only): multiplicative, x ↦ x ⊙ z with z ∈ [0, 1]^(H×W); no norm ball — the budget is the
soft L0 price λ on dropped pixels. Inputs in [0, 1], so x ⊙ z stays in [0, 1] (``scale`` > 1 leaves the box, as the
authors' ``eps`` does).

Modes:
    ``transductive``: one log α per training example and pixel, an ``nn.Parameter`` table of shape
        (n_train, 1, H, W) indexed by ``batch.idx`` (``batch.uidx`` for unlabeled batches); ``n_train`` comes from the
        method constructor. Only examples seen in a step receive a gradient (Adam's moments still move the rest).
    ``inductive``: a small convolutional generator predicts log α from x (so it also applies to unseen inputs).
Both are returned by ``modules()`` (key ``mask``): the loop optimises, checkpoints and resumes them.

Learning rate of the mask: the loop has one optimiser and one learning rate, so the table stores θ = log α / s with
s = ``mask_lr_scale``: under Adam (scale-invariant) log α then moves s times the classifier's learning rate per step.
The generator's output is multiplied by s too. The poster (``../shared/papers/xat-xvat-poster.txt``) states no
learning rates; s = 0.01 is our choice and is searched (``sweeps/spaces/xat.yaml``). (The authors' repository README,
sndnyang/xvat, shows ``--lr=0.001 --lr-a=0.000001`` in its supervised MNIST command, i.e. s = 1e-3; not checked
against their other runs.)

BatchNorm: the clean pass updates running statistics; the pass at x ⊙ z leaves them untouched (``frozen_bn_stats``,
the authors' ``update_batch_stats=False``). The model's train/eval mode is not changed.

Params (xAT and xVAT):
    mode: ``transductive`` (default) or ``inductive``.
    alpha: weight α of the divergence term, unitless. Default 1.0.
    lam: price λ of the L0 term (fraction of kept pixels), unitless. Default 1.0 (authors' ``--lamb=1``).
    beta: hard-concrete temperature β. Default 0.66 (authors' code; Louizos et al. use 2/3).
    gamma: lower stretch γ < 0. Default −0.1.
    zeta: upper stretch ζ > 1. Default 1.1.
    init_log_alpha: initial log α (table entries, generator output bias). Default 0.0 (17% of pixels dropped at
        β=0.66, γ=−0.1, ζ=1.1).
    mask_lr_scale: s above, unitless. Default 0.01.
    scale: factor on the perturbed input, ``scale · x ⊙ z`` (the authors' ``eps``). Default 1.0 (the paper's x ⊙ z).
    generator_width: channels of the inductive generator's hidden conv layer. Default 16.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.modes import frozen_bn_stats
from robust_core.registry import METHODS


# ---------------------------------------------------------------------------------------------------------- ops
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return -g


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by −1 in the backward pass."""
    return _GradReverse.apply(x)


def hard_concrete_sample(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float,
                         u: torch.Tensor | None = None) -> torch.Tensor:
    """One reparameterised hard-concrete sample per entry of ``log_alpha`` (values in [0, 1]).

    ``u`` ~ U(0, 1) of the same shape may be given (tests); by default ``torch.rand_like(log_alpha)``.
    """
    if u is None:
        u = torch.rand_like(log_alpha)
    tiny = torch.finfo(u.dtype).eps
    u = u.clamp(tiny, 1 - tiny)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_nonzero_prob(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """P(z ≠ 0) per entry = σ(log α − β log(−γ/ζ)); its sum is the expected L0 norm of z."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


class MaskTable(nn.Module):
    """Transductive masks: θ of shape (n, 1, H, W); log α = s·θ for the examples asked for."""

    def __init__(self, n: int, hw: tuple[int, int], init_log_alpha: float, lr_scale: float) -> None:
        super().__init__()
        self.lr_scale = lr_scale
        self.theta = nn.Parameter(torch.full((n, 1, *hw), init_log_alpha / lr_scale))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # no range check before indexing: reading idx.min()/max() on the host would synchronise with the GPU every
        # step; indexing itself raises on the CPU (and hits a device-side assert on CUDA)
        try:
            rows = self.theta[idx]
        except IndexError as e:
            raise IndexError(f"mask table has {self.theta.shape[0]} rows (n_train) but the batch asks for a row "
                             f"outside it ({e}); build the method with the training set's size") from e
        return self.lr_scale * rows


class MaskGenerator(nn.Module):
    """Inductive masks: x (N, C, H, W) -> log α (N, 1, H, W) by two 3×3 convolutions."""

    def __init__(self, channels: int, width: int, init_log_alpha: float, lr_scale: float) -> None:
        super().__init__()
        self.lr_scale = lr_scale
        self.init_log_alpha = init_log_alpha
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.init_log_alpha + self.lr_scale * self.net(x)


# ------------------------------------------------------------------------------------------------------- method
class MaskParams(MethodParams):
    mode: Literal["transductive", "inductive"] = "transductive"
    alpha: float = Field(1.0, ge=0)
    lam: float = Field(1.0, ge=0)
    beta: float = Field(0.66, gt=0, le=10)
    gamma: float = Field(-0.1, lt=0, ge=-10)
    zeta: float = Field(1.1, gt=1, le=10)
    init_log_alpha: float = Field(0.0, ge=-10, le=10)
    mask_lr_scale: float = Field(0.01, gt=0, le=100)
    scale: float = Field(1.0, gt=0)
    generator_width: int = Field(16, ge=1, le=256)


class _MultiplicativeBase(Method):
    """Shared machinery of xAT and xVAT: the mask module, sampling, the reversed perturbation terms."""

    Params = MaskParams

    def __init__(self, params: MaskParams, model: nn.Module, info, n_train: int = 0) -> None:
        super().__init__(params, model, info, n_train)
        c, h, w = info.shape
        if params.mode == "transductive":
            if n_train <= 0:
                raise ValueError(f"{self.registry_name} mode='transductive' keeps one mask per training example and "
                                 f"needs n_train > 0 (got {n_train}); build it through fit() or pass n_train, or use "
                                 f"mode='inductive'")
            self.mask: nn.Module = MaskTable(n_train, (h, w), params.init_log_alpha, params.mask_lr_scale)
        else:
            self.mask = MaskGenerator(c, params.generator_width, params.init_log_alpha, params.mask_lr_scale)

    def modules(self) -> dict[str, nn.Module]:
        return {"mask": self.mask}

    def log_alpha(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        if self.p.mode == "transductive":
            if idx is None:
                raise ValueError("transductive masks need the batch's example indices (batch.idx / batch.uidx)")
            return self.mask(idx).to(x.dtype)
        return self.mask(x.detach())

    def divergence(self, model: nn.Module, x_pert: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def perturbation_terms(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, log_alpha: torch.Tensor,
                           u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α·D + λ·L0 with log α reversed, D, L0). Descending the first = classifier descends α·D, mask ascends
        α·D + λ·L0. ``u`` fixes the uniform noise (tests)."""
        p = self.p
        la = grad_reverse(log_alpha)
        z = hard_concrete_sample(la, p.beta, p.gamma, p.zeta, u)
        with frozen_bn_stats(model):
            div = self.divergence(model, p.scale * x * z, target)
        l0 = hard_concrete_nonzero_prob(la, p.beta, p.gamma, p.zeta).mean()
        return p.alpha * div + p.lam * l0, div, l0


@METHODS.register("xat")
class XAT(_MultiplicativeBase):
    __doc__ = __doc__

    def divergence(self, model, x_pert, target):
        return F.cross_entropy(model(x_pert), target)

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        game, div, l0 = self.perturbation_terms(model, batch.x, batch.y, self.log_alpha(batch.x, batch.idx))
        return LossOutput(ce + game, {"ce": ce.detach(), "adv_ce": div.detach(), "l0": l0.detach()}, logits)

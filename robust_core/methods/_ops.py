"""Shared math of the perturbation-based methods (VAT, VATER, FAT, ...)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn


def widen(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 for reductions and softmax; float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def per_example_norm(d: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against ``d``."""
    return d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))


def l2_normalize(d: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each example scaled to unit L2 norm, computed in float32 or wider (safe under half-precision autocast)."""
    d32 = widen(d)
    return (d32 / per_example_norm(d32).clamp_min(eps)).to(d.dtype)


Direction = Literal["exact", "finite_difference"]
"""How a power-iteration step H·d is obtained: ``exact`` (the ξ → 0 limit) or ``finite_difference`` (a secant at ξ)."""


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of each example (B,) for distributions given by logits (log-softmax, widened to ≥ float32)."""
    logp = F.log_softmax(widen(p_logits), dim=-1)
    logq = F.log_softmax(widen(q_logits), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p ‖ q) for distributions given by logits, computed with log-softmax (stable)."""
    return kl_per_example(p_logits, q_logits).mean()


def entropy_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the entropy of softmax(logits) (the conditional-entropy term of VAT+EntMin)."""
    logp = F.log_softmax(widen(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    """Mean cross-entropy against label-smoothed targets as Feature Scattering's and ATLD's code build them: the true
    class keeps 1 − s, the other C − 1 classes share s equally (rows sum to one). (PyTorch's ``label_smoothing=s``
    instead spreads s over all C classes, leaving 1 − s + s/C on the true one.)"""
    logp = F.log_softmax(widen(logits), dim=-1)
    k = logits.shape[-1]
    t = torch.full_like(logp, s / (k - 1)).scatter_(-1, y.unsqueeze(-1), 1.0 - s)
    return -(t * logp).sum(-1).mean()


def softmax_fisher_vp(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(diag(p) − p pᵀ) v per example: the Hessian of KL(p ‖ softmax(z)) in z at z = logits."""
    p = F.softmax(widen(logits), dim=-1)
    v = widen(v)
    return p * v - p * (p * v).sum(-1, keepdim=True)


def kl_hessian_direction(
    model: nn.Module,
    x: torch.Tensor,
    d: torch.Tensor,
    how: Direction = "exact",
    xi: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step for the top eigenvector of H = ∇²_r KL(p(x) ‖ p(x + r)) at r = 0.

    Returns ``(H d, clean logits)``; the clean logits are detached and come from the same forward pass. The clean
    pass is an ordinary training-mode pass (BN running statistics see the clean batch, as for any input); passes at
    perturbed inputs leave them untouched.

    ``exact``: H = Jᵀ (diag p − p pᵀ) J with J the Jacobian of the logits in x, so H d is computed without any
    finite difference: J d by forward-mode AD (one dual forward pass), then Jᵀ(·) by one backward pass. It does not
    depend on ξ and stays accurate in float32 and under autocast, where Miyato's ``(∇KL(x + ξd))/ξ`` with ξ = 1e-6
    is dominated by rounding error (the logits move by ~1e-6 while their own rounding error is ~1e-6).

    ``finite_difference``: Miyato et al.'s estimator ∇_r KL(p(x) ‖ p(x + r)) at r = ξ d (then H d ≈ that / ξ): a
    secant. At ξ = 1e-6 (the papers' value, e.g. ``ater-vater.txt`` l. 506) it is dominated by float32 rounding; at a
    finite ξ (10, the common PyTorch ports) it is accurate but is no longer H·d: on trained mnist5k MLPs its cosine
    with H·d has median 0.35–0.48, negative for about a fifth of the digits (``benchmarks/vat_direction.py``, results
    in ``benchmarks/RESULTS.md``). Kept as an explicitly named option.
    """
    from robust_core.modes import frozen_bn_stats

    x = x.detach()
    if how == "exact":
        xr = x.clone().requires_grad_(True)
        # Outside autocast: under it, PyTorch's forward-mode BatchNorm returns a float32 tangent for a bf16 primal,
        # and the next layer then fails on mixed dtypes. The direction is computed in the input's dtype instead.
        with torch.autocast(x.device.type, enabled=False), fwAD.dual_level():
            out = model(fwAD.make_dual(xr, d.to(x.dtype)))
            logits, jd = fwAD.unpack_dual(out)
        u = softmax_fisher_vp(logits.detach(), jd.detach())
        (hd,) = torch.autograd.grad(logits, xr, grad_outputs=u.to(logits.dtype))
        return hd.detach(), logits.detach()
    if how == "finite_difference":
        with torch.no_grad():
            clean = model(x)
        r = (xi * l2_normalize(d)).requires_grad_(True)
        with frozen_bn_stats(model):
            dist = kl_logits(clean, model(x + r)) * x.shape[0]  # sum over the batch: per-example gradients
        (g,) = torch.autograd.grad(dist, r)
        return (g / xi).detach(), clean.detach()
    raise ValueError(f"unknown direction method {how!r}; use 'exact' or 'finite_difference'")


def vat_direction(
    model: nn.Module,
    x: torch.Tensor,
    power_iterations: int = 1,
    how: Direction = "exact",
    xi: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-L2 (per example) approximation of the most KL-sensitive direction at x, and the clean logits.

    Computed in float32 (the input's dtype) even inside a bf16/fp16 autocast region: the power iteration's passes
    run with autocast off, so mixed-precision training changes the cost of these passes, not the direction."""
    from contextlib import nullcontext

    from robust_core.modes import frozen_bn_stats

    d = l2_normalize(torch.randn_like(x))
    clean = None
    with torch.autocast(x.device.type, enabled=False):
        for k in range(power_iterations):
            # each step repeats the clean pass: only the first may update BN running statistics (once per batch)
            with frozen_bn_stats(model) if k else nullcontext():
                hd, clean = kl_hessian_direction(model, x, d, how, xi)
            d = l2_normalize(hd)
    return d, clean

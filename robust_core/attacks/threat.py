"""Threat models: an ε-ball in pixel units (inputs in [0, 1]) with projection, steepest-ascent step, random start.

Per-example operations: every tensor is (B, ...) and norms are taken over all non-batch dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_TINY = 1e-12  # guards divisions by a zero gradient / zero norm


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _view(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def norm_of(delta: Tensor, norm: str) -> Tensor:
    """Per-example norm of ``delta`` -> (B,)."""
    f = _flat(delta)
    if norm == "linf":
        return f.abs().amax(dim=1)
    if norm == "l2":
        return f.norm(p=2, dim=1)
    if norm == "l1":
        return f.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def _project_l1(delta: Tensor, eps: float) -> Tensor:
    """Euclidean projection onto the L1 ball (Duchi et al., ICML 2008), per example; points inside stay put."""
    f = _flat(delta)
    a = f.abs()
    inside = a.sum(dim=1) <= eps
    mu, _ = a.sort(dim=1, descending=True)
    cs = mu.cumsum(dim=1)
    ks = torch.arange(1, f.shape[1] + 1, device=f.device, dtype=f.dtype)
    cond = mu - (cs - eps) / ks > 0
    rho = (cond * ks).amax(dim=1).clamp_min(1).long()  # number of non-zero coordinates after projection
    theta = (cs.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - eps) / rho.to(f.dtype)
    proj = f.sign() * (a - theta.unsqueeze(1)).clamp_min(0)
    out = torch.where(inside.unsqueeze(1), f, proj)
    return out.reshape(delta.shape)


@dataclass(frozen=True)
class ThreatModel:
    """An ε-ball of a norm around each input; ε in pixel units of inputs in [0, 1] (8/255 stays 8/255).

    norm: ``"linf"``, ``"l2"`` or ``"l1"``. eps: radius (≥ 0).
    """

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"ThreatModel.norm={self.norm!r} is not a known norm; use one of {NORMS}")
        if not (float(self.eps) >= 0.0) or self.eps != self.eps or self.eps == float("inf"):
            raise ValueError(f"ThreatModel.eps={self.eps!r} must be a finite number ≥ 0 (pixel units, e.g. 8/255)")
        object.__setattr__(self, "eps", float(self.eps))

    def project(self, delta: Tensor) -> Tensor:
        """Nearest point of the ε-ball (exact Euclidean projection for every norm)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        if self.norm == "l2":
            n = norm_of(delta, "l2")
            scale = (self.eps / n.clamp_min(_TINY)).clamp(max=1.0)
            return delta * _view(scale, delta)
        return _project_l1(delta, self.eps)

    def step(self, grad: Tensor, step_size: float) -> Tensor:
        """Steepest-ascent step of length ``step_size`` in this norm for the gradient ``grad``.

        linf: ``step_size·sign(g)``; l2: ``step_size·g/‖g‖₂``; l1: ``step_size·sign(g_i)`` on the single coordinate
        ``i`` of largest ``|g|`` per example (the L1 steepest direction; Shaham et al. 2018).
        """
        if self.norm == "linf":
            return step_size * grad.sign()
        if self.norm == "l2":
            n = norm_of(grad, "l2")
            return step_size * grad / _view(n.clamp_min(_TINY), grad)
        f = _flat(grad)
        i = f.abs().argmax(dim=1, keepdim=True)
        out = torch.zeros_like(f).scatter_(1, i, f.gather(1, i).sign() * step_size)
        return out.reshape(grad.shape)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A uniformly random point of the ε-ball, shaped, typed and placed like ``x`` (not clipped to [0, 1])."""
        kw = dict(generator=generator, device=x.device, dtype=x.dtype)
        if self.norm == "linf":
            return (torch.rand(x.shape, **kw) * 2 - 1) * self.eps
        b, d = x.shape[0], x[0].numel()
        if self.norm == "l2":
            g = torch.randn((b, d), **kw)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(_TINY)
            r = torch.rand((b, 1), **kw) ** (1.0 / d)  # radius of a uniform point of the d-ball
            return (g * r * self.eps).reshape(x.shape)
        # l1: d+1 i.i.d. Exp(1) normalised by their sum is uniform on the simplex; dropping the last coordinate
        # gives a uniform point of the positive part of the unit L1 ball; random signs fill the ball.
        e = -torch.log(torch.rand((b, d + 1), **kw).clamp_min(_TINY))
        pos = (e / e.sum(dim=1, keepdim=True))[:, :d]
        sign = torch.where(torch.rand((b, d), **kw) < 0.5, -1.0, 1.0).to(x.dtype)
        return (pos * sign * self.eps).reshape(x.shape)

    def contains(self, delta: Tensor, tol: float = 1e-6) -> Tensor:
        """Per-example bool: ``‖delta‖ ≤ ε + tol``."""
        return norm_of(delta, self.norm) <= self.eps + tol

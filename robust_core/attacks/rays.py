"""RayS: the hard-label (decision-based) L∞ attack by ray search.

Paper: Chen & Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack", KDD 2020 (arXiv:2006.12792);
ATLD's Table IV, column RAYS (``../shared/papers/atld.txt`` §V-E, lines 262-277: L∞, ε = 8/255, CIFAR-10 / -100).
Threat model: L∞ ball of radius ``eps`` around x intersected with [0, 1]; the attacker sees only the predicted
label of the model it attacks (one query = one forward pass of one example; no gradients, no logits, no loss).

RayS searches over ray directions s ∈ {−1, +1}^D (D = input size). Along a direction, the decision-boundary
radius is r(s) = min {r : label(clip(x + r·s)) ≠ y} in L∞ pixel units (‖r·s‖∞ = r). Keeping the best direction
s* and its radius r*, it flips the sign of one block of coordinates at a time — hierarchically: the whole input,
then its two halves, then the four quarters, ... down to single coordinates, then again single coordinates — and
for each flipped candidate s':
  1. one query at the current radius r* (at r = 1, the box corner, while none is known): if clip(x + r*·s') is not
     misclassified, s' cannot beat s* and is dropped;
  2. otherwise a binary search on [0, r*] (each step one query) down to the tolerance gives r(s') < r*, which
     becomes the new best.
An example is done once r* ≤ ε (it is broken: its adversarial example is clip(x + r*·s*), inside the ball) or its
queries reach the budget; the whole batch searches in parallel, each example with its own state, as the authors'
batched code does. Misclassified clean inputs are broken at r = 0 (one query). Deterministic: no random numbers.

Ours vs the authors' code (uclaml/RayS, read for understanding; this is our own implementation): their radius is
the length along s/‖s‖₂, ours the L∞ radius along s (the same points; their binary-search tolerance 1e-3 along the
unit ray is 1e-3/√D in L∞, our default). Their batched code keeps querying broken examples until the budget is
spent; stopping an example once r* ≤ ε (their single-example code's early stopping) changes no robust-accuracy
number, since r* only decreases.

eps: L∞ radius, pixel units (no default; 8/255 in ATLD Table IV). norm: only "linf".
queries: query budget per example (default 10,000: the authors' robust-model evaluation, ``attack_robust.py``).
tol: binary-search tolerance on the L∞ radius, pixel units; None (default) = 1e-3/√D (the authors' 1e-3 along the
    unit-L2 ray).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robust_core.attacks.base import Attack
from robust_core.registry import ATTACKS


@ATTACKS.register("rays")
@dataclass(frozen=True)
class RayS(Attack):
    __doc__ = __doc__

    supported_norms: ClassVar[tuple[str, ...]] = ("linf",)
    queries: int = 10000
    tol: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.queries, int) or self.queries < 1:
            raise ValueError(f"RayS.queries={self.queries!r} must be an integer ≥ 1 (queries per example)")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"RayS.tol={self.tol!r} must be > 0 (pixel units) or None")

    @property
    def passes(self) -> int:
        """Cost estimate in forward+backward passes: at most ``queries`` forward passes ≈ a third as many."""
        return math.ceil(self.queries / 3)

    def __call__(self, model, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.search(model, x, y)[0]

    @torch.no_grad()
    def search(self, model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x_adv, radius, queries) per example: x_adv = clip(x + r*·s*) where r* ≤ ε, else x (nothing found in
        the ball); radius r* = the smallest boundary radius found (inf: none); queries used (≤ ``queries``)."""
        n, shape = len(x), x.shape[1:]
        d = x[0].numel()
        xf = x.detach().reshape(n, d)
        tol = self.tol if self.tol is not None else 1e-3 / math.sqrt(d)
        used = torch.zeros(n, dtype=torch.long, device=x.device)

        def fooled(idx: Tensor, r: Tensor, s: Tensor) -> Tensor:
            """One query for each example ``idx``: is clip(x + r·s) misclassified?"""
            used[idx] += 1
            z = (xf[idx] + r.view(-1, 1) * s).clamp(0.0, 1.0).to(x.dtype).reshape(-1, *shape)
            return model(z).argmax(1) != y[idx]

        sign = torch.ones_like(xf)
        radius = torch.full((n,), float("inf"), dtype=xf.dtype, device=x.device)
        everyone = torch.arange(n, device=x.device)
        if n:
            radius[fooled(everyone, torch.zeros(n, dtype=xf.dtype, device=x.device), sign)] = 0.0
        level, block = 0, 0
        while True:
            idx = ((radius > self.eps) & (used < self.queries)).nonzero().flatten()
            if len(idx) == 0:
                break
            size = math.ceil(d / 2**level)
            lo_c, hi_c = block * size, min(d, (block + 1) * size)
            cand = sign[idx].clone()
            cand[:, lo_c:hi_c] *= -1
            hi = radius[idx].clamp(max=1.0)  # r ≥ 1 from x ∈ [0, 1] is the box corner: no need to look further
            ok = fooled(idx, hi, cand)
            idx, cand, hi = idx[ok], cand[ok], hi[ok]
            lo = torch.zeros_like(hi)
            live = (hi - lo > tol) & (used[idx] < self.queries)
            while live.any():
                j = live.nonzero().flatten()
                mid = (lo[j] + hi[j]) / 2
                f = fooled(idx[j], mid, cand[j])
                hi[j] = torch.where(f, mid, hi[j])
                lo[j] = torch.where(f, lo[j], mid)
                live = (hi - lo > tol) & (used[idx] < self.queries)
            better = hi < radius[idx]
            radius[idx[better]] = hi[better]
            sign[idx[better]] = cand[better]
            block += 1
            if block == 2**level or hi_c == d:
                level, block = level + 1, 0
        broken = radius <= self.eps
        r = torch.where(broken, radius, torch.zeros_like(radius))
        x_adv = torch.where(broken.view(-1, 1), (xf + r.view(-1, 1) * sign).clamp(0.0, 1.0), xf)
        return x_adv.to(x.dtype).reshape(x.shape).detach(), radius, used

    @classmethod
    def smoke(cls, eps: float, norm: str = "linf") -> "RayS":
        return cls(eps=eps, norm=norm, queries=50)

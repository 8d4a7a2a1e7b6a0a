"""The one attack loop (``perturb``) and common per-example losses.

Every iterative or one-step attack in this package is ``perturb`` with a threat model, a loss and a step schedule:
FGSM = 1 step of size ε from x; PGD-k = k steps from a random start; CW-k = PGD-k on the CW margin loss;
EOT = the gradient averaged over n forward passes of a model that samples at test time.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_core.attacks.threat import ThreatModel

LossFn = Callable[[Tensor], Tensor]  # model output -> per-example loss (B,), to maximise


def ce_loss(y: Tensor) -> LossFn:
    """Per-example cross-entropy of the logits against labels ``y`` (to maximise)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(y: Tensor, kappa: float = 0.0) -> LossFn:
    """Carlini–Wagner margin ``min(max_{j≠y} z_j − z_y, κ)`` per example (to maximise; κ ≥ 0 caps it, 0 = the
    usual untargeted CW-k of Madry et al.; ``kappa=float('inf')`` leaves it uncapped)."""

    def fn(logits: Tensor) -> Tensor:
        zy = logits.gather(1, y.view(-1, 1)).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (other - zy).clamp(max=kappa)

    return fn


def _box(x: Tensor, delta: Tensor) -> Tensor:
    """Shrink ``delta`` so that ``x + delta`` lies in [0, 1] (per coordinate; stays inside any norm ball)."""
    return (x + delta).clamp(0.0, 1.0) - x


def _check(x: Tensor, steps: int, step_size: float, restarts: int, eot_samples: int, check_range: bool) -> None:
    problems = []
    if steps < 0:
        problems.append(f"steps={steps} must be ≥ 0")
    if not step_size >= 0:
        problems.append(f"step_size={step_size} must be ≥ 0 (pixel units)")
    if restarts < 1:
        problems.append(f"restarts={restarts} must be ≥ 1")
    if eot_samples < 1:
        problems.append(f"eot_samples={eot_samples} must be ≥ 1")
    if check_range and x.numel() and (x.min() < 0 or x.max() > 1):
        problems.append(f"inputs must lie in [0, 1] (got [{x.min().item():.3g}, {x.max().item():.3g}]); "
                        "normalisation belongs inside the model")
    if problems:
        raise ValueError("perturb: " + "; ".join(problems))


def _loss(model, loss_fn: LossFn, z: Tensor) -> Tensor:
    out = loss_fn(model(z))
    if out.dim() != 1 or out.shape[0] != z.shape[0]:
        raise ValueError(f"loss_fn must return per-example losses of shape ({z.shape[0]},), got {tuple(out.shape)}")
    return out


def perturb(model, x: Tensor, loss_fn: LossFn, threat: ThreatModel, steps: int, step_size: float,
            random_start: bool = False, restarts: int = 1, generator: torch.Generator | None = None,
            eot_samples: int = 1, check_range: bool = True, start: Tensor | None = None) -> Tensor:
    """The one attack loop: maximise ``loss_fn(model(x+δ))`` over δ in the ε-ball ∩ {x+δ ∈ [0,1]}; returns x_adv.

    model: any callable (an ``nn.Module`` or an inference-time wrapper); its train/eval mode is NOT changed (the
    caller decides, e.g. with ``robust_core.modes.eval_mode``). loss_fn: model output -> per-example losses (B,).
    steps: ascent steps per restart (0 = only the start point). step_size: pixel units (ε-fraction × ε).
    random_start: start at a uniform point of the ball (else at δ=0). restarts: independent runs; per example
    the one with the highest final loss is kept (each restart beyond one costs one extra forward pass to score it).
    generator: seeds the random starts. eot_samples: forward/backward passes whose gradients are averaged per
    step (expectation over transformation, for models that sample at test time).
    check_range: refuse inputs outside [0, 1] (reads two values on the host: a GPU synchronisation; training-time
    attacks turn it off, their inputs come from ``fit``'s data, in [0, 1] by construction). start: where the
    ascent starts instead of x or a random point (e.g. the output of an earlier attack; projected on the ball
    around ``x`` and the box first), so attacks can be chained on the same ball.
    Forward passes: ``restarts·steps·eot_samples`` (+ ``restarts`` scoring passes when ``restarts > 1``).
    Parameter ``.grad`` fields are never touched (gradients are taken w.r.t. δ only).
    """
    _check(x, steps, step_size, restarts, eot_samples, check_range)
    x = x.detach()
    best = x.clone()
    best_loss = x.new_full((x.shape[0],), float("-inf"))
    for _ in range(restarts):
        if start is not None:
            delta = start.detach().to(x.dtype) - x
        else:
            delta = threat.random_init(x, generator) if random_start else torch.zeros_like(x)
        delta = _box(x, threat.project(delta))
        for _ in range(steps):
            delta.requires_grad_(True)
            grad = torch.zeros_like(x)
            for _ in range(eot_samples):
                loss = _loss(model, loss_fn, x + delta)
                grad = grad + torch.autograd.grad(loss.sum(), delta)[0]
            with torch.no_grad():
                delta = _box(x, threat.project(delta.detach() + threat.step(grad, step_size)))
        if restarts == 1:
            return (x + delta).detach()
        with torch.no_grad():
            score = _loss(model, loss_fn, x + delta)
            better = score > best_loss
            best[better] = (x + delta)[better]
            best_loss = torch.where(better, score, best_loss)
    return best.detach()

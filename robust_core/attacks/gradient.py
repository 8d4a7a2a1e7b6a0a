"""Gradient attacks on the one loop (``perturb``): FGSM / one-step L1-L2-L∞, the L2 gradient attack, PGD-k, CW-k."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from robust_core.attacks.base import Attack
from robust_core.attacks.key import AttackKey
from robust_core.attacks.loop import LossFn, ce_loss, cw_margin_loss, perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.registry import ATTACKS

LOSSES: dict[str, Callable[[Tensor], LossFn]] = {"ce": ce_loss, "cw": cw_margin_loss}


def _loss_factory(loss: str | Callable[[Tensor], LossFn]) -> Callable[[Tensor], LossFn]:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; use one of {sorted(LOSSES)} or a callable y -> loss_fn")
    return LOSSES[loss]


@ATTACKS.register("fgsm")
@dataclass(frozen=True)
class FGSM(Attack):
    """Fast gradient (sign) method: one steepest-ascent step of length ε from x, then clipped to [0, 1].

    Paper: Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015 (L∞);
    the one-step L1 / L2 / L∞ attacks of Shaham, Yamada & Negahban, "Understanding adversarial training",
    Neurocomputing 2018 (L1: the single pixel of largest |∂loss/∂x| moved by ε; L2: ε·g/‖g‖₂).
    Threat model: ``norm`` ball of radius ``eps``. Input range [0, 1].
    eps: radius, pixel units (no default; e.g. 0.3 MNIST, 8/255 CIFAR-10).
    norm: "linf" (default), "l2" or "l1".
    loss: "ce" (default) or "cw" or a callable ``y -> (logits -> per-example loss)``.
    """

    loss: Any = "ce"

    @property
    def key(self) -> AttackKey:
        return AttackKey("fgsm" if self.norm == "linf" else f"fgm-{self.norm}")

    def loss_fn(self, y: Tensor) -> LossFn:
        """The per-example loss this attack ascends for labels ``y`` (on the attacked model's output)."""
        return _loss_factory(self.loss)(y)

    def __call__(self, model, x, y, generator=None):
        return perturb(model, x, self.loss_fn(y), ThreatModel(self.norm, self.eps), steps=1, step_size=self.eps)


@ATTACKS.register("l2grad")
@dataclass(frozen=True)
class L2Grad(Attack):
    """L2 gradient attack: ``x + ε·∇ₓℓ/‖∇ₓℓ‖₂`` (one step; ``steps>1`` = iterated with step ε/steps), clipped to [0, 1].

    Paper: Lyu, Huang & Liang, "A unified gradient regularization family for adversarial examples", ICDM 2015
    (the p=2 member of the family; used for the L2 noise-level curves of ATER, figure 2).
    Threat model: L2 ball of radius ``eps``. Input range [0, 1].
    eps: L2 radius, pixel units (no default). norm: only "l2". n_steps: 1 (default).
    """

    supported_norms: ClassVar[tuple[str, ...]] = ("l2",)
    norm: str = "l2"
    n_steps: int = 1

    @property
    def steps(self) -> int:
        return self.n_steps

    @property
    def step_size(self) -> float:
        return float(self.eps) / max(1, self.n_steps)

    def __call__(self, model, x, y, generator=None):
        return perturb(model, x, ce_loss(y), ThreatModel("l2", self.eps), steps=self.n_steps,
                       step_size=self.step_size)


@ATTACKS.register("pgd")
@dataclass(frozen=True)
class PGD(Attack):
    """Projected gradient descent PGD-k: k steepest-ascent steps from a random start, projected on the ball ∩ [0,1].

    Paper: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models resistant to adversarial
    attacks", ICLR 2018. Threat model: ``norm`` ball ("linf" default, "l2"; "l1" works but is weak — use
    AutoAttack for L1). Input range [0, 1].
    eps: radius, pixel units (no default). n_steps: 20. step_frac: step size as a fraction of ε (0.25 = 2/255 at
    8/255; ``step_size = step_frac·eps``). random_start: True. n_restarts: 1 (per example the restart with the
    highest loss is kept). loss: "ce" (default), "cw" or a callable ``y -> (output -> per-example loss)``.
    eot_samples: 1 (gradients averaged over this many forward passes: EOT for models that sample at test time).
    """

    n_steps: int = 20
    step_frac: float = 0.25
    random_start: bool = True
    n_restarts: int = 1
    loss: Any = "ce"
    eot_samples: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps < 1 or self.n_restarts < 1 or self.eot_samples < 1 or not self.step_frac > 0:
            raise ValueError(f"{type(self).__name__}: n_steps, n_restarts, eot_samples must be ≥ 1 and step_frac > 0"
                             f" (got {self.n_steps}, {self.n_restarts}, {self.eot_samples}, {self.step_frac})")
        _loss_factory(self.loss)

    @property
    def key(self) -> AttackKey:
        return AttackKey("cw" if self.loss == "cw" else self.registry_name, self.n_steps)

    @property
    def label(self) -> str:
        return str(self.key) + (f"-eot{self.eot_samples}" if self.eot_samples > 1 else "")

    @property
    def steps(self) -> int:
        return self.n_steps

    @property
    def step_size(self) -> float:
        return self.step_frac * float(self.eps)

    @property
    def restarts(self) -> int:
        return self.n_restarts

    @property
    def passes(self) -> int:
        return self.n_steps * self.n_restarts * self.eot_samples

    def loss_fn(self, y: Tensor) -> LossFn:
        """The per-example loss this attack ascends for labels ``y`` (on the attacked model's output)."""
        return _loss_factory(self.loss)(y)

    def __call__(self, model, x, y, generator=None):
        return perturb(model, x, self.loss_fn(y), ThreatModel(self.norm, self.eps), steps=self.n_steps,
                       step_size=self.step_size, random_start=self.random_start, restarts=self.n_restarts,
                       generator=generator, eot_samples=self.eot_samples)

    @classmethod
    def smoke(cls, eps, norm="linf"):
        return cls(eps=eps, norm=norm, n_steps=3, step_frac=0.5, n_restarts=2)


@ATTACKS.register("cw")
@dataclass(frozen=True)
class CW(PGD):
    """CW-k: PGD-k on the Carlini–Wagner margin loss ``max_{j≠y} z_j − z_y`` (capped at κ).

    Paper: Carlini & Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P 2017; the L∞ PGD form
    of Madry et al. 2018 as used in the ATLD tables. Threat model: ``norm`` ball ("linf" default). Input range [0, 1].
    eps: radius, pixel units. n_steps: 20. step_frac: 0.25 of ε. random_start: True. n_restarts: 1.
    kappa: 0 (confidence cap of the margin; the margin stops growing once it reaches κ). eot_samples: 1.
    loss: "cw" (always, unless a callable ``y -> loss_fn`` replaces it: an adaptive objective that contains the
    margin, see ``robust_core.attacks.evaluate``).
    """

    loss: Any = "cw"
    kappa: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.loss):
            object.__setattr__(self, "loss", "cw")

    def loss_fn(self, y: Tensor) -> LossFn:
        return self.loss(y) if callable(self.loss) else cw_margin_loss(y, self.kappa)

    def __call__(self, model, x, y, generator=None):
        return perturb(model, x, self.loss_fn(y), ThreatModel(self.norm, self.eps),
                       steps=self.n_steps, step_size=self.step_size, random_start=self.random_start,
                       restarts=self.n_restarts, generator=generator, eot_samples=self.eot_samples)


@dataclass(frozen=True)
class Then(Attack):
    """Two attacks in a row on the same ball: ``first`` from x, then ``second`` (a PGD-type ascent: its steps, step
    size and loss; no random start) from the first's output, projected on the ball around the original x ∩ [0, 1].

    Paper: ATLD Table V's composed adaptive attack (``../shared/papers/atld.txt`` §V-F, line 281: "'Cla-step20 +
    D-step1' means that the classification loss is first used to compute attacking gradients with 20 steps then
    followed by 1 step compute attacking gradients with the discriminating loss"). Threat model: ``first``'s (both
    phases must share norm and ε). Not registered: it names no attack of its own; its key is the first's (the
    adaptive suite's objective says what follows, e.g. ``pgd-20[cla-then-d]``).
    eps: the radius, pixel units (= first.eps = second.eps). first: any attack (None: refused). second: a ``PGD``
    (its ``n_steps``, ``step_frac`` and ``loss`` are used).
    """

    registry_name: ClassVar[str] = "then"
    first: Any = None
    second: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.first, Attack) or not isinstance(self.second, PGD):
            raise ValueError("Then: first must be an attack and second a PGD-type attack")
        if {self.first.eps, self.second.eps} != {self.eps} or {self.first.norm, self.second.norm} != {self.norm}:
            raise ValueError(f"Then: both phases must attack the same ball (eps={self.eps}, norm={self.norm}); "
                             f"got {self.first.eps}/{self.first.norm} and {self.second.eps}/{self.second.norm}")

    @property
    def key(self) -> AttackKey:
        return self.first.key

    @property
    def label(self) -> str:
        return f"{self.first.label}+{self.second.label}"

    @property
    def steps(self) -> int:
        return self.first.steps + self.second.steps

    @property
    def step_size(self) -> float:
        return self.first.step_size

    @property
    def passes(self) -> int:
        return self.first.passes + self.second.passes

    def __call__(self, model, x, y, generator=None):
        x1 = self.first(model, x, y, generator=generator)
        s = self.second
        return perturb(model, x, s.loss_fn(y), ThreatModel(self.norm, self.eps), steps=s.n_steps,
                       step_size=s.step_size, generator=generator, eot_samples=s.eot_samples, start=x1)

"""Shaham et al.'s fixed adversarial sets A_mnist / A_cifar10, made once on a baseline net and shown to other nets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robust_core.attacks.base import Adversarial, Attack, predict, run_batched
from robust_core.attacks.gradient import FGSM
from robust_core.attacks.key import AttackKey
from robust_core.attacks.threat import NORMS


@dataclass(frozen=True)
class FixedSet(Attack):
    """The fixed adversarial set of Shaham, Yamada & Negahban, "Understanding adversarial training", Neurocomputing
    2018 (``../shared/papers/shaham-robust-optimization.txt`` §5.1–5.2, eq. (11), Tables 1–2): each one-step attack
    of eq. (11) — the steepest-ascent step of the norm's ball: L∞ the sign of the gradient (FGSM), L2 the gradient's
    direction, L1 the one pixel of largest |gradient| — is run on the *correctly classified* test points of the
    model it is made on (the baseline net), and only the examples that fool that model are kept. The set is the
    union over the attacks (a test point fooled by two attacks gives two examples), so the baseline scores exactly
    0 % on it by construction (A_mnist: 1,203 examples with L1, L2 and L∞; A_cifar10: 1,547 with L2 and L∞).
    Its size and composition are recorded (``Adversarial.info``, the record's ``options.fixed_set``).

    The paper does not give the radii; we use the dataset's L∞ and L2 ε of the evaluation settings, and for L1 a
    radius ≥ 1 (5× the L2 ε in the suite), so the one pixel may move across the whole [0, 1] range (the paper's
    single-pixel examples, Fig. 1). Threat model: a different ball per attack, in pixel units of inputs in [0, 1].

    eps: L∞ radius (no default; 0.3 MNIST, 8/255 CIFAR-10). norm: the attacks' norms joined by "+", in order
    ("linf+l2+l1" default, A_mnist; "linf+l2" A_cifar10). l2_eps: L2 radius (2.0). l1_eps: L1 radius (10.0).
    ``run(model, ...)`` makes the set on ``model`` (in a suite: the ``baseline``); it is a set, not one example per
    input, so it has no per-example ``__call__``.
    """

    registry_name: ClassVar[str] = "fixed-set"

    norm: str = "linf+l2+l1"
    l2_eps: float = 2.0
    l1_eps: float = 10.0

    def __post_init__(self) -> None:
        norms = self.norms
        if not norms or len(set(norms)) != len(norms) or any(n not in NORMS for n in norms):
            raise ValueError(f"FixedSet.norm={self.norm!r}: distinct norms of {NORMS} joined by '+', e.g. 'linf+l2'")
        for name in ("eps", "l2_eps", "l1_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise ValueError(f"FixedSet.{name}={v!r} must be a finite number ≥ 0 in pixel units")

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.norm.split("+")) if self.norm else ()

    @property
    def parts(self) -> tuple[FGSM, ...]:
        """The one-step attacks of eq. (11), one per norm, in ``norm``'s order."""
        radius = {"linf": self.eps, "l2": self.l2_eps, "l1": self.l1_eps}
        return tuple(FGSM(eps=radius[n], norm=n) for n in self.norms)

    @property
    def key(self) -> AttackKey:
        return AttackKey(self.registry_name)

    @property
    def passes(self) -> int:
        return 1 + len(self.norms)  # the clean prediction, then one gradient step per attack

    def __call__(self, model, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("FixedSet is a set of examples, not one adversarial per input: use FixedSet.run")

    def run(self, model, x: Tensor, y: Tensor, batch_size: int = 500, generator: torch.Generator | None = None
            ) -> Adversarial:
        """The set made on ``model`` from the test points ``(x, y)``: examples with their labels (``Adversarial.y``),
        and ``info["fixed_set"]``: ``n`` (its size), ``by_norm`` (examples per attack, by its norm),
        ``test_points`` (how many distinct test points they come from), ``correct`` (test points ``model``
        classifies correctly) and ``of`` (test points given)."""
        correct = predict(model, x, batch_size) == y
        xc, yc = x[correct], y[correct]
        xs, ys, by_norm = [], [], {}
        fooled_any = torch.zeros(len(yc), dtype=torch.bool, device=y.device)
        for a in self.parts:
            adv = run_batched(a, model, xc, yc, batch_size, generator)
            fooled = predict(model, adv, batch_size) != yc
            xs.append(adv[fooled])
            ys.append(yc[fooled])
            by_norm[a.norm] = int(fooled.sum())
            fooled_any |= fooled
        info = {"n": sum(by_norm.values()), "by_norm": by_norm, "test_points": int(fooled_any.sum()),
                "correct": int(correct.sum()), "of": len(y)}
        return Adversarial(torch.cat(xs), y=torch.cat(ys), info={"fixed_set": info})

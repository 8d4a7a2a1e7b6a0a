"""AutoAttack through the authors' implementation (``pyautoattack`` on PyPI), with its own masking checks captured."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robust_core.attacks.base import Adversarial, Attack
from robust_core.attacks.key import AttackKey
from robust_core.registry import ATTACKS

_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_VERSIONS = ("standard", "plus", "rand", "custom")
_KNOWN = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")


class _AsDtype(torch.nn.Module):
    """AutoAttack draws its random tensors in float32: cast them to the model's input dtype (e.g. float64)."""

    def __init__(self, model, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype  # the model's own train/eval flags are left as they are

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z.to(self.dtype))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _reset_dynamic_check() -> None:
    """pyautoattack's check for dynamic defenses counts autograd calls seen during one forward pass in a module-level
    dict that it never resets: after one model that differentiates inside its forward (e.g. ATLD's IMT), every later
    run in the same process would be flagged "dynamic". Reset it so each run's flag is about its own model."""
    from pyautoattack import checks

    for k in checks.funcs:
        checks.funcs[k] = 0


@ATTACKS.register("autoattack")
@dataclass(frozen=True)
class AutoAttack(Attack):
    """AutoAttack (APGD-CE, APGD-T, FAB-T, Square in the standard version), run by the authors' code.

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", ICML 2020; implementation ``pyautoattack`` (PyPI, v0.2.0). Threat model: ``norm`` ball ("linf"
    default, "l2", "l1"). Input range [0, 1].
    eps: radius, pixel units (no default). version: "standard" (default; the one for final tables), "plus", "rand",
    or "custom" with ``attacks`` (a subset of apgd-ce, apgd-t, apgd-dlr, fab, fab-t, square; labelled as such).
    seed: 0 (AutoAttack's own seed). n_iter: None (= the authors' 100 APGD iterations; a smaller value is a
    non-standard, labelled, cheaper run for tests/model selection).
    AutoAttack's own warnings (randomised defense, non-softmax output, dynamic graph, zero gradients, Square
    stronger than the gradient attacks) are captured by ``run`` and recorded as masking flags.
    """

    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    seed: int = 0
    n_iter: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in _VERSIONS:
            raise ValueError(f"AutoAttack.version={self.version!r}; use one of {_VERSIONS}")
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("AutoAttack: give `attacks` exactly when version='custom' (the other versions fix them)")
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(self.attacks))
            bad = [a for a in self.attacks if a not in _KNOWN]
            if bad:
                raise ValueError(f"AutoAttack: unknown sub-attacks {bad}; use some of {_KNOWN}")

    @property
    def key(self) -> AttackKey:
        """``aa`` whatever the version: a table column names AutoAttack; a non-standard run says so in its label."""
        return AttackKey("aa")

    @property
    def label(self) -> str:
        lab = "aa" if self.version == "standard" else f"aa-{self.version}"
        if self.attacks:
            lab += "(" + "+".join(self.attacks) + ")"
        if self.n_iter is not None:
            lab += f"-it{self.n_iter}"
        return lab

    @property
    def steps(self) -> int:
        return 100 if self.n_iter is None else self.n_iter

    @property
    def step_size(self) -> float:
        return float("nan")  # APGD adapts its step size

    @property
    def restarts(self) -> int:
        """APGD-CE restarts as the authors' version sets them (1 standard L∞/L2, 5 for L1 and 'custom')."""
        return int(self._adversary(torch.nn.Identity(), "cpu").apgd.n_restarts)

    @property
    def passes(self) -> int:
        """Rough gradient-pass equivalents per example: standard = APGD-CE 100 + APGD-T 9×100 + FAB-T 9×100 +
        Square 5,000 forward-only queries (≈ 1,000 passes); other versions scale with their iterations."""
        if self.version == "custom":
            return len(self.attacks or ()) * self.steps
        return 3000 * self.steps // 100

    def protocol(self) -> dict[str, Any]:
        import pyautoattack

        p = super().protocol()
        p.update(library="pyautoattack", library_version=pyautoattack.__version__)
        return p

    def identity(self) -> dict[str, Any]:
        """The authors' code is outside this package: its version is part of what the numbers are."""
        import pyautoattack

        return {**super().identity(), "pyautoattack": pyautoattack.__version__}

    def _adversary(self, model, device):
        from pyautoattack import AutoAttack as AA

        kw: dict[str, Any] = dict(device=device, eps=float(self.eps), norm=_NORM[self.norm], seed=self.seed,
                                  version=self.version)
        if self.attacks is not None:
            kw["attacks"] = list(self.attacks)
        adv = AA(model, **kw)
        if self.n_iter is not None:
            adv.apgd.n_iter = self.n_iter
            adv.apgd_targeted.n_iter = self.n_iter
            adv.fab.n_iter = self.n_iter
        return adv

    def run(self, model, x: Tensor, y: Tensor, batch_size: int = 500, generator: torch.Generator | None = None
            ) -> Adversarial:
        """x_adv for the whole set and AutoAttack's own warnings as flags; the model's mode is not touched.
        ``generator`` is not used: AutoAttack seeds itself with ``seed``."""
        adv = self._adversary(_AsDtype(model, x.dtype), x.device)
        _reset_dynamic_check()
        cap = _Capture()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(cap)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # AutoAttack works in float32 throughout; the wrapper casts to the model's dtype
                x_adv, _ = adv.run_standard_evaluation(x.float(), y, batch_size=batch_size)
        finally:
            logger.removeHandler(cap)
        msgs = list(dict.fromkeys([str(w.message) for w in caught] + cap.messages))
        return Adversarial(x_adv.detach().to(x.dtype), [f"autoattack: {m.strip()}" for m in msgs])

    def __call__(self, model, x, y, generator=None):
        return self.run(model, x, y).x

    @classmethod
    def smoke(cls, eps, norm="linf"):
        return cls(eps=eps, norm=norm, version="custom", attacks=("apgd-ce",), n_iter=5)

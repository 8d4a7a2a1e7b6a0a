"""Attack base class, ε formatting, batching and accuracy helpers shared by every attack and suite."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import Tensor

from robust_core.attacks.threat import NORMS


def eps_str(eps: float) -> str:
    """ε as a fraction string when it is one of pixel levels: 8/255 -> '8/255', 0.3 -> '3/10', 0 -> '0'."""
    eps = float(eps)
    if eps == 0:
        return "0"
    f = Fraction(eps).limit_denominator(10000)
    exact = abs(float(f) - eps) < 1e-12 * max(1.0, abs(eps))
    if exact and 10**6 % f.denominator == 0:  # decimal-like: 0.3 -> 3/10, 2 -> 2, 1.5 -> 3/2
        return str(f)
    k = eps * 255
    if abs(k - round(k)) < 1e-9 * max(1.0, abs(k)):  # pixel levels: 8/255, 10/255 (not 2/51)
        return f"{round(k)}/255"
    return str(f) if exact else repr(eps)


def library_version() -> tuple[str, str]:
    import robust_core

    return "robust_core", getattr(robust_core, "__version__", "0")


@dataclass(frozen=True)
class Attack:
    """Base of every registered attack. Subclasses are frozen dataclasses whose fields are the attack's protocol.

    ``__call__(model, x, y, generator=None) -> x_adv`` (detached, in the ε-ball and in [0, 1]); the model's
    train/eval mode is left as the caller set it (suites attack in eval mode through ``robust_core.modes``).
    """

    registry_name: ClassVar[str]
    supported_norms: ClassVar[tuple[str, ...]] = NORMS

    eps: float
    norm: str = "linf"

    def __post_init__(self) -> None:
        if self.norm not in self.supported_norms:
            raise ValueError(f"{type(self).__name__} supports norms {self.supported_norms}, got norm={self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and 0 <= self.eps < float("inf")):
            raise ValueError(f"{type(self).__name__}.eps={self.eps!r} must be a finite number ≥ 0 in pixel units "
                             "(inputs in [0, 1]; write 8/255 as 8/255, not 8)")

    def __call__(self, model, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``pgd-20``."""
        return self.registry_name

    @property
    def steps(self) -> int:
        return 1

    @property
    def step_size(self) -> float:
        return float(self.eps)

    @property
    def restarts(self) -> int:
        return 1

    def protocol(self) -> dict[str, Any]:
        """Everything that defines the number this attack produces (minus n_examples/seed, added by the suite)."""
        lib, ver = library_version()
        p = {"attack": self.registry_name, "label": self.label, "norm": self.norm, "eps": float(self.eps),
             "eps_str": eps_str(self.eps), "steps": self.steps, "step_size": float(self.step_size),
             "restarts": self.restarts, "library": lib, "library_version": ver}
        extra = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("eps", "norm")}
        p["options"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                        for k, v in extra.items()}
        return p

    @classmethod
    def smoke(cls, eps: float, norm: str = "linf") -> "Attack":
        """The cheapest instance (few steps) for tests; registry-wide tests build every attack through this."""
        return cls(eps=eps, norm=norm)

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def predict(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted labels, batched, on the model's device; returned on ``x``'s device."""
    dev = model_device(model)
    out = [model(x[i:i + batch_size].to(dev)).argmax(1).to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.long)


def run_batched(attack: Attack, model, x: Tensor, y: Tensor, batch_size: int = 500,
                generator: torch.Generator | None = None) -> Tensor:
    """Run an attack batch by batch on the model's device; x_adv returned on ``x``'s device."""
    dev = model_device(model)
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(attack(model, x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev),
                           generator=generator).to(x.device))
    return torch.cat(outs) if outs else x.clone()

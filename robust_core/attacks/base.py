"""Attack base class, ε formatting, batching and accuracy helpers shared by every attack and suite."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from robust_core.attacks.key import AttackKey
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
    """("robust_core", the installed robust-sweep version); "unknown" when the package is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "robust_core", version("robust-sweep")
    except PackageNotFoundError:
        return "robust_core", "unknown (robust-sweep not installed)"


class Adversarial(NamedTuple):
    """What an attack makes for a whole set. x: one adversarial input per input. flags: the attack's own warnings
    (masking-audit footnotes, e.g. AutoAttack's). keep: bool mask (n,) of the examples that form the evaluated set
    (None: all; e.g. a fixed set keeps only examples that fool the model it is made on). info: facts about the set,
    recorded in the record's options (e.g. its composition). y: the labels of ``x`` when it is not one input per
    given input (a set that holds several attacks' examples of one test point, e.g. Shaham's fixed set); None: the
    given labels."""

    x: Tensor
    flags: tuple[str, ...] | list[str] = ()
    keep: Tensor | None = None
    info: dict[str, Any] | None = None
    y: Tensor | None = None


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


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

    def run(self, model, x: Tensor, y: Tensor, batch_size: int = 500, generator: torch.Generator | None = None
            ) -> Adversarial:
        """The adversarial examples of a whole set, batch by batch on the model's device (what the suites call;
        an attack that warns about its own run, or evaluates only part of the set, overrides it). The model's mode
        is not touched."""
        return Adversarial(run_batched(self, model, x, y, batch_size, generator))

    @property
    def key(self) -> AttackKey:
        """Identity in tables (``robust_core.attacks.key``): the registry name, with the step count when iterative."""
        return AttackKey(self.registry_name, self.steps if self.steps > 1 else None)

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``pgd-20``: the key, plus whatever else distinguishes this run of it."""
        return str(self.key)

    @property
    def steps(self) -> int:
        return 1

    @property
    def passes(self) -> int:
        """Forward+backward passes per example (for cost estimates): steps × restarts."""
        return self.steps * self.restarts

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
        p["options"] = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("eps", "norm")}
        return p

    def identity(self) -> dict[str, Any]:
        """What makes this attack's numbers what they are, for reuse keys: its class and every field (the code
        itself is hashed separately, see ``robust_core.attacks.evaluate.code_version``)."""
        cls = type(self)
        return {"class": f"{cls.__module__}.{cls.__qualname__}",
                "fields": {f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

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

"""Evaluation settings: frozen, typed, unknown keys rejected — the contract between a pipeline profile's
``datasets.<d>.eval`` (or ``robust-sweep eval``'s flags) and the suites, validated before anything runs.

``EvalOptions`` is what a person sets; ``EvalSettings`` adds what the caller knows (the dataset, whose source gives
the default radii and grids, and the model's name in the records). Radii are pixel units of inputs in [0, 1]; write
``8/255``, not ``8``.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from robust_core.config import ConfigError, Number, Strict, _format_errors, linf_pixel_radius


class AuditSettings(Strict):
    """Thresholds of the gradient-masking audit. tol: slack in accuracy (fraction) on top of one example (1/n).
    large_eps_acc: accuracy allowed at the very large ε. zero_grad_frac: fraction of examples with an exactly-zero
    input gradient that is flagged."""

    tol: float = Field(0.01, ge=0, le=1)
    large_eps_acc: float = Field(0.10, ge=0, le=1)
    zero_grad_frac: float = Field(0.05, ge=0, le=1)


class AutoAttackOptions(Strict):
    """AutoAttack in the autoattack suite. version: "standard" (the one for final tables), "plus", "rand", or
    "custom" with ``attacks`` (a subset of apgd-ce, apgd-t, apgd-dlr, fab, fab-t, square; labelled as such).
    n_iter: None = the authors' 100 APGD iterations (fewer is a labelled, non-standard run). norm: "linf" (default),
    "l2" or "l1" (the radius is the settings' ε of that norm)."""

    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    n_iter: int | None = Field(None, ge=1)
    norm: Literal["linf", "l2", "l1"] = "linf"

    @model_validator(mode="after")
    def _as_the_attack_checks_it(self) -> "AutoAttackOptions":
        from robust_core.attacks.autoattack import AutoAttack

        AutoAttack(eps=0.0, norm=self.norm, version=self.version, attacks=self.attacks, n_iter=self.n_iter)
        return self


Radius = Annotated[Number, Field(ge=0)]
Steps = Annotated[int, Field(ge=1)]


class EvalOptions(Strict):
    """How to evaluate (the profile's ``datasets.<d>.eval``; every field optional).

    eps: L∞ radius (None = the dataset's default, e.g. 0.3 MNIST, 8/255 CIFAR-10). l2_eps: L2 radius (None = the
    dataset's default). n_examples: None = the full test set (final tables); a number = a seeded subset, labelled
    subset=True (model selection only). seed: 0 (subset choice and random starts). batch_size: 500. steps: PGD/CW
    step counts, the papers' (20, 40, 100) by default; a profile's list replaces them in order. step_frac: 0.25
    (step = ε/4). restarts: 1. eps_grid / l2_grid: radii of the accuracy-vs-ε curves (None = the dataset's).
    eot_samples: 10 (gradient samples per step for models that sample at test time). autoattack: AutoAttack options.
    rays_queries: 10,000 (RayS's query budget per example, the authors' robust-model evaluation). audit:
    masking-audit thresholds.
    """

    eps: Radius | None = None
    l2_eps: Radius | None = None
    n_examples: int | None = Field(None, ge=1)
    seed: int = 0
    batch_size: int = Field(500, ge=1)
    steps: tuple[Steps, ...] = Field((20, 40, 100), min_length=1)
    step_frac: float = Field(0.25, gt=0)
    restarts: int = Field(1, ge=1)
    eps_grid: tuple[Radius, ...] | None = None
    l2_grid: tuple[Radius, ...] | None = None
    eot_samples: int = Field(10, ge=1)
    autoattack: AutoAttackOptions = Field(default_factory=AutoAttackOptions)
    rays_queries: int = Field(10000, ge=1)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @field_validator("eps")
    @classmethod
    def _pixel_units(cls, v: float | None) -> float | None:
        return linf_pixel_radius(v)


class EvalSettings(EvalOptions):
    """``EvalOptions`` for one dataset and model. dataset: registered dataset name (its source gives the defaults
    for ε and grids). model_name: the evaluated model's name in the records."""

    dataset: str = "mnist5k"
    model_name: str = "model"

    @classmethod
    def of(cls, options: EvalOptions, dataset: str, model_name: str = "model") -> "EvalSettings":
        return cls(**dict(options), dataset=dataset, model_name=model_name)

    @property
    def _defaults(self):
        from robust_core.registry import DATASETS

        return DATASETS.get(self.dataset).eval

    def eps_for(self, norm: str | None) -> float:
        """The radius of ``norm`` ("l2"; anything else = L∞): the setting, else the dataset's default."""
        if norm == "l2":
            return self.l2_eps if self.l2_eps is not None else self._defaults.l2_eps
        return self.eps if self.eps is not None else self._defaults.linf_eps

    @property
    def linf_grid(self) -> tuple[float, ...]:
        return self.eps_grid if self.eps_grid is not None else self._defaults.linf_grid

    @property
    def l2_curve(self) -> tuple[float, ...]:
        return self.l2_grid if self.l2_grid is not None else self._defaults.l2_grid

    @property
    def fixed_set_norms(self) -> tuple[str, ...]:
        """The norms of the one-step attacks that make the fixed set on this dataset (its source's fact)."""
        return self._defaults.fixed_set_norms

    def is_subset(self, n_available: int) -> bool:
        return self.n_examples is not None and self.n_examples < n_available


def build_settings(raw: dict[str, Any], source: str) -> EvalSettings:
    """``EvalSettings`` from plain values (e.g. command-line flags); every problem listed in one ``ConfigError``."""
    try:
        return EvalSettings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e), source) from None

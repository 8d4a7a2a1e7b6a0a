"""Evaluation suites: each ``(model, data, settings, ...) -> list[EvalRecord]``, and ``evaluate`` = suite + audit.

``model`` is the network exactly as attacked and scored at test time (``method.inference_model(classifier)``),
``data`` a pair ``(x, y)`` of test inputs in [0, 1] and labels. Suites attack in eval mode (restored afterwards).
Defaults are the papers' protocols (PGD/CW with 20/40/100 steps, step ε/4, AutoAttack standard); tests shrink them
through ``EvalSettings``.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor, nn

from robust_core.attacks.audit import AuditSettings, audit, masking_probe
from robust_core.attacks.autoattack import AutoAttack
from robust_core.attacks.base import Attack, predict, run_batched
from robust_core.attacks.gradient import CW, FGSM, PGD, L2Grad
from robust_core.attacks.records import EvalRecord, clean_record, record_from_protocol
from robust_core.modes import eval_mode

@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. dataset: name (chooses default ε and grids). eps: L∞ radius in pixel units (None = 0.3 for
    MNIST-like data, 8/255 otherwise). l2_eps: L2 radius for L2 attacks (None = 2.0 MNIST / 0.5 other).
    n_examples: None = the full test set (final tables); a number = a seeded subset, labelled subset=True (model
    selection only). seed: 0 (subset choice and random starts). batch_size: 500. steps: PGD/CW step counts
    (20, 40, 100). step_frac: 0.25 (step = ε/4). restarts: 1. eps_grid / l2_grid: curve radii (None = defaults).
    eot_samples: 10 (for models that sample at test time). model_name: name in the records.
    autoattack: AutoAttack options for the autoattack suite ({} = standard version).
    """

    dataset: str = "mnist5k"
    eps: float | None = None
    l2_eps: float | None = None
    n_examples: int | None = None
    seed: int = 0
    batch_size: int = 500
    steps: tuple[int, ...] = (20, 40, 100)
    step_frac: float = 0.25
    restarts: int = 1
    eps_grid: tuple[float, ...] | None = None
    l2_grid: tuple[float, ...] | None = None
    eot_samples: int = 10
    model_name: str = "model"
    autoattack: dict = field(default_factory=dict)
    audit: AuditSettings = AuditSettings()

    def __post_init__(self) -> None:
        problems = []
        if self.n_examples is not None and self.n_examples < 1:
            problems.append(f"n_examples={self.n_examples} must be ≥ 1 (or None for the full test set)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be ≥ 1")
        for name in ("eps", "l2_eps"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < float("inf"):
                problems.append(f"{name}={v} must be ≥ 0 in pixel units (write 8/255, not 8)")
        if self.eps is not None and self.eps > 1:
            problems.append(f"eps={self.eps} > 1: ε is in pixel units of inputs in [0, 1] (8/255, not 8)")
        if problems:
            raise ValueError("EvalSettings: " + "; ".join(problems))

    @property
    def _defaults(self):
        from robust_core.registry import DATASETS

        return DATASETS.get(self.dataset).eval

    def eps_for(self, norm: str | None) -> float:
        if norm == "l2":
            return self.l2_eps if self.l2_eps is not None else self._defaults.l2_eps
        return self.eps if self.eps is not None else self._defaults.linf_eps

    @property
    def linf_grid(self) -> tuple[float, ...]:
        return self.eps_grid if self.eps_grid is not None else self._defaults.linf_grid

    @property
    def l2_curve(self) -> tuple[float, ...]:
        return self.l2_grid if self.l2_grid is not None else self._defaults.l2_grid

    def is_subset(self, n_available: int) -> bool:
        return self.n_examples is not None and self.n_examples < n_available


def select(data: tuple[Tensor, Tensor], settings: EvalSettings) -> tuple[Tensor, Tensor, bool]:
    """The evaluated examples: all of them, or a seeded random subset of ``n_examples`` (flagged as subset)."""
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"data: {len(x)} inputs but {len(y)} labels")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("data: inputs must be in [0, 1] (normalisation belongs inside the model)")
    if not settings.is_subset(len(x)):
        return x, y, False
    g = torch.Generator().manual_seed(settings.seed)
    idx = torch.randperm(len(x), generator=g)[: settings.n_examples].sort().values
    return x[idx], y[idx], True


def _modes(stack: ExitStack, *models) -> None:
    mods = [m for m in models if isinstance(m, nn.Module)]
    if mods:
        stack.enter_context(eval_mode(*mods))


def _acc(model, x, y, settings) -> float:
    return (predict(model, x, settings.batch_size) == y).float().mean().item() if len(y) else float("nan")


def _attack_record(suite, attack: Attack, model, x, y, subset, settings, source_model=None, source=None):
    gen = torch.Generator(device=x.device).manual_seed(settings.seed)
    flags: list[str] = []
    src = model if source_model is None else source_model
    if isinstance(attack, AutoAttack):
        xa, flags = attack.run(src, x, y, settings.batch_size)
    else:
        xa = run_batched(attack, src, x, y, settings.batch_size, generator=gen)
    return record_from_protocol(suite, settings.model_name, attack.protocol(), _acc(model, xa, y, settings),
                                len(y), settings.seed, subset, source=source, flags=flags)


def whitebox(model, data, settings: EvalSettings = EvalSettings()) -> list[EvalRecord]:
    """White-box table (ATLD tables I–II): clean, FGSM, PGD-20/40/100, CW-20/40/100 at the L∞ ε."""
    x, y, sub = select(data, settings)
    eps = settings.eps_for("linf")
    attacks: list[Attack] = [FGSM(eps=eps)]
    attacks += [PGD(eps=eps, n_steps=k, step_frac=settings.step_frac, n_restarts=settings.restarts)
                for k in settings.steps]
    attacks += [CW(eps=eps, n_steps=k, step_frac=settings.step_frac, n_restarts=settings.restarts)
                for k in settings.steps]
    with ExitStack() as st:
        _modes(st, model)
        recs = [clean_record("whitebox", settings.model_name, _acc(model, x, y, settings), len(y), settings.seed,
                             sub)]
        recs += [_attack_record("whitebox", a, model, x, y, sub, settings) for a in attacks]
    return recs


def curves(model, data, settings: EvalSettings = EvalSettings()) -> list[EvalRecord]:
    """Noise-level curves (ATER fig. 2; Shaham figs. 3, 6): accuracy vs ε for FGSM (L∞) and the L2 gradient attack."""
    x, y, sub = select(data, settings)
    recs = []
    with ExitStack() as st:
        _modes(st, model)
        for e in settings.linf_grid:
            recs.append(_attack_record("curves", FGSM(eps=e), model, x, y, sub, settings))
        for e in settings.l2_curve:
            recs.append(_attack_record("curves", L2Grad(eps=e), model, x, y, sub, settings))
    return recs


def budget(model, data, settings: EvalSettings = EvalSettings()) -> list[EvalRecord]:
    """Accuracy vs attack budget (ATLD fig. 3): PGD-k and CW-k (k = the first of ``settings.steps``) at every
    L∞ radius of the curve grid (ε > 0), step ε·step_frac."""
    x, y, sub = select(data, settings)
    k = settings.steps[0]
    recs = []
    with ExitStack() as st:
        _modes(st, model)
        for e in settings.linf_grid:
            if e <= 0:
                continue
            for atk in (PGD(eps=e, n_steps=k, step_frac=settings.step_frac, n_restarts=settings.restarts),
                        CW(eps=e, n_steps=k, step_frac=settings.step_frac, n_restarts=settings.restarts)):
                recs.append(_attack_record("budget", atk, model, x, y, sub, settings))
    return recs


def autoattack(model, data, settings: EvalSettings = EvalSettings()) -> list[EvalRecord]:
    """AutoAttack (standard version unless ``settings.autoattack`` says otherwise) at the L∞ ε; the full test set
    unless ``n_examples`` is set, in which case the records say subset=True (model selection only)."""
    x, y, sub = select(data, settings)
    opts = {"seed": settings.seed, **settings.autoattack}
    aa = AutoAttack(eps=settings.eps_for(opts.pop("norm", "linf")), **opts)
    with ExitStack() as st:
        _modes(st, model)
        recs = [clean_record("autoattack", settings.model_name, _acc(model, x, y, settings), len(y), settings.seed,
                             sub)]
        recs.append(_attack_record("autoattack", aa, model, x, y, sub, settings))
    return recs


@dataclass
class AdvSet:
    """Adversarial examples generated once on a source model, to evaluate any other model on."""

    x_adv: Tensor
    y: Tensor
    source: str
    protocol: dict
    subset: bool
    seed: int


def make_adv_set(source_model, data, settings: EvalSettings, source: str, attack: Attack | None = None) -> AdvSet:
    """Generate an adversarial set on ``source_model`` (default PGD-k, k = the first of ``settings.steps``)."""
    x, y, sub = select(data, settings)
    attack = attack or PGD(eps=settings.eps_for("linf"), n_steps=settings.steps[0], step_frac=settings.step_frac)
    gen = torch.Generator(device=x.device).manual_seed(settings.seed)
    with ExitStack() as st:
        _modes(st, source_model)
        xa = run_batched(attack, source_model, x, y, settings.batch_size, generator=gen)
    return AdvSet(xa, y, source, attack.protocol(), sub, settings.seed)


def evaluate_adv_sets(model, sets: list[AdvSet], settings: EvalSettings, suite: str) -> list[EvalRecord]:
    recs = []
    with ExitStack() as st:
        _modes(st, model)
        for s in sets:
            recs.append(record_from_protocol(suite, settings.model_name, s.protocol, _acc(model, s.x_adv, s.y, settings),
                                             len(s.y), s.seed, s.subset, source=s.source))
    return recs


def fixed_set(model, data, settings: EvalSettings = EvalSettings(), *, baseline=None, baseline_name="baseline",
              adv_sets: list[AdvSet] | None = None) -> list[EvalRecord]:
    """Shaham's A_mnist / A_cifar10: one adversarial set made once on a baseline model (FGSM L∞ plus the one-step
    L2 and L1 attacks), evaluated on ``model``. Pass ``adv_sets`` (from ``fixed_adv_sets``) to reuse one set for
    many models; else ``baseline`` is attacked here."""
    if adv_sets is None:
        if baseline is None:
            raise ValueError("fixed_set needs a baseline model (baseline=...) or precomputed adv_sets=...")
        adv_sets = fixed_adv_sets(baseline, data, settings, baseline_name)
    x, y, sub = select(data, settings)
    with ExitStack() as st:
        _modes(st, model)
        clean = clean_record("fixed_set", settings.model_name, _acc(model, x, y, settings), len(y), settings.seed, sub)
    return [clean] + evaluate_adv_sets(model, adv_sets, settings, "fixed_set")


def fixed_adv_sets(baseline, data, settings: EvalSettings, name: str = "baseline") -> list[AdvSet]:
    e, e2 = settings.eps_for("linf"), settings.eps_for("l2")
    attacks = [FGSM(eps=e), FGSM(eps=e2, norm="l2"), FGSM(eps=e2 * 5, norm="l1")]
    return [make_adv_set(baseline, data, settings, name, a) for a in attacks]


def transfer(model, data, settings: EvalSettings = EvalSettings(), *, sources: dict | None = None,
             adv_sets: list[AdvSet] | None = None) -> list[EvalRecord]:
    """Black-box transfer (ATLD table III): PGD examples from independently trained source models (e.g. a plain
    and a PGD-trained one), evaluated on ``model``; plus the white-box PGD on ``model`` for the audit."""
    if adv_sets is None:
        if not sources:
            raise ValueError("transfer needs source models (sources={'plain': m1, 'pgd': m2}) or adv_sets=...")
        adv_sets = [make_adv_set(m, data, settings, name) for name, m in sources.items()]
    x, y, sub = select(data, settings)
    e = settings.eps_for("linf")
    with ExitStack() as st:
        _modes(st, model)
        recs = [clean_record("transfer", settings.model_name, _acc(model, x, y, settings), len(y), settings.seed, sub),
                _attack_record("transfer", PGD(eps=e, n_steps=settings.steps[0], step_frac=settings.step_frac),
                               model, x, y, sub, settings)]
    return recs + evaluate_adv_sets(model, adv_sets, settings, "transfer")


Objective = Callable[[Tensor, Tensor], Tensor]  # (x in [0,1], y) -> per-example loss to maximise, end to end


def _is_stochastic(model, x: Tensor) -> bool:
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def adaptive(model, data, settings: EvalSettings = EvalSettings(), *, method=None,
             objectives: dict[str, Objective] | None = None) -> list[EvalRecord]:
    """Adaptive attacks (ATLD table V): PGD that differentiates end to end through the inference-time wrapper
    ``method.inference_model(model)`` with pluggable objectives, and EOT when the wrapper samples at test time.

    ``model`` is the bare classifier. Objectives: ``{"classifier": CE of the wrapped model}`` plus whatever
    ``method.adaptive_objectives(model)`` returns (e.g. ATLD's ``"discriminator"`` and ``"both"``), plus
    ``objectives``. Each objective maps (x, y) to per-example losses and must be differentiable in x.
    Accuracy is always that of the full wrapped pipeline on the adversarial inputs.
    """
    import torch.nn.functional as F

    wrapped = method.inference_model(model) if method is not None else model
    objs: dict[str, Objective] = {"classifier": lambda z, y: F.cross_entropy(wrapped(z), y, reduction="none")}
    if method is not None and hasattr(method, "adaptive_objectives"):
        objs.update(method.adaptive_objectives(model))
    objs.update(objectives or {})
    x, y, sub = select(data, settings)
    e = settings.eps_for("linf")
    k = settings.steps[0]
    recs = []
    with ExitStack() as st:
        _modes(st, model, wrapped, *(method.modules().values() if method is not None else ()))
        recs.append(clean_record("adaptive", settings.model_name, _acc(wrapped, x, y, settings), len(y),
                                 settings.seed, sub))
        eot = settings.eot_samples if len(x) and _is_stochastic(wrapped, x[: min(len(x), 8)]) else 1
        for name, obj in objs.items():
            atk = PGD(eps=e, n_steps=k, step_frac=settings.step_frac, loss=_objective_loss(obj), eot_samples=eot)
            gen = torch.Generator(device=x.device).manual_seed(settings.seed)
            xa = run_batched(atk, _Identity(), x, y, settings.batch_size, generator=gen)
            p = atk.protocol()
            p["label"] = f"pgd-{k}[{name}]" + (f"-eot{eot}" if eot > 1 else "")
            p["options"]["loss"] = name
            recs.append(record_from_protocol("adaptive", settings.model_name, p, _acc(wrapped, xa, y, settings),
                                             len(y), settings.seed, sub))
    return recs


class _Identity(nn.Module):
    """The 'model' handed to ``perturb`` for end-to-end objectives: the objective itself sees the input."""

    def forward(self, z: Tensor) -> Tensor:
        return z


def _objective_loss(obj: Objective):
    def factory(y: Tensor):
        return lambda z: obj(z, y)

    factory.__repr__ = lambda: "objective"  # type: ignore[method-assign]
    return factory


SUITES: dict[str, Callable[..., list[EvalRecord]]] = {
    "whitebox": whitebox, "curves": curves, "budget": budget, "autoattack": autoattack, "fixed_set": fixed_set,
    "transfer": transfer, "adaptive": adaptive,
}


@dataclass
class EvalResult:
    records: list[EvalRecord]
    audit: list[str]


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        import difflib

        close = difflib.get_close_matches(suite, SUITES, n=2)
        raise ValueError(f"unknown suite {suite!r}" + (f" (did you mean {close}?)" if close else "")
                         + f"; suites: {sorted(SUITES)}")


def run_suites(plan: dict[str, tuple[object, dict]], data, settings: EvalSettings = EvalSettings(), *,
               probe_model) -> EvalResult:
    """Run several suites ``{name: (model, suite kwargs)}`` on the same examples, the masking probe once on
    ``probe_model`` (the network as deployed), then one audit over all records (so e.g. transfer is compared with
    the white-box numbers)."""
    for suite in plan:
        _check_suite(suite)
    recs: list[EvalRecord] = []
    for suite, (model, kw) in plan.items():
        recs += SUITES[suite](model, data, settings, **kw)
    x, y, sub = select(data, settings)
    with ExitStack() as st:
        _modes(st, probe_model)
        recs += masking_probe(probe_model, (x, y), settings, name=settings.model_name, subset=sub)
    return EvalResult(recs, audit(recs, settings.audit))


def evaluate(model, data, suite: str, settings: EvalSettings = EvalSettings(), *, probe_model=None,
             **suite_kwargs) -> EvalResult:
    """Run one suite and the masking probe on the same examples, then the audit over all records.

    ``probe_model``: the network the probes attack (default ``model``; for the adaptive suite pass the wrapped one).
    """
    _check_suite(suite)
    return run_suites({suite: (model, suite_kwargs)}, data, settings,
                      probe_model=probe_model if probe_model is not None else model)


def format_table(records: list[EvalRecord], audit_flags: list[str] | None = None) -> str:
    """Plain-text table; every number with its protocol; audit violations as numbered footnotes."""
    flags = list(audit_flags or [])
    for r in records:
        for f in r.flags:
            if f not in flags:
                flags.append(f)
    cols = ["model", "suite", "attack", "source", "norm", "eps", "steps", "step", "rst", "n", "seed", "acc", "lib"]
    rows = []
    for r in records:
        marks = "".join(f"[{flags.index(f) + 1}]" for f in r.flags if f in flags)
        acc = f"{r.accuracy:.2%}" if r.attack != "zero-grad" else f"{r.accuracy:.2%} zero-grad"
        rows.append([r.model, r.suite, r.label, r.source or "-", r.norm, f"{r.eps_str} ({r.eps:.4g})", str(r.steps),
                     "-" if r.step_size != r.step_size else f"{r.step_size:.4g}", str(r.restarts),
                     f"{r.n_examples}{'*' if r.subset else ''}", str(r.seed), acc + marks,
                     f"{r.library} {r.library_version}"])
    w = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols)), "  ".join("-" * x for x in w)]
    lines += ["  ".join(v.ljust(w[i]) for i, v in enumerate(row)) for row in rows]
    if any(r.subset for r in records):
        lines.append("* subset of the test set (model selection only, not a final number)")
    lines += [f"[{i + 1}] masking audit: {f}" for i, f in enumerate(flags)]
    if not flags:
        lines.append("masking audit: no violations")
    return "\n".join(lines)


def with_name(settings: EvalSettings, name: str) -> EvalSettings:
    return replace(settings, model_name=name)

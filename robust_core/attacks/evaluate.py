"""Running evaluation suites (``robust_core.attacks.suites``), the same way for the CLI and the pipeline:

- ``wire``: the one place a suite's inputs are checked and loaded (the evaluated model, its method, transfer
  sources, the fixed set's baseline) into ``SuiteModels``;
- ``run_suites``: every step of the named suites on the same examples, the masking probe once, then one audit;
- ``fingerprint``: the reuse key of an evaluation, derived from what it runs — its steps (attacks and their
  settings), the examples, the audit thresholds and the code of the attack loop and of the attacks it uses — so a
  changed suite is evaluated again without anyone bumping a version, and an unchanged one is not.

``data`` is a pair ``(x, y)`` of test inputs in [0, 1] and labels. Every model is attacked in eval mode (restored
afterwards).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_core.attacks.audit import audit, masking_probe
from robust_core.attacks.base import Adversarial, predict
from robust_core.attacks.records import EvalRecord
from robust_core.attacks.settings import EvalSettings
from robust_core.attacks.suites import BASELINE, CLASSIFIER, SUITES, Step, Suite
from robust_core.config import ConfigError
from robust_core.modes import eval_mode

Objective = Callable[[Tensor, Tensor], Tensor]  # (x in [0,1], y) -> per-example loss to maximise, end to end
NEEDS = {"sources": "source models (e.g. a plainly trained and a PGD-trained one)",
         "baseline": "a baseline model (the one the fixed set is made on)",
         "method": "the evaluated model's method (its inference wrapper and adaptive objectives)"}


@dataclass
class SuiteModels:
    """What the suites attack. deployed: the network as scored at test time (``method.inference_model(classifier)``).
    classifier / method: the bare classifier and its method. sources: transfer source models by name (deployed).
    baseline: the fixed set's baseline (deployed). objectives: end-to-end adaptive objectives by name."""

    deployed: nn.Module
    classifier: nn.Module | None = None
    method: Any = None
    sources: dict[str, nn.Module] = field(default_factory=dict)
    baseline: nn.Module | None = None
    objectives: dict[str, Objective] = field(default_factory=dict)

    @classmethod
    def of(cls, classifier: nn.Module, method: Any = None, *, sources: Mapping[str, nn.Module] | None = None,
           baseline: nn.Module | None = None, objectives: Mapping[str, Objective] | None = None) -> "SuiteModels":
        """From a classifier and its method: objectives = ``classifier`` (CE of the deployed model), the method's
        ``adaptive_objectives`` and ``objectives`` (later names win)."""
        deployed = method.inference_model(classifier) if method is not None else classifier
        objs: dict[str, Objective] = {"classifier": lambda z, y: F.cross_entropy(deployed(z), y, reduction="none")}
        if method is not None and hasattr(method, "adaptive_objectives"):
            objs.update(method.adaptive_objectives(classifier))
        objs.update(objectives or {})
        return cls(deployed, classifier, method, dict(sources or {}), baseline, objs)

    def all(self) -> list[nn.Module]:
        mods = [self.deployed, self.classifier, self.baseline, *self.sources.values()]
        if self.method is not None:
            mods += list(self.method.modules().values())
        return [m for m in mods if isinstance(m, nn.Module)]


def missing_inputs(suites: Iterable[str], *, sources: Iterable[str] = (), baseline: bool = False,
                   method: bool = True, how: Mapping[str, str] | None = None) -> list[str]:
    """Every problem with the inputs given for ``suites`` (unknown suites too), one line each; ``how`` says how the
    caller provides each input (e.g. ``{"sources": "--source NAME=MODEL_OR_RUN"}``)."""
    how = how or {}
    given = {"sources": bool(list(sources)), "baseline": baseline, "method": method}
    problems = []
    for name in suites:
        if name not in SUITES:
            problems.append(f"unknown suite {name!r}; suites: {', '.join(SUITES.names())}")
            continue
        for need in sorted(SUITES.get(name).needs):
            if not given[need]:
                problems.append(f"suite {name} needs {NEEDS[need]}" + (f": give {how[need]}" if need in how else ""))
    for reserved, what in ((BASELINE, "the fixed set's baseline"), (CLASSIFIER, "the evaluated model's classifier")):
        if reserved in set(sources):
            problems.append(f"a transfer source may not be called {reserved!r} ({what} is)")
    return problems


Loaded = tuple[Any, nn.Module, Any]  # (RunConfig, classifier, method), as robust_core.trial.load_trained returns


def wire(suites: Iterable[str], load: Callable[[Any], Loaded], target: Any, *, sources: Mapping[str, Any] | None = None,
         baseline: Any = None, how: Mapping[str, str] | None = None, where: str = "evaluation"
         ) -> tuple[Any, SuiteModels]:
    """Check the inputs ``suites`` need (``ConfigError`` naming ``where``, listing every problem, before anything
    loads), then load the evaluated model ``target`` and the sources / baseline the suites use with ``load(ref)``.
    Returns (the target's config, ``SuiteModels``). Used by ``robust-sweep eval`` and the pipeline's evaluation task."""
    suites = list(suites)
    sources = dict(sources or {})
    problems = missing_inputs(suites, sources=sources, baseline=baseline is not None, how=how)
    if problems:
        raise ConfigError(problems, where)
    needs = set().union(*(SUITES.get(s).needs for s in suites))

    def deployed(ref: Any) -> nn.Module:
        _, clf, meth = load(ref)
        return meth.inference_model(clf)

    cfg, clf, method = load(target)
    srcs = {n: deployed(r) for n, r in sources.items()} if "sources" in needs else {}
    base = deployed(baseline) if "baseline" in needs else None
    return cfg, SuiteModels.of(clf, method, sources=srcs, baseline=base)


# ------------------------------------------------------------------------------------------------------ running
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


class _Identity(nn.Module):
    """The 'model' handed to the attack loop for end-to-end objectives: the objective itself sees the input."""

    def forward(self, z: Tensor) -> Tensor:
        return z


def _objective_loss(obj: Objective):
    def factory(y: Tensor):
        return lambda z: obj(z, y)

    return factory


THEN = "-then-"  # an objective ``a-then-b``: the step's attack is a ``Then``; its first phase ascends a, its second b


def _term(models: SuiteModels, name: str, atk) -> Objective | None:
    """One named term of an adaptive objective (None: the evaluated model lacks it):

    - ``cla``: the attack's own classification loss (CE for FGSM/PGD, the CW margin for CW) of the bare classifier
      — ATLD table V's 'Cla', attacked as the paper attacks (the classifier; IMT applies only when scoring);
    - ``d``: the discriminator's loss for an adversarial input, −log D⁰(f(x)) = softplus(−a) from the method's
      ``discriminator_logit`` (its BINARY head, table V's 'D'): ascending it makes the input look natural to D, i.e.
      the attack is hidden from the discriminator that IMT relies on;
    - anything else: the method's ``adaptive_objectives`` (end to end through the deployed model, e.g. ATLD's
      ``classifier``, ``discriminator``, ``both``) or objectives passed in."""
    if name == "cla":
        clf = models.classifier
        if clf is None:
            return None
        loss_of = atk.loss_fn
        return lambda z, y: loss_of(y)(clf(z))
    if name == "d":
        logit = getattr(models.method, "discriminator_logit", None)
        if logit is None or models.classifier is None:
            return None
        clf = models.classifier
        return lambda z, y: F.softplus(-logit(clf, z))
    return models.objectives.get(name)


def _bind(atk, objective: str, models: SuiteModels, eot: int):
    """``atk`` ascending ``objective`` (terms joined by ``+`` are summed; ``a-then-b`` binds a ``Then``'s two
    phases), or None when a term is missing. The attack then runs on the identity: the objective sees the input."""
    from robust_core.attacks.gradient import Then

    if isinstance(atk, Then):
        first, _, second = objective.partition(THEN)
        a, b = _bind(atk.first, first, models, eot), _bind(atk.second, second, models, eot)
        return None if a is None or b is None else replace(atk, first=a, second=b)
    terms = [_term(models, t, atk) for t in objective.split("+")]
    if any(t is None for t in terms):
        return None

    def obj(z: Tensor, y: Tensor) -> Tensor:
        return sum(t(z, y) for t in terms)  # type: ignore[misc]

    has = {f.name for f in fields(atk)}
    return replace(atk, loss=_objective_loss(obj), **({"eot_samples": eot} if "eot_samples" in has else {}))


def _is_stochastic(model, x: Tensor) -> bool:
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def _run_step(suite: str, step: Step, models: SuiteModels, x: Tensor, y: Tensor, sub: bool,
              settings: EvalSettings) -> EvalRecord | None:
    """The record of one step (None: an adaptive objective the method does not have)."""
    key, atk, bs = step.key, step.attack, settings.batch_size

    def record(adv: Adversarial, **kw) -> EvalRecord:
        yy = y if adv.y is None else adv.y
        xs, ys = (adv.x, yy) if adv.keep is None else (adv.x[adv.keep], yy[adv.keep])
        acc = (predict(models.deployed, xs, bs) == ys).float().mean().item() if len(ys) else float("nan")
        opts = {**(adv.info or {}), **kw.pop("options", {})}
        return EvalRecord.of(suite, settings.model_name, key, atk, acc, len(ys), settings.seed, sub, flags=adv.flags,
                             options=opts, **kw)

    if atk is None:
        return record(Adversarial(x))
    gen = torch.Generator(device=x.device).manual_seed(settings.seed)
    if key.objective is not None:
        eot = getattr(atk, "eot_samples", 1) if len(x) and _is_stochastic(models.deployed, x[:8]) else 1
        atk = _bind(atk, key.objective, models, eot)
        if atk is None:
            return None
        label = str(key.with_(source=None)) + (f"-eot{eot}" if eot > 1 else "")
        return record(atk.run(_Identity(), x, y, bs, generator=gen), label=label, options={"loss": key.objective})
    return record(atk.run(_origin(models, key.source), x, y, bs, generator=gen))


def _origin(models: SuiteModels, source: str | None) -> nn.Module:
    """The model whose gradients make a step's examples: the evaluated model, the fixed set's baseline, or a
    transfer source."""
    if source is None:
        return models.deployed
    if source == CLASSIFIER:
        return models.classifier if models.classifier is not None else models.deployed
    return models.baseline if source == BASELINE else models.sources[source]  # type: ignore[return-value]


def run_suite(suite: str, models: SuiteModels, data, settings: EvalSettings) -> list[EvalRecord]:
    """Every step of ``suite`` on the selected examples (models in eval mode); no probe, no audit."""
    x, y, sub = select(data, settings)
    steps = SUITES.get(suite).steps(settings, tuple(models.sources))
    recs: list[EvalRecord | None] = []
    by_key: dict[str, EvalRecord] = {}
    with eval_mode(*models.all()):
        for s in steps:
            plain = by_key.get(str(s.key.with_(source=None)))
            if s.key.source == CLASSIFIER and _origin(models, CLASSIFIER) is models.deployed and plain is not None:
                r: EvalRecord | None = replace(plain, key=str(s.key), source=CLASSIFIER, flags=list(plain.flags),
                                               options=dict(plain.options))  # the same computation
            else:
                r = _run_step(suite, s, models, x, y, sub, settings)
            if r is not None:
                by_key[r.key] = r
            recs.append(r)
    return [r for r in recs if r is not None]


@dataclass
class EvalResult:
    records: list[EvalRecord]
    audit: list[str]


def run_suites(suites: Iterable[str], models: SuiteModels, data, settings: EvalSettings) -> EvalResult:
    """Several suites on the same examples, the masking probe once on the deployed model, then one audit over all
    records (so e.g. transfer is compared with the white-box numbers)."""
    suites = list(suites)
    problems = missing_inputs(suites, sources=models.sources, baseline=models.baseline is not None,
                              method=models.method is not None)
    if problems:
        raise ValueError("; ".join(problems))
    recs: list[EvalRecord] = []
    for s in suites:
        recs += run_suite(s, models, data, settings)
    x, y, sub = select(data, settings)
    with eval_mode(*models.all()):
        recs += masking_probe(models.deployed, (x, y), settings, name=settings.model_name, subset=sub)
    return EvalResult(recs, audit(recs, settings.audit))


def evaluate(model: nn.Module, data, suite: str, settings: EvalSettings = EvalSettings(), *, method: Any = None,
             sources: Mapping[str, nn.Module] | None = None, baseline: nn.Module | None = None,
             objectives: Mapping[str, Objective] | None = None) -> EvalResult:
    """One suite, the probe and the audit on in-memory models: ``model`` is the classifier (wrapped by ``method``'s
    inference model when given); ``sources`` / ``baseline`` deployed models; ``objectives`` extra adaptive ones."""
    models = SuiteModels.of(model, method, sources=sources, baseline=baseline, objectives=objectives)
    return run_suites([suite], models, data, settings)


# ------------------------------------------------------------------------------------------------------ reuse key
_LOOP = ("loop", "threat", "base", "records", "audit", "evaluate")  # the attack loop and the runner, in this package


def code_files(steps: Iterable[Step], method: str | None = None) -> list[Path]:
    """Source files whose code decides a suite's numbers: the attack loop and runner, the file of every class an
    attack of ``steps`` (or one of its ``parts``) is or inherits from, and — for adaptive objectives — the method's
    file."""
    here = Path(__file__).parent
    files = {here / f"{m}.py" for m in _LOOP}
    attacks = [a for s in steps if s.attack is not None for a in (s.attack, *getattr(s.attack, "parts", ()))]
    for a in attacks:  # an attack made of others (the fixed set's one-step attacks): their code too
        for cls in type(a).__mro__:
            src = inspect.getsourcefile(cls) if cls.__module__ != "builtins" else None
            if src is not None:
                files.add(Path(src))
    if method is not None:
        from robust_core.registry import METHODS

        files.add(Path(inspect.getsourcefile(METHODS.get(method))))  # type: ignore[arg-type]
    return sorted(files)


def code_version(steps: Iterable[Step], method: str | None = None) -> str:
    """Hash of the contents of ``code_files`` (paths do not matter: the same code hashes the same anywhere)."""
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in code_files(steps, method))
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def evaluation_identity(suite: str, settings: EvalSettings, sources: Iterable[str] = (),
                        method: str | None = None) -> dict[str, Any]:
    """Everything that decides the numbers of one evaluation of ``suite`` (besides the models themselves): its steps,
    the examples, the probe's radius, the audit thresholds and the code version. ``method``: the evaluated model's
    registered method, whose file holds the adaptive objectives (used when the suite needs the method)."""
    st: Suite = SUITES.get(suite)
    steps = st.steps(settings, tuple(sources))
    return {"suite": suite,
            "steps": [{"key": str(s.key), "attack": None if s.attack is None else s.attack.identity()} for s in steps],
            "examples": {"n_examples": settings.n_examples, "seed": settings.seed, "batch_size": settings.batch_size},
            "probe_eps": settings.eps_for("linf"), "audit": settings.audit.model_dump(),
            "code": code_version(steps, method if "method" in st.needs else None)}


def fingerprint(suite: str, settings: EvalSettings, sources: Iterable[str] = (), method: str | None = None) -> str:
    """The reuse key of an evaluation's protocol: a hash of ``evaluation_identity``."""
    blob = json.dumps(evaluation_identity(suite, settings, sources, method), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ table
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

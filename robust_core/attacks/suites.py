"""Evaluation suites as data: each suite is a name, the inputs it needs and the attacks it runs (``Step``s, built
from the evaluation settings); ``robust_core.attacks.evaluate`` wires the inputs and runs any suite the same way.

A step is one number: the accuracy of the evaluated model (the network as deployed, ``method.inference_model``) on
examples made by ``attack`` — on the evaluated model itself, on another model when the key names a ``source`` (a
transfer source, or ``baseline`` for the fixed set), or end to end through an adaptive ``objective`` the key names.
Adding a white-box attack = its file (a registered ``Attack``) + a step in a suite below; its table key, its reuse
key (``evaluate.fingerprint``, from the steps and the attacks' code) and its cost follow from the steps.

Defaults are the papers' protocols (PGD/CW with 20/40/100 steps of ε/4, AutoAttack standard); tests shrink them
through ``EvalSettings``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from robust_core.attacks.autoattack import AutoAttack
from robust_core.attacks.base import Attack
from robust_core.attacks.fixed_set import FixedSet
from robust_core.attacks.gradient import CW, FGSM, PGD, L2Grad, Then
from robust_core.attacks.key import CLEAN, AttackKey
from robust_core.attacks.rays import RayS
from robust_core.attacks.settings import EvalSettings
from robust_core.registry import Registry

BASELINE = "baseline"  # the source name of the fixed set's baseline model (so a transfer source may not use it)
# the source name of the evaluated model's bare classifier: examples made on it, scored on the deployed model (the
# ATLD paper's protocol: attack the classifier, then apply IMT); where the deployed model is the classifier itself
# the number is the plain key's, not computed twice
CLASSIFIER = "classifier"
Need = Literal["sources", "baseline", "method"]


@dataclass(frozen=True)
class Step:
    """One number of a suite: ``key`` (with ``source`` / ``objective`` when it has them) and the attack that makes
    the examples (None: clean accuracy)."""

    key: AttackKey
    attack: Attack | None = None

    @classmethod
    def of(cls, attack: Attack, source: str | None = None, objective: str | None = None) -> "Step":
        return cls(attack.key.with_(source=source, objective=objective), attack)


StepsFn = Callable[[EvalSettings, tuple[str, ...]], list[Step]]  # (settings, transfer source names) -> steps


@dataclass(frozen=True)
class Suite:
    """name: what a column's ``suite:`` says. steps: the attacks it runs for given settings and transfer sources.
    needs: inputs besides the evaluated model — "sources" (transfer source models, by name), "baseline" (the model
    the fixed set is made on), "method" (the evaluated model's method, for its adaptive objectives).
    description: what it reproduces (the steps function's docstring)."""

    name: str
    steps: StepsFn
    needs: frozenset[str] = frozenset()
    description: str = ""


SUITES: Registry = Registry("suite")


def suite(name: str, needs: tuple[Need, ...] = ()) -> Callable[[StepsFn], StepsFn]:
    """Register a steps function as suite ``name``."""

    def deco(fn: StepsFn) -> StepsFn:
        SUITES.register(name)(Suite(name, fn, frozenset(needs), " ".join((fn.__doc__ or "").split())))
        return fn

    return deco


def _iterative(s: EvalSettings, eps: float, steps: tuple[int, ...]) -> list[Attack]:
    """PGD-k then CW-k for each k, at ε, the settings' step fraction and restarts."""
    kw = dict(eps=eps, step_frac=s.step_frac, n_restarts=s.restarts)
    return [PGD(n_steps=k, **kw) for k in steps] + [CW(n_steps=k, **kw) for k in steps]


@suite("whitebox")
def whitebox(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """White-box table (ATLD tables I–II): clean, FGSM, PGD-k and CW-k for k in ``steps`` at the L∞ ε, each twice:
    end to end on the deployed model (``pgd-20``) and made on the bare classifier then scored on the deployed model
    (``pgd-20@classifier``, the paper's protocol for a model with an inference-time transformation)."""
    e = s.eps_for("linf")
    attacks = [FGSM(eps=e), *_iterative(s, e, s.steps)]
    return [Step(CLEAN)] + [Step.of(a) for a in attacks] + [Step.of(a, source=CLASSIFIER) for a in attacks]


@suite("curves")
def curves(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """Noise-level curves (ATER fig. 2; Shaham figs. 3, 6): FGSM at every L∞ radius of the grid and the L2 gradient
    attack at every L2 radius."""
    return [Step.of(FGSM(eps=e)) for e in s.linf_grid] + [Step.of(L2Grad(eps=e)) for e in s.l2_curve]


@suite("budget")
def budget(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """Accuracy vs attack budget (ATLD fig. 3): PGD-k and CW-k (k = the first of ``steps``) at every positive L∞
    radius of the grid."""
    out = []
    for e in s.linf_grid:
        if e > 0:
            out += [Step.of(a) for a in _iterative(s, e, s.steps[:1])]
    return out


@suite("autoattack")
def autoattack(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """AutoAttack (the standard version unless ``autoattack`` says otherwise) at the ε of its norm, end to end
    (``aa``) and made on the bare classifier, scored on the deployed model (``aa@classifier``); clean beside it."""
    o = s.autoattack
    aa = AutoAttack(eps=s.eps_for(o.norm), norm=o.norm, version=o.version, attacks=o.attacks, seed=s.seed,
                    n_iter=o.n_iter)
    return [Step(CLEAN), Step.of(aa), Step.of(aa, source=CLASSIFIER)]


@suite("rays")
def rays(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """RayS (ATLD table IV): the hard-label ray search on the deployed model at the L∞ ε with ``rays_queries``
    queries per example; clean beside it."""
    return [Step(CLEAN), Step.of(RayS(eps=s.eps_for("linf"), queries=s.rays_queries))]


@suite("fixed_set", needs=("baseline",))
def fixed_set(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """Shaham et al.'s fixed adversarial set (A_mnist / A_cifar10, §5): the one-step attacks of eq. (11) in the
    dataset's ``fixed_set_norms`` (MNIST L∞, L2, L1; natural images L∞, L2) at its L∞ ε, its L2 ε and 5× its L2
    ε in L1, run on the correctly classified test points of the baseline, keeping the examples that fool it; the
    set is shown to the evaluated model. Clean accuracy beside it."""
    e2 = s.eps_for("l2")
    fs = FixedSet(eps=s.eps_for("linf"), norm="+".join(s.fixed_set_norms), l2_eps=e2, l1_eps=5 * e2)
    return [Step(CLEAN), Step.of(fs, source=BASELINE)]


@suite("transfer", needs=("sources",))
def transfer(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """Black-box transfer (ATLD table III): FGSM, PGD-k and CW-k (k = the first of ``steps``) examples made on each
    source model at the L∞ ε, shown to the evaluated model; plus the white-box PGD-k on the evaluated model itself,
    for the audit."""
    e = s.eps_for("linf")
    pgd = PGD(eps=e, n_steps=s.steps[0], step_frac=s.step_frac)
    made = [FGSM(eps=e), pgd, CW(eps=e, n_steps=s.steps[0], step_frac=s.step_frac)]
    return [Step(CLEAN), Step.of(pgd)] + [Step.of(a, source=n) for n in sources for a in made]


OBJECTIVES = ("classifier", "discriminator", "both")


TABLE_V = ("cla+d", "cla-then-d")  # ATLD table V's (Cla+D)-step20 and Cla-step20 + D-step1 (terms: evaluate._term)


@suite("adaptive", needs=("method",))
def adaptive(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
    """Adaptive attacks (ATLD table V, k = the first of ``steps``, at the L∞ ε). The paper's columns, each scored
    on the deployed model: (Cla+D)-step-k — FGSM, PGD-k, CW-k ascending the classifier's loss (CE / CW margin of the
    bare classifier) plus D's (its binary head: −log D⁰), ``[cla+d]``; Cla-step-k + D-step1 — the same three on
    the classifier's loss, then one PGD step (ε·step_frac, from there) on D's, ``[cla-then-d]``; D-step1 and
    D-step-k — PGD-1 (no random start) and PGD-k on D's loss, ``[d]``. Ours beside them: PGD-k differentiating end
    to end through the inference-time wrapper on each objective — ``classifier`` (CE of the deployed model) and the
    method's own (``method.adaptive_objectives``: ATLD's ``discriminator`` and ``both``). An objective the method
    lacks is not run; ``eot_samples`` gradient samples when the deployed model samples at test time."""
    e, k, f, eot = s.eps_for("linf"), s.steps[0], s.step_frac, s.eot_samples
    pgd = PGD(eps=e, n_steps=k, step_frac=f, eot_samples=eot)
    firsts = [FGSM(eps=e), pgd, CW(eps=e, n_steps=k, step_frac=f, eot_samples=eot)]
    d_step = PGD(eps=e, n_steps=1, step_frac=f, random_start=False, eot_samples=eot)
    table_v = [Step.of(a, objective="cla+d") for a in firsts]
    table_v += [Step(a.key.with_(objective="cla-then-d"), Then(eps=e, first=a, second=d_step)) for a in firsts]
    table_v += [Step.of(d_step, objective="d"), Step.of(pgd, objective="d")]
    return [Step(CLEAN)] + table_v + [Step.of(pgd, objective=o) for o in OBJECTIVES]

"""A rough cost estimate of a pipeline plan, printed before anything starts.

cost of one training step = ``datasets.<d>.cost_step_s`` (seconds per supervised MLE step of the profile's model and
batch on the profile's device: an assumption written in the profile) × the method's relative cost per step
(``STEP_COST``, measured on CPU with ``benchmarks/short_budget.py``, see benchmarks/RESULTS.md). An attack pass over
the test set costs about one training step per batch of ``batch_size`` examples; so does each pass of the robust
validation metric of robust-selected rows (``robust_val_steps``: its attack's steps + 1 scoring pass over its
validation examples, at each epoch it is computed; ``benchmarks/robust_val.py`` measures it). Sweeps are counted at
their full budget (ASHA usually stops half or more of the trials early), so the sweep figure is an upper bound.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from pipelines.plan import EvalUnit, Plan
from robust_core.config import DataConfig, TrainConfig
from robust_core.registry import DATASETS

# × MLE per training step (benchmarks/RESULTS.md, 4×100 steps, MLP on mnist5k, 1 thread)
# (atld: its game with a WRN-10-1 discriminator, 2 discriminator steps per step; feature_scatter: 1 Sinkhorn step)
STEP_COST = {"mle": 1.0, "at_fgsm": 2.5, "at_l2": 2.2, "ro": 1.6, "pgd_at": 4.7, "trades": 7.7, "ater": 4.6,
             "atld": 3.5, "xat": 2.6, "vat": 4.3, "vater": 5.4, "xvat": 3.7, "fat": 6.7, "feature_scatter": 1.4}


PROBE_PASSES = 22  # the masking probe run with every evaluation: PGD-20 at a large ε, noise, one gradient


def attack_passes(u: EvalUnit, transformed: bool = True) -> int:
    """Forward+backward passes over the evaluated examples one evaluation needs: every step of its suite (the
    attack's own ``passes``, one scoring pass each) and the masking probe. ``transformed``: the evaluated method has
    an inference-time transformation; without one, a step made on the bare classifier (``@classifier``) is the plain
    step's computation, reused by ``run_suite``, and costs nothing."""
    from robust_core.attacks.suites import CLASSIFIER, SUITES

    steps = SUITES.get(u.suite).steps(u.settings, tuple(n for n, _, _ in u.sources))
    return PROBE_PASSES + sum(1 + (s.attack.passes if s.attack is not None else 0) for s in steps
                              if transformed or s.key.source != CLASSIFIER)


def has_inference_transform(method: str) -> bool:
    """Whether the registered method evaluates a model other than its classifier (``Method.inference_model``
    overridden, e.g. ATLD's IMT); an upper bound: a params setting that turns it off (``imt: none``) is not seen."""
    from robust_core.methods import Method
    from robust_core.registry import METHODS

    return METHODS.get(method).inference_model is not Method.inference_model


def robust_val_steps(base: dict) -> int:
    """Training-step equivalents that computing ``val_robust_acc`` adds to one run of the (raw) run config ``base``:
    (attack steps + 1 scoring pass) × batches of ``train.batch_size`` validation examples, at every epoch where it is
    computed (``train.robust_val.epochs`` and the last; every epoch when null). 0 without ``train.robust_val``."""
    train, data = base.get("train", {}), base.get("data", {})
    rv = train.get("robust_val")
    if not rv:
        return 0
    epochs = train.get("epochs", TrainConfig.model_fields["epochs"].default)
    n_val = data.get("n_val", DataConfig.model_fields["n_val"].default)
    n = min(rv.get("n_examples") or n_val, n_val)
    passes = (1 if rv.get("attack") == "fgsm" else rv.get("steps", 10)) + 1
    at = rv.get("epochs")
    times = epochs if at is None else len({e for e in at if e < epochs} | {epochs})
    return times * passes * math.ceil(n / train.get("batch_size", TrainConfig.model_fields["batch_size"].default))


@dataclass
class Estimate:
    device: str
    hours: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.hours.values())

    def summary(self) -> str:
        lines = [f"[estimate] rough cost before starting ({self.device}-hours; assumptions in pipelines/cost.py and "
                 "the profile's cost_step_s):"]
        for phase in ("sweeps", "retrains", "evaluations"):
            lines.append(f"  {phase:<12} {self.counts.get(phase, 0):>5} units  {self.hours.get(phase, 0.0):9.2f} h")
        lines.append(f"  {'total':<12} {'':>5}        {self.total:9.2f} h (before reuse: work already finished in "
                     "MLflow is not redone)")
        if self.unknown:
            lines.append("  not estimated (no cost_step_s in the profile): " + ", ".join(sorted(set(self.unknown))))
        return "\n".join(lines)


def estimate(plan: Plan) -> Estimate:
    spec = plan.spec
    est = Estimate("GPU" if spec.resources.gpu > 0 else "CPU")
    hours: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def prof_of(source: str):
        src = plan.sources[source]
        if src.setting is None:
            return None, None
        return spec.datasets.get(src.setting.profile), src

    def train_seconds(source: str, trials: int = 1) -> float | None:
        prof, src = prof_of(source)
        if prof is None or prof.cost_step_s is None:
            est.unknown.append(source)
            return None
        raw = plan.sweep_raw[source]["base"]["train"]
        epochs = raw.get("epochs", 10)
        bs = raw.get("batch_size", 64)
        n = prof.train_size or DATASETS.get(prof.name).train_size
        spe = raw.get("steps_per_epoch") or math.ceil(n / bs)
        method = plan.sweep_raw[source]["base"]["method"]["name"]
        robust = robust_val_steps(plan.sweep_raw[source]["base"]) * prof.cost_step_s
        return trials * (epochs * spe * prof.cost_step_s * STEP_COST.get(method, 3.0) + robust)

    if spec.sweep.mode == "sweep":
        for name, src in plan.sources.items():
            if not src.explicit:
                counts["sweeps"] += 1
                s = train_seconds(name, spec.sweep.num_trials)
                hours["sweeps"] += (s or 0) / 3600
    for k in plan.retrains:
        counts["retrains"] += 1
        if plan.sources[k.source].explicit:
            continue
        hours["retrains"] += (train_seconds(k.source) or 0) / 3600
    for u in plan.evals.values():
        counts["evaluations"] += 1
        prof, _ = prof_of(u.target.source)
        if prof is None or prof.cost_step_s is None:
            continue
        n_test = u.settings.n_examples or DATASETS.get(prof.name).test_size
        bs = plan.sweep_raw[u.target.source]["base"]["train"].get("batch_size", 64)
        method = plan.sweep_raw[u.target.source]["base"]["method"]["name"]
        passes = attack_passes(u, has_inference_transform(method))
        hours["evaluations"] += passes * math.ceil(n_test / bs) * prof.cost_step_s / 3600
    est.hours, est.counts = dict(hours), dict(counts)
    return est

"""The one rule that picks a sweep's best trial, used by the sweep summary (``sweeps.runner.finalize``, from Tune's
results) and by the final pipeline's selection (``pipelines.store.Store.select_best``, from MLflow).

Trials that ran the full budget are preferred over trials ASHA stopped early (an early score is measured after
fewer epochs and is not comparable); among them the best value of the selection metric wins (``mode``: ``max`` or
``min``); ties go to the earlier trial. A trial without a finite value is never picked.
"""
from __future__ import annotations

import math
from typing import Generic, Iterable, NamedTuple, TypeVar

T = TypeVar("T")


class Scored(NamedTuple, Generic[T]):
    value: float  # the selection metric (a validation metric)
    full: bool  # ran the whole budget (max_t epochs), not stopped early
    order: float  # start time or submission order: the smaller wins a tie
    item: T  # what the caller wants back (a run, a Tune result, ...)


def best_trial(candidates: Iterable[Scored[T]], mode: str) -> Scored[T] | None:
    """The best of ``candidates`` by the rule above, or None when none has a finite value."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    scored = [c for c in candidates if isinstance(c.value, (int, float)) and math.isfinite(c.value)]
    if not scored:
        return None
    pool = [c for c in scored if c.full] or scored
    sign = 1.0 if mode == "max" else -1.0
    return min(pool, key=lambda c: (-sign * c.value, c.order))


__all__ = ["Scored", "best_trial"]

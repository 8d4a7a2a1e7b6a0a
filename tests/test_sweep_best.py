"""The one best-trial rule (sweeps.best), shared by the sweep summary and the final pipeline's selection."""
from __future__ import annotations

import math

import pytest

from sweeps.best import Scored, best_trial


def test_full_budget_trials_beat_better_early_scores():
    c = [Scored(0.95, False, 0, "early"), Scored(0.80, True, 1, "full-a"), Scored(0.85, True, 2, "full-b")]
    assert best_trial(c, "max").item == "full-b"
    assert best_trial(c, "min").item == "full-a"


def test_early_stopped_trials_count_when_no_trial_ran_the_budget():
    assert best_trial([Scored(0.7, False, 0, "a"), Scored(0.9, False, 1, "b")], "max").item == "b"


def test_ties_go_to_the_earlier_trial_whatever_the_input_order():
    c = [Scored(0.9, True, 5.0, "late"), Scored(0.9, True, 1.0, "early")]
    assert best_trial(c, "max").item == "early" and best_trial(c[::-1], "max").item == "early"


def test_non_finite_values_are_never_picked_and_nothing_is_none():
    assert best_trial([Scored(math.nan, True, 0, "nan"), Scored(0.1, False, 1, "ok")], "max").item == "ok"
    assert best_trial([Scored(math.nan, True, 0, "nan")], "max") is None
    assert best_trial([], "min") is None
    with pytest.raises(ValueError, match="mode must be"):
        best_trial([Scored(1.0, True, 0, "x")], "maximum")

"""benchmarks/asha_vs_full.py's offline replay of ASHA on recorded learning curves (Ray's own rung rule)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from asha_vs_full import replay  # noqa: E402

# 8 trials, 4 epochs; trial 5 is the best at every epoch, the others rank by their index at every epoch
CURVES = [[0.1 * i + 0.01 * e for e in range(4)] for i in range(8)]
CURVES[5] = [0.9 + 0.01 * e for e in range(4)]


def test_grace_at_the_budget_prunes_nothing():
    assert replay(CURVES, max_t=4, grace=4, rf=2) == (CURVES[5][-1], 8 * 4)


def test_asha_prunes_late_losers_and_keeps_a_trial_best_at_every_rung():
    # trials arriving in rising order are each the best so far at every rung: nothing is cut
    assert replay(sorted(CURVES), max_t=4, grace=1, rf=2) == (CURVES[5][-1], 8 * 4)
    # best first: every later trial falls below the rung's recorded values and stops at its first rung or soon after
    best, spent = replay(sorted(CURVES, reverse=True), max_t=4, grace=1, rf=2)
    assert best == CURVES[5][-1]  # never below a rung's cutoff, so it reaches max_t
    assert 8 <= spent <= 8 * 4 // 2  # every trial runs its first epoch; most stop there

"""Where a trial's time goes: ``fit``/``run_trial`` fill ``timing``, and benchmarks/laptop_breakdown.py splits a
phase's core-seconds into time inside tasks and the gaps around them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_run_trial_times_each_part_and_the_parts_fit_in_the_wall_time(tiny_cfg, mnist5k_100):
    from robust_core.reporting import Reporter
    from robust_core.trial import run_trial

    class Slow(Reporter):  # a reporter that takes a known time: it must land in report_s
        def report(self, metrics, state):
            import time
            time.sleep(0.05)

    clock: dict[str, float] = {}
    final, res = run_trial(tiny_cfg(["train.epochs=2", "train.steps_per_epoch=3"]), Slow(), data=mnist5k_100,
                           evaluate_test=True, timing=clock)
    epochs = len(res.history)
    for k in ("setup_s", "train_s", "val_s", "report_s", "test_s"):
        assert clock[k] > 0, k
    assert clock["report_s"] >= 0.05 * epochs
    parts = sum(clock[k] for k in ("setup_s", "train_s", "val_s", "robust_val_s", "test_s", "report_s"))
    assert parts <= final["timing.wall_s"]
    # epoch_time_s is training + validation of its epoch
    assert sum(h["epoch_time_s"] for h in res.history) == pytest.approx(clock["train_s"] + clock["val_s"], rel=1e-6)
    assert {f"timing.{k}" for k in ("setup_s", "train_s", "val_s", "report_s", "test_s")} <= set(final)


def test_slot_split_accounts_for_every_idle_core_second():
    from laptop_breakdown import slot_split

    # window 0..10 s, 2 slots; tasks: [1, 4], [2, 5], [6, 9] (started only after a gap), nothing after 9
    spans = [(1.0, 4.0), (2.0, 5.0), (6.0, 9.0)]
    out = slot_split((0.0, 10.0), spans, 2)
    busy = sum(b - a for a, b in spans)
    assert out["before"] == pytest.approx(2.0)  # 0..1, both cores
    assert out["between"] == pytest.approx(1 + 2 + 1 + 0)  # 1..2 one idle; 4..5 one; 5..6 two; until the last start
    assert out["tail"] == pytest.approx(3.0)  # 6..9: one core idle, nothing left to start
    assert out["after"] == pytest.approx(2.0)  # 9..10, both
    assert busy + sum(out.values()) == pytest.approx(20.0)

"""What a sweep prints (sweeps.console) and what it reports (sweeps.report, ``robust-sweep report``): our own lines
per trial, trial names the console and the MLflow UI share, the ranked trials and the report plots, from MLflow."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from robust_core import tracking
from sweeps.console import bar, end_line, format_value, make_callback, trial_label
from sweeps.report import format_report, trial_rows, write_report
from sweeps.spec import build_sweep_config


def test_trial_label_names_what_distinguishes_a_trial():
    assert trial_label("vat", {"method.params.eps": 1.5213, "train.lr": 0.0025}) == "vat eps=1.52 lr=2.5e-3"
    # two keys ending the same keep the part that tells them apart
    assert trial_label("x", {"a.eps": 0.5, "b.eps": 2, "train.batch_size": 64}) == "x a.eps=0.5 b.eps=2 batch_size=64"
    assert [format_value(v) for v in (1e-6, 123456.0, 0.0, "adam", True)] == ["1e-6", "1.23e5", "0.0", "adam", "True"]


def test_end_line_and_bar():
    assert end_line("val_acc", {"epoch": 2, "val_acc": 0.81234}, 8) == ("val_acc=0.8123 after 2/8 epochs (stopped "
                                                                        "early by ASHA)")
    assert end_line("val_acc", {"epoch": 8, "val_acc": 0.9}, 8).endswith("(full budget)")
    assert bar(3, 8, 3725, running=2) == "[#######-------------] 3/8 trials, 2 running, 1:02:05 elapsed"
    assert bar(8, 8, 65) == "[####################] 8/8 trials, 1:05 elapsed"


def test_callback_prints_one_line_per_start_and_end_and_a_bar():
    lines: list[str] = []
    cb = make_callback("s", "vat", ["train.lr"], "val_acc", 4, 2, write=lines.append)
    cb.setup()
    t1 = SimpleNamespace(trial_id="a1", config={"train.lr": 0.01, "other": 1}, last_result={"epoch": 4, "val_acc": 0.9})
    t2 = SimpleNamespace(trial_id="b2", config={"train.lr": 0.001}, last_result={"epoch": 2, "val_acc": 0.5})
    cb.on_trial_start(0, [], t1)
    cb.on_trial_start(0, [], t2)
    cb.on_trial_complete(0, [], t2)
    cb.on_trial_error(0, [], t1)
    assert lines[0] == "[s trial 1/2] start: vat lr=0.01" and lines[1] == "[s trial 2/2] start: vat lr=1e-3"
    assert lines[2] == "[s trial 2/2] end: val_acc=0.5000 after 2/4 epochs (stopped early by ASHA)  (b2)"
    assert lines[3].startswith("[s] [##########----------] 1/2 trials, 1 running, 0:")
    assert lines[4].startswith("[s trial 1/2] end: error") and " 2/2 trials, 0:" in lines[5]


# ------------------------------------------------------------------------------------------ report, from MLflow
SWEEP = {"name": "rep", "base": {"method": {"name": "vat"}, "train": {"epochs": 3}},
         "search_space": {"train.lr": {"loguniform": [1e-4, 1e-1]}, "method.params.eps": {"uniform": [0.5, 3.0]}},
         "num_trials": 4, "max_concurrent": 2, "metric": "val_acc", "mode": "max", "seed": 0, "max_failures": 0,
         "resources": {"cpu": 1, "gpu": 0},
         "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}


@pytest.fixture
def swept(store, tmp_path):
    """A finished sweep in MLflow: 4 trials (lr, eps, val_acc per epoch, stopped early, failed)."""
    uri, exp = store
    cfg = build_sweep_config({**SWEEP, "tracking": {"uri": uri, "experiment": "exp"}, "storage": str(tmp_path / "ray")})
    parent = tracking.start_run(uri, exp, "rep", {"robust_sweep.kind": "sweep", "robust_sweep.sweep": "rep"})
    tracking.log_params(uri, parent, {"metric": "val_acc", "mode": "max", "max_t": 3,
                                      **{f"space.{k}": d.to_yaml() for k, d in cfg.search_space.items()}})
    trials = [("t1", 0.01, 1.0, [0.5, 0.7, 0.80], False, "FINISHED"),
              ("t2", 0.001, 2.0, [0.6, 0.9], True, "FINISHED"),  # best score, but stopped early
              ("t3", 0.02, 1.5, [0.6, 0.75, 0.85], False, "FINISHED"),
              ("t4", 0.05, 2.5, [0.1], False, "FAILED")]
    for tid, lr, eps, curve, stopped, status in trials:
        sampled = {"train.lr": lr, "method.params.eps": eps}
        rid = tracking.start_run(uri, exp, trial_label("vat", sampled), {
            "robust_sweep.kind": "trial", "robust_sweep.trial_id": tid, "robust_sweep.stopped_early":
            str(stopped).lower(), "robust_sweep.epochs_done": str(len(curve))}, parent_run_id=parent)
        tracking.log_params(uri, rid, sampled)
        for ep, v in enumerate(curve, 1):
            tracking.log_metrics(uri, rid, {"val_acc": v}, step=ep)
        tracking.set_status(uri, rid, status)
    tracking.set_status(uri, parent, "FINISHED")
    return cfg, uri


def test_report_ranks_full_budget_trials_first_by_the_sweep_rule(swept):
    cfg, uri = swept
    parent, rows = trial_rows(uri, "exp", "rep")
    assert [(t.trial_id, t.status) for t in rows] == [("t3", "full"), ("t1", "full"), ("t2", "stopped early"),
                                                      ("t4", "errored")]
    text = format_report(parent, rows).splitlines()
    assert text[0].startswith("sweep rep (MLflow run ") and "ranked by val_acc (max)" in text[0]
    assert text[1].split() == ["#", "lr", "eps", "val_acc", "epochs", "status", "trial", "run"]
    assert text[2].split()[:7] == ["1", "0.02", "1.5", "0.8500", "3/3", "full", "t3"]
    assert "stopped early" in text[4] and "errored" in text[5]


def test_unknown_sweep_names_the_ones_there(swept):
    _, uri = swept
    with pytest.raises(LookupError, match="no sweep 'nope' .* the sweeps there: rep"):
        trial_rows(uri, "exp", "nope")


def test_report_artifact_has_the_plots(swept, tmp_path):
    cfg, uri = swept
    made = write_report(cfg, uri, "exp", tmp_path / "rep")
    for f in ("learning_curves.png", "param_importances.png", "parallel_coordinates.png",
              "optimization_history.png"):
        assert not made[f].startswith("not drawn"), made[f]
        assert (tmp_path / "rep" / f).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "rep" / "trials.txt").read_text().splitlines()[2].split()[6] == "t3"

"""The sweep layer's failure handling without a cluster: the MLflow reporter off the critical path (outages, retries,
resumes), how Optuna hears about stopped and diverged trials, which Tune states resume, and the exit-code rule of
the entry points for bad input. The same paths under real faults: ``tests/test_faults.py``."""
from __future__ import annotations

import json
import socket
import time

import pytest

from robust_core import tracking
from robust_core.cli import main
from robust_core.errors import InputError


def _epoch(e: int) -> dict:
    return {"epoch": e, "val_acc": 0.5 + e / 100, "train_loss": 1.0 / e, "lr": 0.1, "epoch_time_s": 2.5}


def _val_acc(uri: str, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracking.client(uri).get_metric_history(run_id, "val_acc"))


class Outage:
    """``tracking.client`` whose calls fail like an unreachable server (HTTP 503) while ``down`` is set."""

    def __init__(self, real):
        from mlflow.exceptions import MlflowException

        self.real, self.down, self.failed = real, True, 0
        self.error = MlflowException("API request failed: Connection refused", error_code="TEMPORARILY_UNAVAILABLE")

    def __call__(self, uri):
        outage = self

        class Client:
            def __getattr__(self, name):
                fn = getattr(outage.real(uri), name)

                def call(*a, **k):
                    if outage.down:
                        outage.failed += 1
                        raise outage.error
                    return fn(*a, **k)

                return call

        return Client()


def test_reporting_never_waits_for_mlflow_and_an_outage_loses_nothing(store, monkeypatch):
    uri, exp = store
    run = tracking.start_run(uri, exp, "t")
    outage = Outage(tracking.client)
    monkeypatch.setattr(tracking, "client", outage)
    monkeypatch.setattr(tracking.MLflowReporter, "RETRY_DELAY_S", 0.05)
    rep = tracking.MLflowReporter(uri, run, max_outage_s=60)
    t0 = time.perf_counter()
    for e in (1, 2, 3):
        rep.report(_epoch(e), dict)
    assert time.perf_counter() - t0 < 0.5  # queued, not sent: training goes on during the outage
    assert not rep.flush(timeout=1.0) and outage.failed >= 2  # still retrying
    outage.down = False
    rep.close({"epoch": 3, "val_acc": 0.53, "best_val_acc": 0.53, "test_acc": 0.4})
    c = outage.real(uri)
    assert _val_acc(uri, run) == [(1, 0.51), (2, 0.52), (3, 0.53)]  # every point, once
    assert len(c.get_metric_history(run, "train_loss")) == 3
    r = c.get_run(run)
    assert r.info.status == "FINISHED" and r.data.metrics["test_acc"] == 0.4
    assert r.data.tags["robust_sweep.epochs_done"] == "3"


def test_an_outage_longer_than_the_budget_is_a_clear_trial_error(store, monkeypatch):
    uri, exp = store
    run = tracking.start_run(uri, exp, "t")
    monkeypatch.setattr(tracking, "client", Outage(tracking.client))
    monkeypatch.setattr(tracking.MLflowReporter, "RETRY_DELAY_S", 0.05)
    rep = tracking.MLflowReporter(uri, run, max_outage_s=0.5)
    rep.report(_epoch(1), dict)
    assert rep.flush(timeout=30)  # the sender gave up
    with pytest.raises(tracking.TrackingUnavailable, match=r"unreachable for more than 0 s.*checkpoint"):
        rep.report(_epoch(2), dict)
    with pytest.raises(tracking.TrackingUnavailable):
        rep.close({"epoch": 2})


def test_a_resumed_trial_logs_what_its_dead_attempt_never_sent(store, monkeypatch):
    """Attempt 1 trains 3 epochs while MLflow is down and dies; attempt 2 resumes from the epoch-3 checkpoint: the
    restored history is logged (nothing lost), epochs already logged are not logged again (nothing doubled)."""
    uri, exp = store
    run = tracking.start_run(uri, exp, "t")
    first = tracking.MLflowReporter(uri, run, max_outage_s=0.3)
    first.report(_epoch(1), dict)
    assert first.flush()  # epoch 1 reached MLflow before the outage
    outage = Outage(tracking.client)
    monkeypatch.setattr(tracking, "client", outage)
    monkeypatch.setattr(tracking.MLflowReporter, "RETRY_DELAY_S", 0.05)
    for e in (2, 3):
        first.report(_epoch(e), dict)  # queued in an attempt that dies (here: gives up) before sending them
    assert first.flush(timeout=30) and outage.failed
    monkeypatch.setattr(tracking, "client", outage.real)
    second = tracking.MLflowReporter(uri, run)
    second.resumed({"epoch": 3, "history": [_epoch(1), _epoch(2), _epoch(3)]})
    second.report(_epoch(4), dict)
    second.close({"epoch": 4})
    assert _val_acc(uri, run) == [(1, 0.51), (2, 0.52), (3, 0.53), (4, 0.54)]
    best = sorted((m.step, m.value) for m in outage.real(uri).get_metric_history(run, "best_val_acc"))
    assert best == [(1, 0.51), (2, 0.52), (3, 0.53), (4, 0.54)]
    resumed = outage.real(uri).get_metric_history(run, "resumed_from_epoch")
    assert [(m.step, m.value) for m in resumed] == [(3, 3.0)]
    # an epoch's points carry one timestamp whoever writes them: the run's start + training time (2.5 s per epoch)
    start = outage.real(uri).get_run(run).info.start_time
    hist = sorted(outage.real(uri).get_metric_history(run, "val_acc"), key=lambda m: m.step)
    assert [m.timestamp - start for m in hist] == [2500, 5000, 7500, 10000]


def test_two_writers_of_the_same_epochs_store_each_point_once(store):
    """An earlier attempt still sending while its retry starts (or the driver backfilling a stopped trial): the
    same epochs written twice give identical points, which MLflow stores once."""
    uri, exp = store
    run = tracking.start_run(uri, exp, "t")
    a, b = tracking.MLflowReporter(uri, run), tracking.MLflowReporter(uri, run)
    for e in (1, 2):
        a.report(_epoch(e), dict)
    b.resumed({"epoch": 2, "history": [_epoch(1), _epoch(2)]})
    tracking.log_missing_epochs(uri, run, [_epoch(1), _epoch(2)])
    assert a.flush() and b.flush()
    for key in ("val_acc", "train_loss", "best_val_acc"):
        assert len(tracking.client(uri).get_metric_history(run, key)) == 2, key


def test_driver_backfills_epochs_a_stopped_trial_had_not_sent(store):
    uri, exp = store
    run = tracking.start_run(uri, exp, "t")
    tracking.log_missing_epochs(uri, run, [_epoch(1)])
    assert tracking.log_missing_epochs(uri, run, [_epoch(1), _epoch(2), _epoch(3)]) == 2
    assert tracking.log_missing_epochs(uri, run, [_epoch(1), _epoch(2), _epoch(3)]) == 0
    assert _val_acc(uri, run) == [(1, 0.51), (2, 0.52), (3, 0.53)]


def test_the_reporter_can_open_its_run_in_the_background(store):
    uri, exp = store
    opened = []

    def open_run():
        opened.append(tracking.start_run(uri, exp, "lazy"))
        return opened[-1]

    rep = tracking.MLflowReporter(uri, open_run=open_run)
    rep.report(_epoch(1), dict)
    rep.close({"epoch": 1})
    assert len(opened) == 1 and _val_acc(uri, opened[0]) == [(1, 0.51)]


# ----------------------------------------------------------------------------------------------- Optuna
def test_optuna_hears_pruned_trials_with_their_value_and_diverged_ones_as_fail():
    """ASHA stops a trial at its first report (Tune then skips on_trial_result): PRUNED with that value as the
    intermediate value at its epoch, so Optuna 5's TPE ranks it by the value (not last, as with no value). A
    diverged trial: FAIL, its last value kept, the reason as a user attribute."""
    import optuna
    from optuna.samplers._tpe.sampler import _get_pruned_trial_score
    from optuna.trial import TrialState

    from sweeps.runner import make_searcher
    from sweeps.spec import build_sweep_config

    cfg = build_sweep_config({"name": "opt", "base": {"train": {"epochs": 4}}, "num_trials": 3, "max_concurrent": 3,
                              "search_space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}})
    limiter = make_searcher(cfg)
    searcher = limiter.searcher
    for t in ("a", "b", "c"):
        assert limiter.suggest(t) is not None
    searcher.on_trial_complete("a", {"epoch": 1, "val_acc": 0.7, "training_iteration": 1})  # ASHA's first rung
    searcher.on_trial_result("b", {"epoch": 1, "val_acc": 0.4, "training_iteration": 1})
    searcher.on_trial_result("b", {"diverged": 1, "val_acc": 0.4, "failure": "mle: non-finite loss", "epoch": None})
    searcher.on_trial_complete("b", {"diverged": 1, "val_acc": 0.4, "failure": "mle: non-finite loss"})
    searcher.on_trial_result("c", {"epoch": 1, "val_acc": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("c", {"epoch": 4, "val_acc": 0.8, "training_iteration": 4})
    a, b, c = searcher.study.trials
    assert (a.state, a.intermediate_values, a.value) == (TrialState.PRUNED, {1: 0.7}, 0.7)
    assert (b.state, b.intermediate_values) == (TrialState.FAIL, {1: 0.4})
    assert b.user_attrs["diverged"] == "mle: non-finite loss"
    assert (c.state, c.value, c.intermediate_values) == (TrialState.COMPLETE, 0.8, {1: 0.5})
    assert _get_pruned_trial_score(a, searcher.study) == (-1, -0.7)  # ranked by what it reported
    assert searcher.study.direction == optuna.study.StudyDirection.MAXIMIZE


# ----------------------------------------------------------------------------------------------- Tune state
def _tune_dir(path, files: dict[str, str]):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return str(path)


def test_only_a_complete_tune_state_is_resumable(tmp_path):
    from sweeps.runner import inspect_experiment

    s = "2026-01-01_00-00-00"
    full = {"tuner.pkl": "x", f"experiment_state-{s}.json": json.dumps({"trial_data": []}),
            f"search_gen_state-{s}.json": "{}", f"searcher-state-{s}.pkl": "x"}
    assert inspect_experiment(str(tmp_path / "none")).kind == "absent"
    assert inspect_experiment(_tune_dir(tmp_path / "ok", full)).kind == "resumable"
    assert inspect_experiment(_tune_dir(tmp_path / "ok2", full)).kind == "resumable"
    started = inspect_experiment(_tune_dir(tmp_path / "early", {"tuner.pkl": "x"}))
    assert started.kind == "started" and "before Tune saved any trial" in started.detail
    cut = inspect_experiment(_tune_dir(tmp_path / "cut", {**full, f"experiment_state-{s}.json": '{"trial_da'}))
    assert cut.kind == "broken" and "unreadable" in cut.detail
    half = inspect_experiment(_tune_dir(tmp_path / "half", {k: v for k, v in full.items() if "searcher" not in k}))
    assert half.kind == "broken" and f"searcher-state-{s}.pkl" in half.detail


# ----------------------------------------------------------------------------------------------- bad input
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_is_an_input_error_not_a_hang(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text("name: s\nbase: {train: {epochs: 1}}\nnum_trials: 1\nmax_concurrent: 1\n"
                                     "search_space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)  # restored after: the driver may set it
    t0 = time.perf_counter()
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert err.startswith("error: RAY_ADDRESS=127.0.0.1:") and "no Ray head answers" in err
    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert "is a dashboard (job server) URL" in capsys.readouterr().err


def test_bad_sweep_files_and_values_exit_2_naming_them(tmp_path, capsys):
    binary = tmp_path / "sweep.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["sweep", str(binary)]) == 2
    assert f"{binary}: not a text file" in capsys.readouterr().err
    div = tmp_path / "div.yaml"
    div.write_text("name: d\nbase: {method: {name: vat, params: {eps: 1/0}}}\nnum_trials: 1\nmax_concurrent: 1\n")
    assert main(["sweep", str(div)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "base.method.params.eps:" in err and "(got '1/0')" in err


def test_local_trial_refuses_a_damaged_checkpoint_before_anything_starts(tmp_path, store, capsys):
    uri, _ = store
    args = ["trial", "--out", str(tmp_path / "t"), "--quiet", "--set", "model.params.hidden=[8]",
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1", "--set", "train.eval_batch_size=500",
            "--tracking-uri", uri]
    assert main(args) == 0
    ckpt = tmp_path / "t" / "checkpoint" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    n_runs = len(tracking.find_runs(uri, "robust-sweep-local"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {ckpt}: cannot read this checkpoint (truncated or corrupted" in err
    runs = tracking.find_runs(uri, "robust-sweep-local")
    assert len(runs) == n_runs and all(r.info.status != "RUNNING" for r in runs)


def test_sweep_exit_code_is_1_when_a_trial_errored_and_0_when_trials_only_diverged(tmp_path, monkeypatch):
    import sweeps.runner
    from sweeps.runner import SweepSummary

    (tmp_path / "s.yaml").write_text("name: s\nbase: {train: {epochs: 1}}\nnum_trials: 2\nmax_concurrent: 1\n"
                                     "search_space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    for errored, diverged, code in ((1, 0, 1), (0, 1, 0)):
        summary = SweepSummary("s", "p", "1", "x", 2, 2 - errored - diverged, 0, errored, n_diverged=diverged)
        monkeypatch.setattr(sweeps.runner, "run_sweep", lambda cfg, progress=True, s=summary: s)
        assert main(["sweep", str(tmp_path / "s.yaml")]) == code
        from sweeps.run import main as run_main

        assert run_main([str(tmp_path / "s.yaml"), "--quiet"]) == code


def test_failure_reason_is_one_readable_line():
    from sweeps.runner import failure_reason

    class Wrapped(Exception):  # how Ray hands back a trial's exception: a coloured traceback, cause attached
        def __init__(self, cause):
            super().__init__("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n  File \"x.py\", line 3\n"
                             "ValueError: bad thing happened")
            self.cause = cause

    line, full = failure_reason(Wrapped(ValueError("bad thing happened\nmore detail")))
    assert line == "ValueError: bad thing happened" and "\x1b" not in full and "ray::ImplicitFunc" in full
    assert failure_reason(RuntimeError("node lost"))[0] == "RuntimeError: node lost"


def test_input_errors_cross_process_boundaries_with_their_fields():
    import pickle

    from robust_core.errors import BadFileError

    e = pickle.loads(pickle.dumps(BadFileError("/x/model.pt", "truncated")))
    assert isinstance(e, InputError) and e.path == "/x/model.pt" and str(e) == "/x/model.pt: truncated"

"""MLflow wrapper: lazy import, runs found again by tag, per-epoch metrics exactly once, concurrent writers."""
from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import pytest

from robust_core import tracking

N_WORKERS, N_STEPS = 4, 50


def test_imports_without_mlflow_or_ray():
    code = ("import sys, robust_core.tracking, robust_core.trial; "
            "bad = [m for m in ('mlflow', 'ray') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_prepare_store_is_idempotent_and_artifacts_absolute(store, tmp_path):
    uri, exp = store
    assert tracking.prepare_store(uri, "exp") == exp
    loc = tracking.client(uri).get_experiment(exp).artifact_location
    assert loc == (tmp_path / "db" / "artifacts" / "exp").as_uri()


def test_find_or_start_run_reuses_by_key_tags(store):
    uri, exp = store
    parent = tracking.start_run(uri, exp, "sweep", {"robust_sweep.kind": "sweep"})
    tags = {"robust_sweep.kind": "trial", "robust_sweep.trial_id": "abc_001", "robust_sweep.sweep": "s"}
    keys = ["robust_sweep.sweep", "robust_sweep.trial_id"]
    rid, created = tracking.find_or_start_run(uri, exp, "abc_001", tags, keys, parent_run_id=parent)
    rid2, created2 = tracking.find_or_start_run(uri, exp, "abc_001", tags, keys, parent_run_id=parent)
    other, created3 = tracking.find_or_start_run(uri, exp, "abc_002", {**tags, "robust_sweep.trial_id": "abc_002"},
                                                 keys, parent_run_id=parent)
    assert (created, created2, created3) == (True, False, True) and rid == rid2 != other
    runs = tracking.find_runs(uri, "exp", "tags.`robust_sweep.kind` = 'trial'")
    assert [r.info.run_id for r in runs] == [rid, other]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs)
    assert runs[0].info.run_name == "abc_001"


def test_a_create_retried_by_the_http_client_leaves_one_run(store, monkeypatch):
    """MLflow's client retries a create_run that timed out on a slow server although the server created the run
    (seen in the fault tests under load: two runs per trial, same tags and start time): one run is kept."""
    uri, exp = store
    tags = {"robust_sweep.kind": "trial", "robust_sweep.trial_id": "t1", "robust_sweep.sweep": "s"}
    keys = ["robust_sweep.sweep", "robust_sweep.trial_id"]
    real = tracking.start_run
    made = []

    def twice(*a, **k):  # the request processed, its response lost, the retry processed again
        made.extend([real(*a, **k), real(*a, **k)])
        return made[-1]

    monkeypatch.setattr(tracking, "start_run", twice)
    rid, created = tracking.find_or_start_run(uri, exp, "t1", tags, keys)
    monkeypatch.setattr(tracking, "start_run", real)
    assert created and len(made) == 2 and rid in made
    runs = tracking.find_runs(uri, "exp", "tags.`robust_sweep.trial_id` = 't1'")
    assert [r.info.run_id for r in runs] == [rid]
    assert tracking.find_or_start_run(uri, exp, "t1", tags, keys) == (rid, False)
    # a twin that becomes visible only later (its create was still queued on the server) is removed by the next lookup
    twin = real(uri, exp, "t1", tags)
    found, created = tracking.find_or_start_run(uri, exp, "t1", tags, keys)
    keep = min(tracking.client(uri).get_run(r).info.start_time for r in (rid, twin))
    assert not created and tracking.client(uri).get_run(found).info.start_time == keep
    assert [r.info.run_id for r in tracking.find_runs(uri, "exp", "tags.`robust_sweep.trial_id` = 't1'")] == [found]


def test_reporter_logs_each_epoch_once_and_closes(store, tmp_path):
    uri, exp = store
    rid = tracking.start_run(uri, exp, "t")
    tracking.log_params(uri, rid, {"train.lr": 0.1, "model.params.hidden": [32], "x": None})
    tracking.log_params(uri, rid, {"train.lr": 0.1})  # re-logging an existing param is allowed
    rep = tracking.MLflowReporter(uri, rid)
    for e, acc in ((1, 0.5), (2, 0.7)):
        rep.report({"epoch": e, "val_acc": acc, "train_loss": 1.0 / e, "note": "text"}, lambda: {})
    assert rep.flush()  # sent in the background; an earlier attempt's process has ended before a resume starts
    # a resumed trial (new process) repeats epoch 2 from its checkpoint: not logged twice
    rep2 = tracking.MLflowReporter(uri, rid)
    for e, acc in ((2, 0.7), (3, 0.6)):
        rep2.report({"epoch": e, "val_acc": acc, "train_loss": 1.0 / e}, lambda: {})
    rep2.close({"epoch": 3, "val_acc": 0.6, "best_val_acc": 0.7, "test_acc": 0.65, "config_fingerprint": "ab12"})
    c = tracking.client(uri)
    hist = c.get_metric_history(rid, "val_acc")
    assert sorted((h.step, h.value) for h in hist) == [(1, 0.5), (2, 0.7), (3, 0.6)]
    assert [h.value for h in sorted(c.get_metric_history(rid, "best_val_acc"), key=lambda h: h.step)] == [0.5, 0.7, 0.7]
    run = c.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] == 0.65
    assert run.data.tags["robust_sweep.config_fingerprint"] == "ab12"
    assert run.data.tags["robust_sweep.epochs_done"] == "3"
    assert run.data.params == {"train.lr": "0.1", "model.params.hidden": "[32]", "x": "null"}
    assert "note" not in run.data.metrics

    tracking.log_artifact_text(uri, rid, "config.yaml", "a: 1\n")
    f = tmp_path / "table.csv"
    f.write_text("x,y\n1,2\n")
    tracking.log_artifact_file(uri, rid, f, "tables")
    assert sorted(a.path for a in c.list_artifacts(rid)) == ["config.yaml", "tables"]
    assert [a.path for a in c.list_artifacts(rid, "tables")] == ["tables/table.csv"]
    assert (tmp_path / "db" / "artifacts" / "exp" / rid / "artifacts" / "config.yaml").read_text() == "a: 1\n"


def _writer(uri: str, run_id: str, worker: int) -> None:
    rep = tracking.MLflowReporter(uri, run_id)
    for step in range(1, N_STEPS + 1):
        rep.report({"epoch": step, "val_acc": worker + step / 1000, "train_loss": float(step), "lr": 0.1}, dict)
    assert rep.flush()


def test_concurrent_writers_lose_no_metric(store):
    uri, exp = store
    parent = tracking.start_run(uri, exp, "sweep")
    runs = [tracking.start_run(uri, exp, f"t{i}", parent_run_id=parent) for i in range(N_WORKERS)]
    ctx = mp.get_context("spawn")  # fresh processes, as Tune's workers are
    procs = [ctx.Process(target=_writer, args=(uri, rid, i)) for i, rid in enumerate(runs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS
    c = tracking.client(uri)
    for i, rid in enumerate(runs):
        for key in ("val_acc", "train_loss", "lr", "best_val_acc"):
            assert len(c.get_metric_history(rid, key)) == N_STEPS, (i, key)
        hist = sorted(c.get_metric_history(rid, "val_acc"), key=lambda h: h.step)
        assert [(h.step, h.value) for h in hist] == [(s, pytest.approx(i + s / 1000)) for s in range(1, N_STEPS + 1)]


def test_local_server_serves_runs_and_artifacts(tmp_path):
    """The demo's store: ``mlflow server`` on 127.0.0.1 with SQLite behind it; runs, metrics and artifacts written
    over HTTP land in the SQLite file and the artifacts folder."""
    from robust_core import tracking

    uri, proc = tracking.start_local_server(tmp_path / "mlflow.db", tmp_path / "artifacts")
    try:
        assert uri.startswith("http://127.0.0.1:")
        exp = tracking.prepare_store(uri, "srv")
        run = tracking.start_run(uri, exp, "r", {"robust_sweep.kind": "trial"})
        tracking.log_metrics(uri, run, {"val_acc": 0.5}, step=3)
        tracking.log_artifact_text(uri, run, "config.yaml", "a: 1\n")
        tracking.set_status(uri, run, "FINISHED")
        got = tracking.find_runs(uri, "srv", "tags.`robust_sweep.kind` = 'trial'")
        assert [r.info.run_id for r in got] == [run] and got[0].data.metrics["val_acc"] == 0.5
    finally:
        tracking.stop_local_server(proc)
    # the same store read directly from SQLite, without the server
    direct = tracking.find_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "srv")
    assert [r.info.run_id for r in direct] == [run] and direct[0].info.status == "FINISHED"
    assert list((tmp_path / "artifacts").rglob("config.yaml"))

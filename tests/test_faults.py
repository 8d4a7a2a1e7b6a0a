"""Fault injection on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, loopback only): sweeps driven by
``sweeps/run.py`` in their own processes, as on a cluster, while the test removes worker nodes, stops the MLflow
server and SIGKILLs drivers. Then it counts: trials planned / finished / redone / lost, metric points expected /
stored (printed as ``FAULTS ...`` lines; run with ``-s`` to see them). Also ``ray job submit`` to a head started with
``ray start --head`` (token auth), and a crafted model file served by MLflow.

Tiny budgets (an MLP with 16 hidden units, a few SGD steps per epoch) keep the module within a few minutes on 2 CPUs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from robust_core import tracking

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
EXPERIMENT = "faults"
WORKER_CPUS = 3  # trials of 1 CPU each: three train at once
BASE = {"data": {"name": "mnist5k"}, "model": {"name": "mlp", "params": {"hidden": [16]}}, "method": {"name": "mle"},
        "train": {"steps_per_epoch": 20, "batch_size": 32, "eval_batch_size": 500, "optimizer": "sgd"}}
# MLflow's client in the trials (the worker nodes' processes) gives up on a request within ~7 s (its default: ~4 min);
# every outage below outlasts it. The drivers and the test itself keep MLflow's defaults (a loaded machine's server
# can take seconds to answer).
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def report(**figures) -> None:
    print("FAULTS " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local MLflow server (SQLite behind it) that tests may stop and start again on the same port. It starts in
    the background (tens of seconds on a busy machine, like the cluster): ``uri`` waits for it."""
    d = tmp_path_factory.mktemp("mlflow")

    class Server:
        def start(self, port=None):
            def run():
                try:
                    self._uri, self.proc = tracking.start_local_server(d / "mlflow.db", d / "artifacts", port=port)
                except BaseException as e:  # noqa: BLE001 - raised again by `uri`
                    self._error = e

            self._error, self._thread = None, threading.Thread(target=run)
            self._thread.start()

        @property
        def uri(self) -> str:
            self._thread.join()
            if self._error is not None:
                raise self._error
            return self._uri

        def stop(self):
            self.uri  # noqa: B018 - started
            tracking.stop_local_server(self.proc)

    s = Server()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(server):
    """Head with no CPUs (drivers attach there) + one worker node that runs every trial."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.add_node(num_cpus=WORKER_CPUS, env_vars=CLIENT_ENV)  # the raylet's environment: its workers inherit it
    yield c
    c.shutdown()


def sweep_file(tmp: Path, name: str, **over) -> Path:
    import yaml

    cfg = {"name": name, "base": BASE, "num_trials": 4, "max_concurrent": 2, "seed": 0, "max_failures": 3,
           "resources": {"cpu": 1, "gpu": 0}, "storage": f"file://{tmp / 'ray'}", **over}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


class Gates:
    """The test's side of ``sweeps.runner.fault_gate``: hold drivers/trials at named points (``hold``), see who is
    there (``at``), let them go (``release``, ``open``). This is what makes the module independent of how fast the
    machine trains: nothing is killed or cut off on a timer."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir()

    def hold(self, *points: str) -> None:
        for p in points:
            (self.dir / f"hold.{p}").touch()

    def open(self, *points: str) -> None:
        for p in points:
            (self.dir / f"hold.{p}").unlink(missing_ok=True)

    def release(self, who: str) -> None:
        (self.dir / f"release.{who}").touch()

    def at(self, point: str) -> list[str]:
        return sorted(f.name.split(".", 2)[2] for f in self.dir.glob(f"at.{point}.*"))


def start_driver(cfg: Path, cluster, server, log: Path, *extra: str, gates: Gates | None = None) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT)}
    env.pop("ROBUST_SWEEP_TEST_GATES", None)
    if gates is not None:
        env["ROBUST_SWEEP_TEST_GATES"] = str(gates.dir)
    args = [PY, str(ROOT / "sweeps" / "run.py"), str(cfg), "--quiet", "--set", f"tracking.uri={server.uri}",
            "--set", f"tracking.experiment={EXPERIMENT}", *extra]
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=cfg.parent)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> dict:
    rc = proc.wait(timeout)
    text = "\n" + log.read_text()  # the summary may be the driver's very first line (quiet console)
    assert rc == 0, f"driver exited with {rc}:\n{text[-6000:]}"
    start = text.rindex("\n{\n") + 1  # the summary JSON, printed last (Ray may log a line after it)
    return json.loads(text[start:text.index("\n}\n", start) + 2])


def runs_of(server, sweep: str) -> tuple[object, list, list]:
    """(live parent, its trial runs, every run of the sweep)."""
    every = tracking.find_runs(server.uri, EXPERIMENT, f"tags.`robust_sweep.sweep` = '{sweep}'")
    parents = [r for r in every if r.data.tags.get("robust_sweep.kind") == "sweep"
               and "robust_sweep.superseded_because" not in r.data.tags]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    trials = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], trials, every


def epochs_logged(server, run_id: str) -> list[int]:
    return sorted(m.step for m in tracking.client(server.uri).get_metric_history(run_id, "val_acc"))


def checkpointed(storage: Path, sweep: str) -> dict[str, int]:
    """trial id -> the newest epoch whose checkpoint is complete on storage (loads) right now."""
    from robust_core.errors import BadFileError
    from robust_core.reporting import load_state

    out = {}
    for d in (storage / sweep).glob("robust_sweep_trial_*"):
        for c in sorted(d.glob("checkpoint_*/checkpoint.pt"), reverse=True):
            try:
                out[d.name.split("_")[3]] = int(load_state(c)["epoch"])
                break
            except (BadFileError, OSError):  # being written, or deleted meanwhile (num_to_keep)
                continue
    return out


# ------------------------------------------------------------------------------------------------ tests
def test_node_loss_mlflow_outage_and_a_diverging_trial(cluster, server, tmp_path):
    """One sweep, three faults: the worker node is removed mid-trial (a new one joins), the MLflow server is down
    for longer than its client's retries while the trials resume and train, and the trials with lr=1e30 diverge.
    Every trial finishes from its checkpoint or fails once with a readable reason; no epoch is redone or lost."""
    epochs = 4
    cfg = sweep_file(tmp_path, "faults-a", search_space={"train.lr": {"choice": [0.05, 1.0e30]}}, num_trials=3,
                     scheduler={"type": "none"}, seed=6, max_concurrent=3)  # TPE, seed 6: 0.05, 0.05, 1e30
    log = tmp_path / "driver.log"
    gates = Gates(tmp_path / "gates")
    gates.hold("epoch-1", "epoch-3")  # the two trials that train wait after epochs 1 and 3 until the test is ready
    t0 = time.monotonic()
    driver = start_driver(cfg, cluster, server, log, "--set", f"base.train.epochs={epochs}", gates=gates)
    store = tmp_path / "ray"
    # node loss: both training trials hold mid-trial (epoch 1 saved), the diverging one has ended
    wait_for(lambda: len(gates.at("epoch-1")) == 2 and gates.at("end"), 300,
             "two trials held after epoch 1 and the diverged one ended", driver, log)
    at_kill = checkpointed(store, "faults-a")
    assert sorted(at_kill.values()) == [1, 1], at_kill
    t_kill = time.monotonic()
    worker = next(iter(cluster.worker_nodes))
    cluster.remove_node(worker)
    t_down = time.monotonic()
    port = int(server.uri.rsplit(":", 1)[1])
    server.stop()
    gates.open("epoch-1")
    cluster.add_node(num_cpus=WORKER_CPUS, env_vars=CLIENT_ENV)
    t_node = time.monotonic()
    # the outage: MLflow stays down while both trials resume and train epochs 2 and 3 (held after 3) and for
    # longer than its client's own retries (~7 s)
    wait_for(lambda: len(gates.at("epoch-3")) == 2 and time.monotonic() - t_down > 12, 400,
             "both trials resumed and through epoch 3 with MLflow down", driver, log)
    server.start(port=port)
    server.uri  # noqa: B018 - waits until it answers
    outage_s = time.monotonic() - t_down
    gates.open("epoch-3")
    summary = finish(driver, log)
    t_end = time.monotonic()

    parent, trials, _ = runs_of(server, "faults-a")
    c = tracking.client(server.uri)
    assert parent.info.status == "FINISHED" and summary["n_errored"] == 0
    assert len(trials) == summary["n_trials"] == 3 and len({t.data.tags["robust_sweep.trial_id"] for t in trials}) == 3
    assert all(t.info.status != "RUNNING" for t in trials)
    diverged = [t for t in trials if float(t.data.params["train.lr"]) > 1]
    fine = [t for t in trials if t not in diverged]
    assert len(diverged) == 1 and len(fine) == 2, "TPE with seed 6 samples 0.05, 0.05, 1e30"
    assert summary["n_diverged"] == len(diverged) == int(parent.data.tags["robust_sweep.n_diverged"])
    assert summary["n_finished"] == len(fine)
    for t in diverged:  # failed once, at once, with a readable reason and the traceback beside it
        assert t.info.status == "FAILED" and t.data.tags["robust_sweep.failure"] == "diverged"
        reason = t.data.tags["robust_sweep.error"]
        assert reason.startswith("mle: non-finite loss at epoch 1") and "\n" not in reason and "\x1b" not in reason
        assert "resumed_from_epoch" not in t.data.metrics  # never retried
        (tmp_path / t.info.run_id).mkdir()
        text = Path(c.download_artifacts(t.info.run_id, "error.txt", str(tmp_path / t.info.run_id))).read_text()
        assert "Traceback" in text and "TrainingDiverged" in text
    redone = 0
    points = 0
    for t in fine:
        assert t.info.status == "FINISHED"
        assert epochs_logged(server, t.info.run_id) == list(range(1, epochs + 1))  # each epoch once: none lost
        points += len(c.get_metric_history(t.info.run_id, "val_acc"))
        resumes = c.get_metric_history(t.info.run_id, "resumed_from_epoch")
        saved = at_kill.get(t.data.tags["robust_sweep.trial_id"], 0)
        for r in resumes:  # every resume started from the newest checkpoint there was when the node went
            redone += max(0, saved - int(r.value))
    n_resumed = sum(bool(c.get_metric_history(t.info.run_id, "resumed_from_epoch")) for t in fine)
    assert redone == 0 and n_resumed == 2  # both were held mid-trial when their node went
    # rerun: the diverged trial is not run again, nothing is retrained
    before = {t.info.run_id: (t.info.end_time, len(c.get_metric_history(t.info.run_id, "val_acc"))) for t in trials}
    again = finish(start_driver(cfg, cluster, server, tmp_path / "rerun.log", "--set", f"base.train.epochs={epochs}"),
                   tmp_path / "rerun.log")
    assert again["resumed"] and again["n_diverged"] == 1 and again["n_finished"] == 2
    for t in diverged:
        r = c.get_run(t.info.run_id)
        assert r.info.status == "FAILED" and r.info.end_time == before[t.info.run_id][0]
    assert {t.info.run_id: len(c.get_metric_history(t.info.run_id, "val_acc")) for t in trials} == \
        {k: v[1] for k, v in before.items()}
    report(test="node+outage+divergence", trials_planned=3, finished=len(fine), diverged=len(diverged),
           resumed_after_node_loss=n_resumed, epochs_redone=redone, trials_lost=3 - len(trials),
           points_expected=epochs * len(fine), points_stored=points, mlflow_outage_s=round(outage_s),
           s_to_mid_trial=round(t_kill - t0), s_node_swap=round(t_node - t_kill),
           s_after_outage=round(t_end - t_down - outage_s))


def test_driver_killed_at_the_very_start_and_mid_sweep(cluster, server, tmp_path):
    """SIGKILL the driver right after Tune wrote tuner.pkl (nothing saved yet), then again mid-sweep; the third run
    accounts for every planned trial once, with no run left RUNNING, no epoch trained twice, the Optuna study
    matching the trials."""
    import optuna

    epochs = 4
    cfg = sweep_file(tmp_path, "faults-b", search_space={"train.lr": {"loguniform": [0.01, 0.1]}},
                     scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                     optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    over = ("--set", f"base.train.epochs={epochs}")
    store = tmp_path / "ray" / "faults-b"
    log1, log2, log3 = (tmp_path / f"driver{i}.log" for i in (1, 2, 3))

    gates = Gates(tmp_path / "gates")
    gates.hold("driver-fit")  # the first driver waits after Tune wrote tuner.pkl, before fit saves anything
    d1 = start_driver(cfg, cluster, server, log1, *over, gates=gates)
    wait_for(lambda: gates.at("driver-fit"), 180, "the driver with tuner.pkl written, before fit", d1, log1)
    assert (store / "tuner.pkl").exists() and not any(store.glob("experiment_state-*.json"))
    d1.send_signal(signal.SIGKILL)
    d1.wait()

    gates.open("driver-fit")
    gates.hold("start")  # every trial waits before training until the test releases it
    d2 = start_driver(cfg, cluster, server, log2, *over, gates=gates)
    wait_for(lambda: len(gates.at("start")) == 2, 300, "the first two trials (max_concurrent) at their start", d2, log2)
    first = gates.at("start")[0]
    gates.release(first)  # alone in ASHA's rungs, it is never stopped: it trains all its epochs

    def one_trial_done():  # mid-sweep: one trial has all its epochs saved and Tune started the next; others wait
        saved = checkpointed(store.parent, "faults-b")
        return saved if (saved.get(first) == epochs and len(gates.at("start")) == 3
                         and any(store.glob("experiment_state-*.json"))) else None

    # with max_concurrent=2, a third trial starts only once Tune has ended the first (ASHA stops it at max_t)
    saved_at_kill = wait_for(one_trial_done, 300, "a finished trial while the others wait", d2, log2)
    d2.send_signal(signal.SIGKILL)
    d2.wait()
    assert "restarting from scratch" in log2.read_text()  # the first kill left nothing to resume

    summary = finish(start_driver(cfg, cluster, server, log3, *over), log3)
    parent, trials, every = runs_of(server, "faults-b")
    assert summary["n_trials"] == 4 and summary["resumed"] and summary["n_errored"] == 0
    assert summary["n_finished"] + summary["n_stopped_early"] + summary["n_diverged"] == 4
    assert len(trials) == 4 and len({t.data.tags["robust_sweep.trial_id"] for t in trials}) == 4  # no duplicates
    assert all(r.info.status != "RUNNING" for r in every)  # nothing left RUNNING, superseded attempt included
    assert parent.info.status == "FINISHED"
    c = tracking.client(server.uri)
    redone = points = expected = 0
    for t in trials:
        got = epochs_logged(server, t.info.run_id)
        done = int(t.data.tags["robust_sweep.epochs_done"])
        assert got == list(range(1, done + 1))
        points += len(got)
        expected += done
        resumes = [int(r.value) for r in c.get_metric_history(t.info.run_id, "resumed_from_epoch")]
        saved = saved_at_kill.get(t.data.tags["robust_sweep.trial_id"], 0)
        if saved == epochs:  # finished before the kill: not trained again
            assert all(r == epochs for r in resumes), resumes
        redone += sum(max(0, saved - r) for r in resumes)  # checkpointed epochs trained again
    study = optuna.load_study(study_name="faults-b", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [s.state for s in study.trials]
    S = optuna.trial.TrialState
    assert states.count(S.COMPLETE) == summary["n_finished"] and states.count(S.PRUNED) == summary["n_stopped_early"]
    assert S.RUNNING not in states  # a trial asked by a killed driver and never saved by Tune: FAIL, "orphaned"
    assert all("orphaned" in s.user_attrs or "diverged" in s.user_attrs for s in study.trials if s.state == S.FAIL)
    assert all(s.intermediate_values for s in study.trials if s.state == S.PRUNED)
    report(test="driver-kills", trials_planned=4, trials_accounted=len(trials), duplicates=len(trials) - 4,
           runs_left_running=0, epochs_redone=redone, trials_lost=4 - summary["n_trials"],
           orphaned_runs=len([r for r in every if "robust_sweep.orphan_of" in r.data.tags]),
           points_expected=expected, points_stored=points, resumed_from_tune_state=summary["resumed"])


def test_node_local_storage_on_a_cluster_is_an_input_error(cluster, server, tmp_path, capsys, monkeypatch):
    """The cluster here can gain nodes at any time: a plain storage path is refused before anything starts."""
    import ray

    from sweeps.run import main

    cfg = sweep_file(tmp_path, "faults-local", search_space={"train.lr": {"loguniform": [0.01, 0.1]}})
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    try:
        assert main([str(cfg), "--set", f"storage={tmp_path / 'ray'}", "--set", f"tracking.uri={server.uri}"]) == 2
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert err.startswith("error: storage: ") and "node-local path" in err and "file:///" in err
    assert not (tmp_path / "ray").exists()


def test_crafted_model_served_by_mlflow_is_refused(server, tmp_path, capsys, monkeypatch):
    """``robust-sweep eval RUN_ID`` downloads model/model.pt from the server: a pickle that would run a command is
    refused with an error naming the file, and the command does not run."""
    import torch

    from robust_core.cli import main

    marker = tmp_path / "pwned"

    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "model").mkdir()
    torch.save({"config": {}, "model": RunsCommand(), "aux": {}}, tmp_path / "model" / "model.pt")
    exp = tracking.prepare_store(server.uri, EXPERIMENT)
    run = tracking.start_run(server.uri, exp, "crafted")
    tracking.log_artifact_file(server.uri, run, tmp_path / "model" / "model.pt", "model")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    assert main(["eval", run, "--tracking-uri", server.uri, "--suite", "whitebox", "--n-examples", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.pt: refused to load this model file" in err
    assert not marker.exists()


def test_ray_job_submit_to_a_token_auth_head_on_loopback(tmp_path):
    """The README's cluster path: ``ray start --head`` on 127.0.0.1 with token auth, ``ray job submit`` with the
    interpreter named, a tiny sweep on shared (file://) storage: the job SUCCEEDS."""
    ray_bin = str(Path(PY).with_name("ray"))
    tmp = Path(tempfile.mkdtemp(prefix="rs-head-"))  # short: Ray's socket paths live below it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": str(tmp)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent = _free_port(), _free_port(), _free_port()  # other Ray instances may hold the defaults
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                             str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--dashboard-agent-listen-port", str(agent), "--include-dashboard", "true",
                             "--num-cpus", "2", "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"],
                            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        cfg = sweep_file(tmp_path, "faults-job", num_trials=1, max_concurrent=1, scheduler={"type": "none"},
                         search_space={"train.lr": {"loguniform": [0.01, 0.1]}},
                         tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "job"})
        wait_for(lambda: _answers(dash), 180, "the head's job server")
        submit = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--", PY, "sweeps/run.py", str(cfg), "--quiet", "--set", "base.train.epochs=1"]
        for _ in range(20):  # the head answers before its node's job agent has started
            r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in r.stderr:
                break
            time.sleep(3)
        assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
        runs = tracking.find_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "job", "tags.`robust_sweep.kind` = 'trial'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    finally:
        _stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
            return True
    except OSError as e:  # 401 without a token still means the server is up
        return getattr(e, "code", None) == 401


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop ``ray start --block`` and every process of the head: its own process group, TERM then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived the TERM
    except ProcessLookupError:
        pass
    proc.wait(10)

"""MLflow tracking: one parent run per sweep, one child run per trial, metrics with ``log_batch``.

``mlflow`` is imported inside functions only, so ``robust_core`` imports without it. Every call takes the tracking
URI explicitly: Tune runs each trial in its own working directory, where MLflow's default URI (a SQLite file in the
current directory) would be a throwaway database. With SQLite, the driver creates the schema and the experiment
(``prepare_store``) before any trial starts: a fresh database opened by several processes at once fails on
schema-migration races, a pre-created one takes concurrent writers. For clusters use ``mlflow server``
(``start_local_server`` starts one on 127.0.0.1 for a single machine).
"""
from __future__ import annotations

import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from robust_core.reporting import Reporter

TAG = "robust_sweep"  # prefix of this project's tags
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def require_store(uri: str, what: str = "--tracking-uri") -> None:
    """Reading from a ``sqlite:///`` store that does not exist is an input error (``FileNotFoundError``, exit 2):
    MLflow would create an empty database there and then fail on the missing run."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise FileNotFoundError(f"{what}: no MLflow store at {db} (from {uri}); give the path of an existing "
                                "mlflow.db, e.g. the one `robust-sweep demo` prints at the end")


def config_of_run(uri: str, run_id: str) -> dict[str, Any]:
    """The resolved run config a trial or retrain run logged (artifact ``config.yaml``), as a plain dict."""
    import tempfile

    import yaml

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client(uri).download_artifacts(run_id, "config.yaml", tmp)
        except MlflowException as e:  # no such run, or one without a config
            raise LookupError(f"run {run_id!r}: no config.yaml of an MLflow run with this id at {uri} "
                              f"({str(e).splitlines()[0][:200]})") from None
        return yaml.safe_load(Path(path).read_text())


def prepare_store(uri: str, experiment: str) -> str:
    """Create the database schema (by opening the store) and the experiment; returns the experiment id.

    For SQLite stores artifacts go to ``<db folder>/artifacts/<experiment id>`` (absolute, so trials running in
    other working directories write to the same place).
    """
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {experiment!r} at {uri} is deleted; restore it "
                               f"(mlflow experiments restore) or choose another tracking.experiment")
        return exp.experiment_id
    location = (db.parent.resolve() / "artifacts" / experiment).as_uri() if db is not None else None
    return c.create_experiment(experiment, artifact_location=location)


def experiment_id(uri: str, experiment: str) -> str:
    exp = client(uri).get_experiment_by_name(experiment)
    if exp is None:
        raise KeyError(f"no MLflow experiment {experiment!r} at {uri}")
    return exp.experiment_id


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list:
    """All runs of ``experiment`` (name or id) matching an MLflow filter string, e.g.
    ``"tags.robust_sweep.kind = 'trial' and tags.robust_sweep.sweep = 'demo-vat'"``; oldest first."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else experiment
    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=filter_string, max_results=1000, page_token=token,
                             order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


def start_run(uri: str, experiment_id: str, name: str, tags: Mapping[str, str] | None = None,
              parent_run_id: str | None = None) -> str:
    """Create a run (status RUNNING) and return its id; ``parent_run_id`` nests it under a parent."""
    t = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        t["mlflow.parentRunId"] = parent_run_id
    return client(uri).create_run(experiment_id, run_name=name, tags=t).info.run_id


def find_or_start_run(uri: str, experiment_id: str, name: str, tags: Mapping[str, str], key_tags: list[str],
                      parent_run_id: str | None = None) -> tuple[str, bool]:
    """The run whose ``key_tags`` equal ``tags`` (reused after a restart, so no duplicates), else a new one.
    Returns (run_id, created).

    MLflow's HTTP client retries a create_run that timed out on a slow server although the server had processed it:
    the same run twice (same tags, same start time; seen in the fault tests under load), the second one possibly
    visible only later. Whenever several runs share the key, the earliest is kept (ties by id, so every caller keeps
    the same one) and the others are deleted: a resumed trial logs its checkpoint's history into the kept run again,
    so nothing logged to a deleted twin is lost."""
    filt = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in key_tags)

    def search() -> list:
        return client(uri).search_runs([experiment_id], filter_string=filt, max_results=100)

    found = search()
    if found:
        return _one_run(uri, found), False
    start_run(uri, experiment_id, name, tags, parent_run_id)
    return _one_run(uri, search()), True


def _one_run(uri: str, runs: list) -> str:
    keep = min(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    for r in runs:
        if r.info.run_id != keep.info.run_id:
            client(uri).delete_run(r.info.run_id)
    return keep.info.run_id


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100; values longer than MLflow's limit are cut. Re-logging an equal value is fine."""
    from mlflow.entities import Param

    c = client(uri)
    existing = c.get_run(run_id).data.params
    items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def _param_str(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s[:MAX_PARAM_LEN]


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
    """Numeric entries of ``metrics`` in one ``log_batch`` call (non-numeric and non-finite values are skipped)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    ms = [Metric(k, v, ts, step) for k, v in numeric(metrics).items()]
    if ms:
        client(uri).log_batch(run_id, metrics=ms)


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact_text(uri: str, run_id: str, relpath: str, text: str) -> None:
    client(uri).log_text(run_id, text, relpath)


def log_artifact_file(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


NOTE_TAG = "mlflow.note.content"  # the MLflow UI shows this tag as the run's description (Markdown)


def set_note(uri: str, run_id: str, markdown: str) -> None:
    """The run's note in the MLflow UI (Markdown; replaces an earlier one)."""
    client(uri).set_tag(run_id, NOTE_TAG, markdown)


def run_link(experiment_id: str, run_id: str, text: str | None = None) -> str:
    """A Markdown link to a run that works inside the MLflow UI (its pages are addressed after ``#``)."""
    return f"[{text or run_id}](#/experiments/{experiment_id}/runs/{run_id})"


def metric_key(*parts: str) -> str:
    """An MLflow metric name from free text (table, row and column labels): characters MLflow refuses become ``_``."""
    import re

    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]+", "_", p).strip(" _") or "_" for p in parts)


def set_status(uri: str, run_id: str, status: str) -> None:
    """FINISHED / FAILED / KILLED end the run; RUNNING reopens it (a resumed sweep)."""
    c = client(uri)
    if status == "RUNNING":
        c.update_run(run_id, status="RUNNING")
    else:
        c.set_terminated(run_id, status=status)


DEFAULT_MAX_OUTAGE_S = 1800.0
"""Seconds a trial keeps training while MLflow is unreachable before it errors; the environment variable
``ROBUST_SWEEP_MLFLOW_MAX_OUTAGE_S`` (read by the sweep driver) changes it. MLflow's own client retries one request for
about 4 minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); the reporter retries on top of that."""


def default_max_outage_s() -> float:
    v = os.environ.get("ROBUST_SWEEP_MLFLOW_MAX_OUTAGE_S")
    return float(v) if v else DEFAULT_MAX_OUTAGE_S


class TrackingUnavailable(RuntimeError):
    """MLflow stayed unreachable for longer than the reporter's budget. An infrastructure error: the trial is retried
    from its checkpoint, whose history is logged when it resumes, so no metric point is lost."""


def _transient(e: BaseException) -> bool:
    """An outage (connection refused, timeout, 5xx, 429, a locked SQLite file) rather than a request MLflow rejects."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(e, OSError)


def _epoch_batch(metrics: Mapping[str, Any], best: float) -> tuple[dict[str, float], float]:
    """The numeric values logged for one epoch, with the running ``best_val_acc``; returns (values, new best)."""
    values = numeric(metrics)
    if "val_acc" in values:
        best = max(best, values["val_acc"])
        values["best_val_acc"] = best
    return values, best


def logged_epochs(uri: str, run_id: str) -> tuple[set[int], float]:
    """(epochs already in the run, best val_acc among them): ``val_acc`` is in every epoch's batch."""
    hist = client(uri).get_metric_history(run_id, "val_acc")
    return {m.step for m in hist}, max([m.value for m in hist], default=-math.inf)


def _epoch_ts(start_ms: int, elapsed_s: float | None, wall_ms: int) -> int:
    """An epoch's MLflow timestamp: the run's start + the training time up to the end of that epoch (the sum of
    ``epoch_time_s``, restored with the checkpoint). Every writer of an epoch (the trial, a resumed attempt, the
    driver) computes the same value, and MLflow stores an identical point once, so no writer can duplicate one.
    Without ``epoch_time_s`` in the metrics: the wall clock when the epoch was reported."""
    return start_ms + round(1000 * elapsed_s) if elapsed_s is not None else wall_ms


def _elapsed(history: list[Mapping[str, Any]]) -> list[float | None]:
    out, total = [], 0.0
    for h in history:
        total += float(h.get("epoch_time_s", 0.0))
        out.append(total if "epoch_time_s" in h else None)
    return out


def log_missing_epochs(uri: str, run_id: str, history: list[Mapping[str, Any]], step_key: str = "epoch") -> int:
    """Log the epochs of ``history`` (a checkpoint's) that the run lacks, as the reporter would have; returns how many.
    The sweep driver uses it for trials stopped before their reporter had sent everything."""
    from mlflow.entities import Metric, RunTag

    c = client(uri)
    start_ms = c.get_run(run_id).info.start_time
    done, best = logged_epochs(uri, run_id)
    n = 0
    for h, elapsed in zip(history, _elapsed(history)):
        step = int(h.get(step_key, 0))
        values, best = _epoch_batch(h, best)
        if step in done:
            continue
        ts = _epoch_ts(start_ms, elapsed, _now_ms())
        c.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()],
                    tags=[RunTag(f"{TAG}.epochs_done", str(step))])
        n += 1
    return n


class MLflowReporter(Reporter):
    """Per-epoch metrics of one run (``step`` = epoch) and, at close, the final metrics and status FINISHED.

    Off the training's critical path: ``report`` queues the epoch and returns; a background thread sends the queue
    in order, one ``log_batch`` per epoch (with the running ``best_val_acc`` and the tag ``robust_sweep.epochs_done``,
    so a run killed between epochs is complete up to its last epoch). Every call is retried until it succeeds while
    MLflow is unreachable (connection errors, 5xx): at least once, and without duplicates, because an epoch's points
    always carry the same timestamp (``_epoch_ts``; MLflow stores an identical point once) and epochs already in the
    run are skipped. A trial resumed from its checkpoint logs its restored history through ``resumed``, so points
    still queued when an earlier attempt died are not lost. An outage longer than ``max_outage_s`` makes the next
    ``report`` or ``close`` raise ``TrackingUnavailable``. ``close`` (and ``flush``) wait until the queue is sent.

    ``run_id``: an existing run; or ``open_run``: a function returning the run id, called by the background thread
    (so even creating the run does not wait for the server). Non-numeric final values (fingerprints) become tags
    ``robust_sweep.<key>``. Every attempt after the first adds a point to the metric ``resumed_from_epoch`` (step =
    value = the epoch of the checkpoint it continued from; 0 when it had to start over).
    """

    def __init__(self, uri: str, run_id: str | None = None, step_key: str = "epoch", *,
                 open_run: Callable[[], str] | None = None, max_outage_s: float | None = None) -> None:
        if (run_id is None) == (open_run is None):
            raise ValueError("give exactly one of run_id and open_run")
        self.uri, self.run_id, self.step_key = uri, run_id, step_key
        self.max_outage_s = default_max_outage_s() if max_outage_s is None else max_outage_s
        self._open_run = open_run
        self._epoch_keys: set[str] = {"best_val_acc"}
        self._logged: set[int] | None = None
        self._best = -math.inf
        self._start_ms = 0  # the run's start time (read with the logged epochs)
        self._train_s = 0.0  # training time up to the last epoch seen (sum of epoch_time_s): timestamps
        self._first = True  # the first epoch to send: tells a resumed attempt from one that started over
        self._ended = False  # the run's end is queued
        self.send_s = 0.0  # wall seconds the sender thread spent in MLflow calls (off the training's path)
        self.open_s = 0.0  # of which creating the run (``open_run``)
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mlflow-reporter", daemon=True)
        self._thread.start()
        if open_run is not None:
            self._queue.put(("open", None))

    # ------------------------------------------------------------------ the trial side (never blocks on MLflow)
    def report(self, metrics, state):
        self._raise_if_failed()
        self._queue_epoch(metrics)

    def resumed(self, state):
        self._train_s = 0.0
        for h in state.get("history", []):
            self._queue_epoch(h, restored=True)
        epoch = int(state.get("epoch", 0))
        self._queue.put(("metrics", ({"resumed_from_epoch": float(epoch)}, epoch, _now_ms())))

    def _queue_epoch(self, metrics: Mapping[str, Any], restored: bool = False) -> None:
        self._epoch_keys |= set(metrics)
        elapsed = None
        if "epoch_time_s" in metrics:
            self._train_s += float(metrics["epoch_time_s"])
            elapsed = self._train_s
        self._queue.put(("epoch", (int(metrics.get(self.step_key, 0)), dict(metrics), _now_ms(), elapsed,
                                   restored)))

    def close(self, final):
        final = dict(final)
        epoch = int(final.get(self.step_key, 0))
        extra = {k: v for k, v in numeric(final).items() if k not in self._epoch_keys}
        tags = {f"{TAG}.{k}": v for k, v in final.items() if isinstance(v, str)}
        tags[f"{TAG}.epochs_done"] = epoch
        if any(k.startswith("timing.") for k in extra):
            extra.update({"timing.mlflow_send_s": self.send_s, "timing.mlflow_open_s": self.open_s})
        if extra:
            self._queue.put(("metrics", (extra, epoch, _now_ms())))
        self._ended = True
        self._queue.put(("end", (tags, "FINISHED")))
        self.flush()
        self._raise_if_failed()

    def fail(self, reason: str, details: str = "", tags: Mapping[str, Any] | None = None,
             status: str = "FAILED") -> None:
        """End the run ``status``: tag ``robust_sweep.error`` = ``reason`` (one readable line), ``details`` (e.g. the
        traceback) as the artifact ``error.txt``; waits until sent."""
        t = {f"{TAG}.error": reason[:5000], **(tags or {})}
        if details:
            self._queue.put(("text", ("error.txt", details)))
        self._ended = True
        self._queue.put(("end", (t, status)))
        self.flush()
        self._raise_if_failed()

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Queue extra metrics at ``step`` (e.g. a stopped trial's ``timing.*``); dropped once the run's end is queued."""
        if not self._ended and values:
            self._queue.put(("metrics", (dict(values), step, _now_ms())))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent (or the sender gave up); True when the queue drained."""
        done = threading.Event()
        self._queue.put(("flush", done))
        deadline = time.monotonic() + (self.max_outage_s + 600 if timeout is None else timeout)
        while not done.wait(0.2):
            if not self._thread.is_alive():  # ended the run: nothing is left to send
                return True
            if time.monotonic() > deadline:
                return False
        return True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ the sender thread
    def _loop(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "flush":
                payload.set()
                continue
            if self._error is None:  # after giving up, items are dropped: they stay in the trial's checkpoint
                t0 = time.perf_counter()
                try:
                    self._retrying(kind, payload)
                except BaseException as e:  # noqa: BLE001 - handed to the trial on its next report/close
                    self._error = e
                self.send_s += time.perf_counter() - t0
                if kind == "open":  # creating the run, with the first MLflow import and store connection
                    self.open_s = time.perf_counter() - t0
            if kind == "end":
                return

    RETRY_DELAY_S = 1.0  # first pause after a failed call; doubles up to 10 s (a server back is seen within 10 s)

    def _retrying(self, kind: str, payload: Any) -> None:
        first_failure = None
        delay = self.RETRY_DELAY_S
        while True:
            try:
                return self._send(kind, payload)
            except Exception as e:
                if not _transient(e):
                    raise
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure > self.max_outage_s:
                    raise TrackingUnavailable(
                        f"MLflow at {self.uri} unreachable for more than {self.max_outage_s:.0f} s "
                        f"(ROBUST_SWEEP_MLFLOW_MAX_OUTAGE_S); the epochs not logged are in the trial's checkpoint "
                        f"and are logged when it resumes. Last error: {str(e).splitlines()[0][:300]}") from e
                time.sleep(delay)
                delay = min(10.0, delay * 2)

    def _send(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric, RunTag

        c = client(self.uri)
        if kind == "open":
            self.run_id = self._open_run()
            return
        if self._logged is None:
            self._start_ms = c.get_run(self.run_id).info.start_time
            self._logged, self._best = logged_epochs(self.uri, self.run_id)
        if kind == "epoch":
            step, metrics, wall_ms, elapsed, restored = payload
            if self._first and not restored and step in self._logged:  # an attempt that started over: say so
                c.log_batch(self.run_id, metrics=[Metric("resumed_from_epoch", float(step - 1), wall_ms, step - 1)])
            self._first = False
            if step in self._logged:
                return
            ts = _epoch_ts(self._start_ms, elapsed, wall_ms)
            values, best = _epoch_batch(metrics, self._best)
            c.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()],
                        tags=[RunTag(f"{TAG}.epochs_done", str(step))])
            self._logged.add(step)
            self._best = best
        elif kind == "metrics":
            values, step, ts = payload
            c.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])
        elif kind == "text":
            c.log_text(self.run_id, payload[1], payload[0])
        elif kind == "end":
            tags, status = payload
            c.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            c.set_terminated(self.run_id, status=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_server(db_path: str | Path, artifacts_dir: str | Path, port: int | None = None,
                       timeout_s: float = 90.0) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` on 127.0.0.1 with a SQLite backend; returns (http URI, process).

    The schema is created here first (one process), then the server is started and polled on ``/health`` until it
    answers. Raises ``RuntimeError`` (with the server's output) when it exits early or does not answer within
    ``timeout_s``. Stop it with ``stop_local_server(proc)``.
    """
    db = Path(db_path).resolve()
    art = Path(artifacts_dir).resolve()
    art.mkdir(parents=True, exist_ok=True)
    backend = f"sqlite:///{db}"
    _create_schema(backend)
    port = port or _free_port()
    log = open(art.parent / f"mlflow-server-{port}.log", "wb")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(art), "--workers", "1"]
    # its own process group: `mlflow server` runs uvicorn as a child process, and stopping must reach both
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            out = Path(log.name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before answering:\n{out}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return uri, proc
        except OSError:
            time.sleep(0.5)
    stop_local_server(proc)
    log.close()
    out = Path(log.name).read_text(errors="replace")[-3000:]
    raise RuntimeError(f"mlflow server on {uri} did not answer /health within {timeout_s:.0f} s:\n{out}")


def stop_local_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Stop a server started by ``start_local_server`` and the processes it started (SIGTERM, then SIGKILL)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _create_schema(uri: str) -> None:
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client(uri).search_experiments(max_results=1)

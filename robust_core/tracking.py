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
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

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
    Returns (run_id, created)."""
    filt = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in key_tags)
    found = client(uri).search_runs([experiment_id], filter_string=filt, max_results=2,
                                    order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id, False
    return start_run(uri, experiment_id, name, tags, parent_run_id), True


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


class MLflowReporter(Reporter):
    """Per-epoch metrics of one run (``step`` = epoch) and, at close, the final metrics and status FINISHED.

    Each epoch also logs the running ``best_val_acc`` and the tag ``robust_sweep.epochs_done`` in the same
    ``log_batch`` call, so a run killed between epochs (a trial stopped by ASHA) is complete up to its last epoch.
    Epochs already in the run's history are not logged again: a trial resumed from its checkpoint repeats no step.
    Non-numeric final values (fingerprints) become tags ``robust_sweep.<key>``.
    """

    def __init__(self, uri: str, run_id: str, step_key: str = "epoch") -> None:
        self.uri, self.run_id, self.step_key = uri, run_id, step_key
        self.client = client(uri)
        self._logged_steps: set[int] | None = None
        self._best = -math.inf
        self._epoch_keys: set[str] = {"best_val_acc"}

    def _load_history(self) -> set[int]:
        if self._logged_steps is None:
            hist = self.client.get_metric_history(self.run_id, "val_acc")
            self._logged_steps = {m.step for m in hist}
            self._best = max([m.value for m in hist], default=-math.inf)
        return self._logged_steps

    def report(self, metrics, state):
        from mlflow.entities import Metric, RunTag

        step = int(metrics.get(self.step_key, 0))
        self._epoch_keys |= set(metrics)
        if step in self._load_history():
            return
        values = numeric(metrics)
        if "val_acc" in values:
            self._best = max(self._best, values["val_acc"])
            values["best_val_acc"] = self._best
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()],
                              tags=[RunTag(f"{TAG}.epochs_done", str(step))])
        self._logged_steps.add(step)

    def close(self, final):
        final = dict(final)
        epoch = int(final.get(self.step_key, 0))
        extra = {k: v for k, v in numeric(final).items() if k not in self._epoch_keys}
        if extra:
            log_metrics(self.uri, self.run_id, extra, step=epoch)
        tags = {f"{TAG}.{k}": v for k, v in final.items() if isinstance(v, str)}
        tags[f"{TAG}.epochs_done"] = epoch
        set_tags(self.uri, self.run_id, tags)
        self.client.set_terminated(self.run_id, status="FINISHED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_server(db_path: str | Path, artifacts_dir: str | Path, port: int | None = None,
                       timeout_s: float = 90.0) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` on 127.0.0.1 with a SQLite backend; returns (http URI, process).

    The schema is created here first (one process), then the server is started and polled on ``/health`` until it
    answers. The caller stops it with ``proc.terminate()``. Raises ``RuntimeError`` (with the server's output) when
    it exits early or does not answer within ``timeout_s``.
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
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
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
    proc.terminate()
    proc.wait(10)
    log.close()
    out = Path(log.name).read_text(errors="replace")[-3000:]
    raise RuntimeError(f"mlflow server on {uri} did not answer /health within {timeout_s:.0f} s:\n{out}")


def _create_schema(uri: str) -> None:
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client(uri).search_experiments(max_results=1)

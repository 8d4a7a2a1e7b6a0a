"""Run a validated sweep with Ray Tune: Optuna TPE proposes, ASHA stops, MLflow records.

One trial = ``robust_core.trial.run_trial`` with a ``TuneReporter`` (per-epoch ``tune.report`` + checkpoint, resume
from Tune's checkpoint) and an ``MLflowReporter`` (the trial's child run). The driver owns everything that must
exist once per sweep: the MLflow schema, experiment and parent run, the Optuna study (named after the sweep), the
final status of every child run (trials stopped by ASHA are killed mid-call, so their runs are closed here).

Traps designed around (see ``shared/SWEEP-FACTS.md``): ASHA-stopped trials are told to Optuna as PRUNED, not
COMPLETE; a ``ConcurrencyLimiter`` always wraps the searcher; ``max_t`` is ``base.train.epochs``; a local storage
path is refused on a cluster that has or may get several nodes; MLflow URIs and paths are absolute; no
``MLflowLoggerCallback``.

Failures: a trial whose loss diverges (``TrainingDiverged``) is a finding about its hyperparameters, not a crash: it
ends at once (no retries, not re-run on resume), is told to Optuna as FAIL and counted apart; the sweep stays usable
for selection. Crashes and lost nodes are retried from the last epoch checkpoint (``max_failures``). MLflow is off
the trials' critical path (``tracking.MLflowReporter`` sends in the background; the driver logs any epoch a stopped
trial had not sent yet from its checkpoint). A sweep resumes only from a complete Tune state; a driver killed before
Tune saved any trial restarts the same sweep cleanly; anything else half-written stops with ``InputError``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from robust_core import tracking
from robust_core.config import dump_yaml
from robust_core.errors import BadFileError, InputError, TrainingDiverged
from robust_core.reporting import CHECKPOINT_FILE, Many, Reporter, load_state, save_state_atomic
from sweeps.best import Scored, best_trial
from sweeps.console import make_callback, quiet_libraries, trial_label, verbose
from sweeps.spec import SweepConfig

TAG = tracking.TAG
TIME_ATTR = "epoch"  # ASHA's clock: epochs, so decisions do not depend on hardware speed


RAY_CONNECT_TIMEOUT_S = 20.0  # how long RAY_ADDRESS may take to accept a connection before it is an input error

TEST_GATES_ENV = "ROBUST_SWEEP_TEST_GATES"  # test-only fault injection (``fault_gate``); unset in real use


def fault_gate(folder: str | None, point: str, who: str) -> None:
    """Test-only fault-injection hook, so that ``tests/test_faults.py`` can kill or cut off a driver or trial at a
    known point whatever the machine's speed (no race between training and the test's poller). A no-op unless the
    environment variable ``ROBUST_SWEEP_TEST_GATES`` names a folder when the driver starts (it travels to the trials
    in the trainable's closure). Then, at each point, the process writes ``at.<point>.<who>`` there and waits while
    ``hold.<point>`` exists and ``release.<who>`` does not: the test creates the hold files before the sweep and
    removes them (or releases one trial) when it is done. Points: ``driver-fit`` (Tune wrote ``tuner.pkl``, before
    ``fit``; who = the driver's pid), ``start`` (a trial about to train or resume), ``epoch-<n>`` (epoch n's checkpoint
    is on storage and reported), ``end`` (the trial function about to return); who = the Tune trial id."""
    if not folder:
        return
    d = Path(folder)
    (d / f"at.{point}.{who}").touch()
    while (d / f"hold.{point}").exists() and not (d / f"release.{who}").exists():
        time.sleep(0.1)


class TuneReporter(Reporter):
    """Per-epoch ``tune.report`` with a checkpoint; resumes from the trial's newest complete checkpoint after a
    failure. ``last``: the last epoch's metrics (reported or restored).

    Tune hands back the checkpoint it had registered, which can be behind what the trial saved: Tune registers a
    checkpoint only after the driver processed its report (a node lost in between: the first epoch's checkpoint may
    not be registered at all), and a resumed sweep knows the checkpoints of its last saved experiment state (a driver
    killed after more epochs). The trial's storage folder still holds the newer ``checkpoint_*``: restoring from the
    one with the highest epoch that loads means no completed epoch is trained again (a half-written one does not load
    and is skipped)."""

    def __init__(self, gates: str | None = None) -> None:
        self.last: dict[str, Any] = {}
        self.gates = gates  # ``fault_gate``'s folder (tests only)

    def restore(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        best = None
        if ckpt is not None:
            with ckpt.as_directory() as d:
                best = load_state(Path(d) / CHECKPOINT_FILE)
        for other in _trial_checkpoints(ckpt):
            try:
                with other.as_directory() as d:
                    state = load_state(Path(d) / CHECKPOINT_FILE)
            except (BadFileError, OSError):
                continue
            if best is None or int(state.get("epoch", 0)) > int(best.get("epoch", 0)):
                best = state
        return best

    def resumed(self, state):
        self.last = dict(state["history"][-1]) if state.get("history") else {}

    def report(self, metrics, state):
        from ray import tune

        self.last = dict(metrics)
        with tempfile.TemporaryDirectory(prefix="robust-sweep-ckpt-") as d:
            save_state_atomic(state(), Path(d) / CHECKPOINT_FILE)
            # persisted to the experiment storage before report returns, so the folder can go afterwards
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(d))
        if self.gates:
            fault_gate(self.gates, f"epoch-{metrics.get('epoch')}", tune.get_context().get_trial_id())


def _trial_checkpoints(registered) -> list:
    """The other ``checkpoint_*`` folders of this trial on its storage (beside the registered checkpoint, or in the
    trial folder Tune's session knows when none is registered)."""
    import pyarrow.fs
    from ray import tune

    if registered is not None:
        fs, folder = registered.filesystem, registered.path.rstrip("/").rsplit("/", 1)[0]
    else:
        try:
            from ray.train._internal.session import get_session

            storage = get_session().storage
            fs, folder = storage.storage_filesystem, storage.trial_fs_path
        except (AttributeError, RuntimeError):  # Ray's internals moved: resume from what Tune handed back
            return []
    own = registered.path.rstrip("/") if registered is not None else None
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    return [tune.Checkpoint(i.path, filesystem=fs) for i in infos
            if i.type == pyarrow.fs.FileType.Directory and re.fullmatch(r"checkpoint_\d+", i.base_name)
            and i.path.rstrip("/") != own]


def _pruned_aware_searcher_cls():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class PrunedAwareOptunaSearch(OptunaSearch):
        """``OptunaSearch`` that tells Optuna what happened to each trial:

        - COMPLETE for trials that reached ``max_t``;
        - PRUNED for trials ASHA stopped earlier (Tune reports them as complete, and plain ``OptunaSearch`` would feed
          TPE their early scores as final ones), with their last value recorded as the intermediate value at their
          last epoch: Optuna 5's TPE ranks PRUNED trials by (furthest step, value at it) when it splits good from bad
          (``optuna/samplers/_tpe/sampler.py`` ``_get_pruned_trial_score``), and ranks one without intermediate values
          last. Tune never calls ``on_trial_result`` for the result that made ASHA stop a trial, so a trial stopped at
          its first report would otherwise reach Optuna with no value at all;
        - FAIL for errors and for diverged trials (``diverged`` in the result; their last reported value stays an
          intermediate value, the reason a user attribute ``diverged``).

        Intermediate values are keyed by epoch (ASHA's clock), not Tune's ``training_iteration``, so a trial resumed
        from its checkpoint reports the same steps.
        """

        def __init__(self, *args, max_t: int, time_attr: str = TIME_ATTR, **kwargs):
            super().__init__(*args, **kwargs)
            self._max_t, self._time_attr = max_t, time_attr

        def _record(self, trial_id: str, result: dict | None) -> None:
            if not result or result.get("diverged") or trial_id not in self._ot_trials:
                return
            value, step = result.get(self.metric), result.get(self._time_attr)
            if value is None or step is None or not math.isfinite(value):  # a sparse metric (val_robust_acc) is absent from some epochs
                return
            with warnings.catch_warnings():  # a step already reported (a resumed trial) is ignored by Optuna
                warnings.simplefilter("ignore")
                self._ot_trials[trial_id].report(float(value), int(step))

        def on_trial_result(self, trial_id: str, result: dict):
            if trial_id not in self._completed_trials:
                self._record(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return super().on_trial_complete(trial_id, result, error)
            t = result.get(self._time_attr) if result else None
            diverged = bool(result and result.get("diverged"))
            if error or diverged:
                state = TrialState.FAIL
                if diverged:
                    self._ot_trials[trial_id].set_user_attr("diverged", str(result.get("failure", "")))
            elif t is not None and t < self._max_t:
                state = TrialState.PRUNED
                self._record(trial_id, result)  # the result that made ASHA stop it
            else:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
            self._completed_trials.add(trial_id)

        @property
        def study(self):
            return self._ot_study

    return PrunedAwareOptunaSearch


def make_searcher(cfg: SweepConfig):
    """Seeded TPE over ``cfg.search_space`` (study name = sweep name), ASHA-stopped trials PRUNED, concurrency-limited."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    if not verbose():  # "A new study created ..." and per-trial INFO lines: the console callback says what matters
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(cfg.optuna_storage) if cfg.optuna_storage else None
    searcher = _pruned_aware_searcher_cls()(
        space={k: d.to_optuna() for k, d in cfg.search_space.items()},
        metric=cfg.metric, mode=cfg.mode, sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        study_name=cfg.name, storage=storage, max_t=cfg.max_t,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent)


def make_scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, metric=cfg.metric, mode=cfg.mode, max_t=cfg.max_t,
                         grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor)


def trial_tags(cfg: SweepConfig, trial_id: str) -> dict[str, str]:
    return {f"{TAG}.kind": "trial", f"{TAG}.sweep": cfg.name, f"{TAG}.trial_id": trial_id,
            f"{TAG}.method": cfg.base.method.name, f"{TAG}.dataset": cfg.base.data.name}


def make_trainable(cfg: SweepConfig, uri: str, experiment_id: str, parent_run_id: str,
                   driver_node_id: str | None = None) -> Callable[[dict], None]:
    """The Tune function trainable; everything it needs travels in the closure (no working dir is shipped).

    A divergence ends the trial at once as a result ``{"diverged": 1, <metric>: last value, "failure": reason}``
    (no ``epoch``, so ASHA ignores it), not as an error, so Tune does not retry it and a resumed sweep does not re-run
    it; its MLflow run ends FAILED with the reason as ``robust_sweep.error`` and the traceback as ``error.txt``."""
    outage_s = tracking.default_max_outage_s()  # read in the driver: its environment is the user's
    local_storage = "://" not in cfg.storage
    gates = os.environ.get(TEST_GATES_ENV)

    def robust_sweep_trial(config: dict[str, Any]) -> None:
        clock = {"t0": time.perf_counter(), "entry_at": time.time()}  # timing.* metrics (benchmarks/laptop_breakdown.py)
        run_cfg = cfg.trial_config(config)  # flat Tune dict -> typed RunConfig, first thing
        import ray
        from ray import tune

        from robust_core.trial import run_trial, timing_metrics

        node = ray.get_runtime_context().get_node_id()
        if local_storage and driver_node_id is not None and node != driver_node_id:
            raise InputError(_storage_message(cfg, "this trial runs on another node than the driver"))
        trial_id = tune.get_context().get_trial_id()

        def open_run() -> str:  # called by the reporter's background thread, retried while MLflow is down
            run_id, created = tracking.find_or_start_run(  # named by its hyperparameters; the Ray id is a tag
                uri, experiment_id, trial_label(cfg.base.method.name, _sampled(cfg, config)), trial_tags(cfg, trial_id),
                key_tags=[f"{TAG}.sweep", f"{TAG}.trial_id"], parent_run_id=parent_run_id)
            # idempotent, so a call cut off by an outage can simply be repeated: params already there are skipped
            tracking.log_params(uri, run_id, run_cfg.flat())
            tracking.log_artifact_text(uri, run_id, "config.yaml", dump_yaml(run_cfg))
            if not created:  # a retry after a failure or a driver restart: same run, history continues
                tracking.set_status(uri, run_id, "RUNNING")
            return run_id

        mlflow = tracking.MLflowReporter(uri, open_run=open_run, max_outage_s=outage_s)
        tune_reporter = TuneReporter(gates)

        def timing() -> dict[str, float]:  # what a trial that never closed its run (stopped, diverged) logs at the end
            return {**timing_metrics(clock), "timing.mlflow_send_s": mlflow.send_s,
                    "timing.mlflow_open_s": mlflow.open_s}

        fault_gate(gates, "start", trial_id)
        try:
            # MLflow first: it only queues, and a trial ASHA stops is ended inside tune.report
            run_trial(run_cfg, Many(mlflow, tune_reporter), timing=clock)
        except TrainingDiverged as e:
            reason = str(e).splitlines()[0]
            mlflow.metrics(timing(), e.epoch or 0)
            mlflow.fail(reason, traceback.format_exc(), {f"{TAG}.failure": "diverged"})
            tune.report({"diverged": 1, "failure": reason, "diverged_epoch": e.epoch or 0,
                         cfg.metric: tune_reporter.last.get(cfg.metric, math.nan)})
        finally:  # also when ASHA stops the trial: what is still queued goes out (else the driver logs it)
            # a trial stopped inside a report never closed its run: its timing goes with the last epoch
            mlflow.metrics(timing(), int(tune_reporter.last.get("epoch", 0)))
            mlflow.flush(timeout=30)
        fault_gate(gates, "end", trial_id)

    return robust_sweep_trial


@dataclass
class SweepSummary:
    name: str
    parent_run_id: str
    experiment_id: str
    storage_path: str  # the Ray experiment folder (or URI)
    n_trials: int
    n_finished: int  # reached max_t
    n_stopped_early: int  # stopped by ASHA
    n_errored: int  # crashed or lost beyond their retries
    best: dict[str, Any] = field(default_factory=dict)  # trial_id, run_id, metric, value, config
    resumed: bool = False
    n_diverged: int = 0  # non-finite loss: a finding about those hyperparameters, not an error

    def __str__(self) -> str:
        head = (f"sweep {self.name}{' (resumed)' if self.resumed else ''}: {self.n_trials} trials, "
                f"{self.n_finished} full, {self.n_stopped_early} stopped early, {self.n_diverged} diverged, "
                f"{self.n_errored} errored; MLflow parent run {self.parent_run_id}")
        if not self.best:
            return head + "; no trial finished"
        vals = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.best.get("sampled", {}).items())
        return (f"{head}\n  best {self.best['metric']}={self.best['value']:.4f}: trial {self.best['trial_id']} "
                f"(run {self.best['run_id']}) {vals}")


def _sampled(cfg: SweepConfig, config: dict | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k in cfg.search_space}


# ------------------------------------------------------------------------------------------- Ray and storage
def init_ray(cpus_per_task: float = 1.0) -> None:
    """Join the cluster in RAY_ADDRESS (or a running local one), else start a local instance sized to this machine
    (at least ``cpus_per_task`` CPUs). Shared by sweeps and the final pipeline. An unreachable RAY_ADDRESS is an
    ``InputError`` after ``RAY_CONNECT_TIMEOUT_S`` (``ray.init`` itself would retry forever)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    quiet_libraries()  # before the workers start: they inherit the environment
    address = os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "auto", "local"):
        check_ray_address(address)
    import ray

    kwargs: dict[str, Any] = {}
    if address is None and not Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists():
        # a fresh local instance: hide GPUs from trials that ask for none, size it to this machine
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(cpus_per_task))
    if not verbose():  # the trials' own output (checkpoint lines, MLflow links) stays in the worker logs
        kwargs.update(log_to_driver=False, logging_level=logging.ERROR)
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, **kwargs)


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail fast and clearly when nothing listens at RAY_ADDRESS.

    Ray replaces a loopback host (127.0.0.1, localhost) by this machine's network address when it connects, so a
    head started on loopback only (``ray start --head --node-ip-address 127.0.0.1``) is never found and
    ``ray.init`` retries forever. For a loopback address this sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray
    then keeps loopback addresses) when Ray is not imported yet, as in every entry point of this package."""
    if address.startswith(("http://", "https://")):
        raise InputError(f"RAY_ADDRESS={address} is a dashboard (job server) URL; a driver needs the head's HOST:PORT "
                         "(e.g. 10.0.0.5:6379), or submit with: ray job submit --address " + address)
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if m is None:
        raise InputError(f"RAY_ADDRESS={address!r} is not HOST:PORT (e.g. 10.0.0.5:6379); fix it, or unset "
                         "RAY_ADDRESS to run on this machine")
    host, port = m.group(1), int(m.group(2))
    if host in ("localhost", "::1") or host.startswith("127."):
        if "ray" not in sys.modules:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        elif os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            from ray._private.services import get_node_ip_address

            host = get_node_ip_address()  # where ray.init will actually connect
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise InputError(
            f"RAY_ADDRESS={address}: no Ray head answers at {host}:{port} within {timeout_s:.0f} s ({e}); start "
            f"the cluster (ray start --head --port {port}, or ray up), point RAY_ADDRESS at a running head, or "
            "unset RAY_ADDRESS to run on this machine") from None


def _storage_message(cfg: SweepConfig, why: str) -> str:
    return (f"storage: {cfg.storage!r} is a node-local path, but {why}: trial checkpoints written on other nodes "
            "would fail. Use storage every node reaches: file:///path on a filesystem mounted on every node, or an "
            "s3:// or gs:// URI (e.g. --set storage=file:///shared/ray)")


def check_storage(cfg: SweepConfig) -> None:
    """A node-local ``storage`` path only on a single-node instance this process started; a cluster it joined
    (RAY_ADDRESS, ``ray start``) may gain nodes later (autoscaling, ``ray start --address``), so it needs a URI."""
    if "://" in cfg.storage:
        return
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        raise InputError(_storage_message(cfg, f"the Ray cluster has {len(alive)} nodes"))
    if not getattr(ray._private.worker._global_node, "head", False):
        raise InputError(_storage_message(cfg, "this sweep joined an existing Ray cluster, to which nodes can be "
                                               "added at any time"))


# ------------------------------------------------------------------------------------------- Tune state
@dataclass(frozen=True)
class TuneState:
    """What ``storage/<name>`` holds: ``absent`` (no Tune run yet), ``started`` (Tune started but saved no
    experiment state: nothing to resume), ``resumable`` (a complete state), ``broken`` (a half-written state)."""

    kind: Literal["absent", "started", "resumable", "broken"]
    detail: str = ""


def inspect_experiment(path: str) -> TuneState:
    """Classify the Ray experiment at ``path`` (local path or URI). Tune itself (``Tuner.restore``) resumes from
    the newest ``experiment_state-<S>.json`` with ``search_gen_state-<S>.json`` and ``searcher-state-<S>.pkl`` of the
    same session ``S``, and when that fails it silently starts a new, smaller experiment; so resumable means exactly
    that set is there and the JSON parses."""
    import pyarrow.fs
    from ray.train._internal.storage import get_fs_and_path

    fs, root = get_fs_and_path(path)
    info = fs.get_file_info(root)
    if info.type == pyarrow.fs.FileType.NotFound:
        return TuneState("absent")
    names = {Path(f.path).name for f in fs.get_file_info(pyarrow.fs.FileSelector(root))}
    states = sorted(n for n in names if n.startswith("experiment_state-") and n.endswith(".json"))
    if not states:
        if "tuner.pkl" in names:
            return TuneState("started", "tuner.pkl but no experiment_state-*.json: the driver stopped before Tune "
                                        "saved any trial")
        return TuneState("absent")
    newest = states[-1]
    session = newest[len("experiment_state-"):-len(".json")]
    try:
        with fs.open_input_stream(f"{root}/{newest}") as f:
            json.loads(f.readall())
    except (ValueError, OSError) as e:
        return TuneState("broken", f"{newest} is unreadable ({type(e).__name__}); the driver was killed while "
                                   "writing it")
    missing = [n for n in ("tuner.pkl", f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl")
               if n not in names]
    if missing:
        return TuneState("broken", f"{newest} has no {', '.join(missing)} beside it; the driver was killed while "
                                   "saving")
    return TuneState("resumable")


def _move_aside(path: str) -> str:
    """Rename the experiment folder to ``<path>.incomplete-<time>`` (kept for inspection); returns the new name."""
    from ray.train._internal.storage import get_fs_and_path

    fs, root = get_fs_and_path(path)
    dest = f"{root}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.move(root, dest)
    return dest


def check_fresh_study(cfg: SweepConfig) -> None:
    """A new sweep must not silently continue an Optuna study of the same name (OptunaSearch would)."""
    if not cfg.optuna_storage:
        return
    import optuna

    if cfg.name in optuna.study.get_all_study_names(cfg.optuna_storage):
        raise InputError(
            f"Optuna study {cfg.name!r} already exists in {cfg.optuna_storage} but there is no Ray experiment to "
            f"resume at {cfg.experiment_path}; give the sweep a new name or delete the study "
            f"(optuna delete-study --study-name {cfg.name} --storage {cfg.optuna_storage})")


def provenance() -> dict[str, str]:
    """Git commit of the code (``unknown`` outside a checkout) and versions of the libraries that shape results."""
    import subprocess
    from importlib.metadata import version

    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    out = {f"{TAG}.git_commit": r.stdout.strip() if r.returncode == 0 else "unknown"}
    for pkg in ("torch", "ray", "optuna", "mlflow", "robust-sweep"):
        out[f"{TAG}.version.{pkg}"] = version(pkg)
    return out


# ------------------------------------------------------------------------------------------- MLflow parent run
def _current_parent(cfg: SweepConfig, uri: str, experiment_id: str):
    """The sweep's newest parent run that a restart has not superseded, or None."""
    runs = tracking.find_runs(uri, experiment_id, f"tags.`{TAG}.kind` = 'sweep' and tags.`{TAG}.sweep` = '{cfg.name}'")
    live = [r for r in runs if f"{TAG}.superseded_because" not in r.data.tags]
    return max(live, key=lambda r: r.info.start_time) if live else None


def _create_parent(cfg: SweepConfig, uri: str, experiment_id: str) -> str:
    tags = {f"{TAG}.kind": "sweep", f"{TAG}.sweep": cfg.name, f"{TAG}.method": cfg.base.method.name,
            f"{TAG}.dataset": cfg.base.data.name, f"{TAG}.sweep_fingerprint": cfg.fingerprint()}
    run_id = tracking.start_run(uri, experiment_id, cfg.name, tags)
    tracking.log_params(uri, run_id, {
        "num_trials": cfg.num_trials, "max_concurrent": cfg.max_concurrent, "metric": cfg.metric,
        "mode": cfg.mode, "seed": cfg.seed, "scheduler": cfg.scheduler.type,
        "grace_period": cfg.scheduler.grace_period, "reduction_factor": cfg.scheduler.reduction_factor,
        "max_t": cfg.max_t, "max_failures": cfg.max_failures, "resources.cpu": cfg.resources.cpu,
        "resources.gpu": cfg.resources.gpu, "storage": cfg.experiment_path,
        **{f"space.{k}": d.to_yaml() for k, d in cfg.search_space.items()},
    })
    tracking.log_artifact_text(uri, run_id, "sweep.yaml", cfg.dump_yaml())
    tracking.set_tags(uri, run_id, provenance())
    return run_id


def _supersede(uri: str, experiment_id: str, parent, why: str) -> None:
    """Close an abandoned attempt: its parent and its RUNNING trial runs become KILLED, tagged with why (kept in
    MLflow, out of selection: the pipeline selects FINISHED trials of the newest parent)."""
    mark = {f"{TAG}.superseded_because": why}
    for run in tracking.find_runs(uri, experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        tracking.set_tags(uri, run.info.run_id, mark)
        if run.info.status == "RUNNING":
            tracking.set_status(uri, run.info.run_id, "KILLED")
    tracking.set_tags(uri, parent.info.run_id, mark)
    if parent.info.status != "KILLED":
        tracking.set_status(uri, parent.info.run_id, "KILLED")


def open_parent(cfg: SweepConfig, uri: str, experiment_id: str, state: TuneState) -> tuple[str, bool]:
    """The sweep's parent run: reused when Tune's state is resumable (after checking the config did not change), a
    new one for a new sweep or a restart. Raises ``InputError`` when MLflow and the Ray storage disagree."""
    parent = _current_parent(cfg, uri, experiment_id)
    where = f"MLflow ({uri}, run {parent.info.run_id})" if parent is not None else ""
    if state.kind == "resumable":
        if parent is None:
            raise InputError(
                f"a Ray experiment for sweep {cfg.name!r} is at {cfg.experiment_path}, but MLflow at {uri} "
                f"(experiment {cfg.tracking.experiment!r}) has no run for it; resume with the tracking.uri it was "
                f"started with, or move {cfg.experiment_path} away to start the sweep over")
        if parent.data.tags.get(f"{TAG}.sweep_fingerprint") != cfg.fingerprint():
            raise InputError(
                f"sweep {cfg.name!r} already exists in {where} with a different config; resume it with the config it "
                "was started with (artifact sweep.yaml of that run) or give this sweep a new name")
        tracking.set_status(uri, parent.info.run_id, "RUNNING")
        return parent.info.run_id, False
    # no Tune state to resume from
    if parent is None:
        check_fresh_study(cfg)
        return _create_parent(cfg, uri, experiment_id), True
    if parent.data.tags.get(f"{TAG}.sweep_fingerprint") != cfg.fingerprint():
        raise InputError(f"sweep {cfg.name!r} already exists in {where} with a different config; give this sweep a "
                         "new name (or use that config: artifact sweep.yaml of that run)")
    old = parent.data.params.get("storage")
    if old and old != cfg.experiment_path and inspect_experiment(old).kind != "absent":
        raise InputError(f"sweep {cfg.name!r} ({where}) keeps its Ray experiment at {old}, not at "
                         f"{cfg.experiment_path}; resume it with --set storage={old.rsplit('/', 1)[0]}")
    if parent.info.status == "FINISHED":
        raise InputError(f"sweep {cfg.name!r} finished earlier ({where}) and its Ray experiment is not at "
                         f"{cfg.experiment_path}: there is nothing to resume. To run it again, give it a new name")
    # an interrupted attempt whose Tune state is gone or was never saved: the same sweep again, from the start
    _supersede(uri, experiment_id, parent, state.detail or f"no Ray experiment at {cfg.experiment_path}")
    new = _create_parent(cfg, uri, experiment_id)
    tracking.set_tags(uri, parent.info.run_id, {f"{TAG}.superseded_by": new})
    if cfg.optuna_storage:  # its trials belong to the abandoned attempt
        import optuna

        if cfg.name in optuna.study.get_all_study_names(cfg.optuna_storage):
            optuna.delete_study(study_name=cfg.name, storage=cfg.optuna_storage)
    print(f"sweep {cfg.name}: restarting from scratch ({cfg.num_trials} trials): the earlier attempt (MLflow run "
          f"{parent.info.run_id}, now KILLED) left nothing to resume", file=sys.stderr, flush=True)
    return new, True


# ------------------------------------------------------------------------------------------- run + finalize
def run_sweep(cfg: SweepConfig, progress: bool = True) -> SweepSummary:
    """Run (or resume) the sweep; returns a summary. Finished and diverged trials of a resumed sweep are not redone.

    Resumes only from a complete Tune state; a state Tune never saved (driver killed at the very start) restarts the
    same sweep; a half-written one raises ``InputError`` with the command that fixes it. ``progress``: print a line
    per trial start and end and a progress bar (``sweeps.console``); Ray's own status tables only when verbose
    (``robust-sweep sweep --verbose``)."""
    # experiment-state snapshots forced by num_to_keep are wanted (restore); the warning about them is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if cfg.sparse_metric:  # reported at its epochs only; sweeps/spec.py checked, before Ray, that ASHA's rungs have it
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    init_ray(cfg.resources.cpu)  # an unreachable RAY_ADDRESS or node-local storage on a cluster: InputError first
    check_storage(cfg)
    uri = cfg.tracking.uri
    experiment_id = tracking.prepare_store(uri, cfg.tracking.experiment)  # schema + experiment, before any trial
    from ray import tune

    path = cfg.experiment_path
    state = inspect_experiment(path)
    if state.kind == "broken":
        raise InputError(
            f"the Ray experiment of sweep {cfg.name!r} at {path} is incomplete: {state.detail}. Tune cannot resume "
            f"it. To start the sweep over (the earlier trials stay in MLflow, marked KILLED), move it away and rerun "
            f"the same command: mv {path} {path}.broken")
    parent, _ = open_parent(cfg, uri, experiment_id, state)
    if state.kind == "started":
        _move_aside(path)
    import ray

    trainable = tune.with_resources(
        make_trainable(cfg, uri, experiment_id, parent, ray.get_runtime_context().get_node_id()),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    resumed = state.kind == "resumable"
    callbacks = [make_callback(cfg.name, cfg.base.method.name, list(cfg.search_space), cfg.metric, cfg.max_t,
                               cfg.num_trials)] if progress else []
    try:
        if resumed:
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_searcher(cfg), scheduler=make_scheduler(cfg),
                                            num_samples=cfg.num_trials, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=cfg.name, storage_path=cfg.storage, verbose=1 if verbose() else 0, callbacks=callbacks,
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        fault_gate(os.environ.get(TEST_GATES_ENV), "driver-fit", str(os.getpid()))
        results = tuner.fit()
        summary = finalize(cfg, results, uri, experiment_id, parent, resumed)
        tracking.set_note(uri, parent, sweep_note(cfg, summary))
        prune_checkpoints(cfg, results)
    except BaseException:
        tracking.set_status(uri, parent, "FAILED")
        raise
    from sweeps.report import log_report

    try:  # the sweep is done and recorded: a report that cannot be drawn is said, not a failed sweep
        log_report(cfg, uri, experiment_id, parent)
    except Exception as e:  # noqa: BLE001
        print(f"warning: sweep {cfg.name}: report not logged ({type(e).__name__}: {e}); the ranked trials: "
              f"robust-sweep report {cfg.name} --tracking-uri {uri}", file=sys.stderr)
    return summary


def prune_checkpoints(cfg: SweepConfig, results) -> int:
    """Delete the checkpoints of trials that ended without error (local storage only): a resumed sweep never runs
    them again, so only errored trials (``resume_errored``) need theirs. Returns the bytes freed."""
    import shutil

    if "://" in cfg.storage:
        return 0
    freed = 0
    for res in results:
        if res.error is not None or not res.path or not Path(res.path).is_dir():
            continue
        for d in Path(res.path).glob("checkpoint_*"):
            freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            shutil.rmtree(d, ignore_errors=True)
    return freed


def sweep_note(cfg: SweepConfig, s: "SweepSummary") -> str:
    """The Markdown note of a sweep's parent run in the MLflow UI."""
    lines = [f"**Sweep `{cfg.name}`**: {cfg.base.method.name} on {cfg.base.data.name}, {s.n_trials} trials "
             f"({s.n_finished} full budget, {s.n_stopped_early} stopped early by ASHA, {s.n_errored} errored), "
             f"ranked by `{cfg.metric}` ({cfg.mode}).", ""]
    if s.best.get("run_id"):
        name = trial_label(cfg.base.method.name, s.best["sampled"])
        lines.append(f"Best trial: {tracking.run_link(s.experiment_id, s.best['run_id'], name)} with "
                     f"{cfg.metric} = {s.best['value']:.4f} (logged here as `best_trial_{cfg.metric}`; a "
                     f"trial's own `best_val_acc` is its best epoch).")
    lines += ["", "Report (artifacts `report/`): ranked trials, learning curves with ASHA's stops, Optuna's "
              f"parameter importances, parallel coordinates and optimisation history; in a terminal: "
              f"`robust-sweep report {cfg.name} --tracking-uri URI`. Config: artifact `sweep.yaml`."]
    return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def failure_reason(error: BaseException) -> tuple[str, str]:
    """(one readable line, the full text without colour codes) of a trial's error: Ray wraps the trial's exception
    (``RayTaskError.cause``) in a traceback with ANSI colours whose readable reason is buried in the last line."""
    full = _ANSI.sub("", "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    root = error
    while getattr(root, "cause", None) is not None and root.cause is not root:
        root = root.cause
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    if root is error and len(lines) > 1:  # a wrapped traceback: its last line is "Type: message"
        line = lines[-1]
    else:
        line = f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
    return line[:500], full


def _trial_id_of_dir(name: str) -> str:
    """``robust_sweep_trial_<trial id>_<n>_<params>_<date>`` (a trial folder) -> trial id."""
    m = re.match(r".*?_([0-9a-f]{5,})_\d+_", name)
    return m.group(1) if m else name


def _detach_orphan(uri: str, run, parent: str) -> None:
    """A trial run that Tune's saved state does not know (the driver was killed between starting the trial and
    saving its state): kept in MLflow as KILLED, no longer nested under the sweep, so the sweep has one run per
    trial that Tune accounts for."""
    tracking.set_tags(uri, run.info.run_id, {
        f"{TAG}.orphan_of": parent,
        f"{TAG}.superseded_because": "not in Tune's saved state (driver killed before saving it); its "
                                     "configuration was run again as another trial"})
    tracking.client(uri).delete_tag(run.info.run_id, "mlflow.parentRunId")
    if run.info.status == "RUNNING":
        tracking.set_status(uri, run.info.run_id, "KILLED")


def _fail_orphaned_study_trials(cfg: SweepConfig) -> None:
    """In an Optuna study kept in ``optuna_storage``, a trial still RUNNING after the sweep was asked for by a driver
    killed before Tune saved it (Tune proposed it again): FAIL, so TPE ignores it; user attribute ``orphaned``."""
    if not cfg.optuna_storage:
        return
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=cfg.optuna_storage)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # (Optuna has no public call to annotate a trial of a loaded study)
        study._storage.set_trial_user_attr(t._trial_id, "orphaned", "asked by a driver killed before Tune saved it")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def finalize(cfg: SweepConfig, results, uri: str, experiment_id: str, parent: str, resumed: bool) -> SweepSummary:
    """Close every child run (ASHA-stopped trials never reach their own ``close``), log from the trial's checkpoint
    any epoch its reporter had not sent when it was stopped, pick the best, close the parent. Idempotent: a resumed
    sweep finalizes the trials of earlier sessions again without changing them. The parent ends FINISHED unless a
    trial errored (diverged trials are counted, not errors)."""
    children = {r.data.tags.get(f"{TAG}.trial_id"): r for r in tracking.find_runs(
        uri, experiment_id, f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TAG}.kind` = 'trial'")}
    n_finished = n_stopped = n_errored = n_diverged = 0
    candidates = []
    seen: set[str] = set()
    for res in results:
        m = res.metrics or {}
        trial_id = m.get("trial_id") or _trial_id_of_dir(Path(res.path).name)
        run = children.get(trial_id)
        seen.add(trial_id)
        rid = run.info.run_id if run is not None else None
        if res.error is not None:
            n_errored += 1
            if rid is not None:
                reason, full = failure_reason(res.error)
                tracking.log_artifact_text(uri, rid, "error.txt", full)
                tracking.set_tags(uri, rid, {f"{TAG}.error": reason, f"{TAG}.failure": "error"})
                tracking.set_status(uri, rid, "FAILED")
            continue
        if m.get("diverged"):
            n_diverged += 1
            if rid is not None and run.info.status != "FAILED":  # the trial logs its reason itself; in case not
                tracking.set_tags(uri, rid, {f"{TAG}.error": m.get("failure", "diverged"),
                                             f"{TAG}.failure": "diverged"})
                tracking.set_status(uri, rid, "FAILED")
            continue
        epochs = int(m.get(TIME_ATTR, 0))
        stopped = epochs < cfg.max_t
        n_stopped += stopped
        n_finished += not stopped
        if rid is not None:
            if epochs and len(tracking.logged_epochs(uri, rid)[0]) < epochs and res.checkpoint is not None:
                with res.checkpoint.as_directory() as d:  # stopped before its reporter sent everything
                    tracking.log_missing_epochs(uri, rid, load_state(Path(d) / CHECKPOINT_FILE)["history"])
            # trials that reach max_t are stopped by the scheduler too, inside their last report: close them here
            tags = {f"{TAG}.stopped_early": str(stopped).lower(), f"{TAG}.epochs_done": epochs,
                    f"{TAG}.config_fingerprint": cfg.trial_config(_sampled(cfg, res.config)).fingerprint()}
            tracking.set_tags(uri, rid, tags)
            if "best_val_acc" not in run.data.metrics:
                hist = tracking.client(uri).get_metric_history(rid, "val_acc")
                if hist:
                    tracking.log_metrics(uri, rid, {"best_val_acc": max(h.value for h in hist)}, step=epochs)
            if run.info.status != "FINISHED":
                tracking.set_status(uri, rid, "FINISHED")
        if cfg.metric in m:
            order = run.info.start_time if run is not None else math.inf  # ties: the earlier trial, as in selection
            candidates.append(Scored(m[cfg.metric], not stopped, order, (trial_id, run, res.config)))
    for trial_id, run in children.items():
        if trial_id not in seen:  # started by a driver killed before Tune saved it; Tune proposed it again
            _detach_orphan(uri, run, parent)
    missing = max(0, cfg.num_trials - len(results))  # never a silently smaller sweep
    if missing:
        n_errored += missing
        tracking.set_tags(uri, parent, {f"{TAG}.error": f"Tune ran {len(results)} of the {cfg.num_trials} planned "
                                                        "trials; start the sweep over under a new name"})
    best: dict[str, Any] = {}
    pick = best_trial(candidates, cfg.mode)  # the same rule as the final pipeline's selection
    if pick is not None:
        value, (trial_id, run, config) = pick.value, pick.item
        sampled = _sampled(cfg, config)
        best = {"trial_id": trial_id, "run_id": run.info.run_id if run is not None else None, "metric": cfg.metric,
                "value": value, "sampled": sampled, "config": cfg.trial_config(sampled).to_dict()}
        # the best trial's final value (what selection uses); a trial's own best_val_acc is its best epoch
        tracking.log_metrics(uri, parent, {f"best_trial_{cfg.metric}": value})
        tracking.set_tags(uri, parent, {f"{TAG}.best_trial_id": trial_id,
                                        f"{TAG}.best_run_id": best["run_id"] or ""})
    _fail_orphaned_study_trials(cfg)
    tracking.set_tags(uri, parent, {f"{TAG}.n_trials": len(results), f"{TAG}.n_finished": n_finished,
                                    f"{TAG}.n_stopped_early": n_stopped, f"{TAG}.n_errored": n_errored,
                                    f"{TAG}.n_diverged": n_diverged})
    tracking.set_status(uri, parent, "FINISHED" if n_errored == 0 else "FAILED")
    return SweepSummary(cfg.name, parent, experiment_id, cfg.experiment_path, len(results), n_finished, n_stopped,
                        n_errored, best, resumed, n_diverged)

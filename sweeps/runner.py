"""Run a validated sweep with Ray Tune: Optuna TPE proposes, ASHA stops, MLflow records.

One trial = ``robust_core.trial.run_trial`` with a ``TuneReporter`` (per-epoch ``tune.report`` + checkpoint, resume
from Tune's checkpoint) and an ``MLflowReporter`` (the trial's child run). The driver owns everything that must
exist once per sweep: the MLflow schema, experiment and parent run, the Optuna study (named after the sweep), the
final status of every child run (trials stopped by ASHA are killed mid-call, so their runs are closed here).

Traps designed around (see ``shared/SWEEP-FACTS.md``): ASHA-stopped trials are told to Optuna as PRUNED, not
COMPLETE; a ``ConcurrencyLimiter`` always wraps the searcher; ``max_t`` is ``base.train.epochs``; a local storage
path is refused on a multi-node cluster; MLflow URIs and paths are absolute; no ``MLflowLoggerCallback``.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from robust_core import tracking
from robust_core.config import dump_yaml
from robust_core.reporting import CHECKPOINT_FILE, Many, Reporter, load_state, save_state_atomic
from sweeps.spec import SweepConfig

TAG = tracking.TAG
TIME_ATTR = "epoch"  # ASHA's clock: epochs, so decisions do not depend on hardware speed


class TuneReporter(Reporter):
    """Per-epoch ``tune.report`` with a checkpoint; resumes from the checkpoint Tune hands back after a failure."""

    def restore(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_state(Path(d) / CHECKPOINT_FILE)

    def report(self, metrics, state):
        from ray import tune

        with tempfile.TemporaryDirectory(prefix="robust-sweep-ckpt-") as d:
            save_state_atomic(state(), Path(d) / CHECKPOINT_FILE)
            # persisted to the experiment storage before report returns, so the folder can go afterwards
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(d))


def _pruned_aware_searcher_cls():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class PrunedAwareOptunaSearch(OptunaSearch):
        """``OptunaSearch`` that tells Optuna PRUNED for trials stopped before ``max_t`` (Tune reports them as
        complete, and plain ``OptunaSearch`` would feed TPE their early scores as final ones), FAIL for errors."""

        def __init__(self, *args, max_t: int, time_attr: str = TIME_ATTR, **kwargs):
            super().__init__(*args, **kwargs)
            self._max_t, self._time_attr = max_t, time_attr

        def on_trial_result(self, trial_id: str, result: dict):
            if self.metric in result:  # absent from epochs where a sparse metric is not computed (val_robust_acc)
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return super().on_trial_complete(trial_id, result, error)
            t = result.get(self._time_attr) if result else None
            if error:
                state = TrialState.FAIL
            elif t is not None and t < self._max_t:
                state = TrialState.PRUNED
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


def make_trainable(cfg: SweepConfig, uri: str, experiment_id: str, parent_run_id: str) -> Callable[[dict], None]:
    """The Tune function trainable; everything it needs travels in the closure (no working dir is shipped)."""

    def robust_sweep_trial(config: dict[str, Any]) -> None:
        run_cfg = cfg.trial_config(config)  # flat Tune dict -> typed RunConfig, first thing
        from ray import tune

        from robust_core.trial import run_trial

        trial_id = tune.get_context().get_trial_id()
        run_id, created = tracking.find_or_start_run(
            uri, experiment_id, trial_id, trial_tags(cfg, trial_id),
            key_tags=[f"{TAG}.sweep", f"{TAG}.trial_id"], parent_run_id=parent_run_id)
        if created:
            tracking.log_params(uri, run_id, run_cfg.flat())
            tracking.log_artifact_text(uri, run_id, "config.yaml", dump_yaml(run_cfg))
        else:  # a retry after a failure or a driver restart: same run, history continues
            tracking.set_status(uri, run_id, "RUNNING")
        # MLflow first: a trial ASHA stops is killed inside tune.report, after its last epoch is logged
        reporter = Many(tracking.MLflowReporter(uri, run_id), TuneReporter())
        run_trial(run_cfg, reporter)

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
    n_errored: int
    best: dict[str, Any] = field(default_factory=dict)  # trial_id, run_id, metric, value, config
    resumed: bool = False

    def __str__(self) -> str:
        head = (f"sweep {self.name}{' (resumed)' if self.resumed else ''}: {self.n_trials} trials, "
                f"{self.n_finished} full, {self.n_stopped_early} stopped early, {self.n_errored} errored; "
                f"MLflow parent run {self.parent_run_id}")
        if not self.best:
            return head + "; no trial finished"
        vals = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.best.get("sampled", {}).items())
        return (f"{head}\n  best {self.best['metric']}={self.best['value']:.4f}: trial {self.best['trial_id']} "
                f"(run {self.best['run_id']}) {vals}")


def _sampled(cfg: SweepConfig, config: dict | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k in cfg.search_space}


def init_ray(cpus_per_task: float = 1.0) -> None:
    """Join the cluster in RAY_ADDRESS (or a running local one), else start a local instance sized to this machine
    (at least ``cpus_per_task`` CPUs). Shared by sweeps and the final pipeline."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {}
    if address is None and not Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists():
        # a fresh local instance: hide GPUs from trials that ask for none, size it to this machine
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(cpus_per_task))
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, **kwargs)


def check_storage(cfg: SweepConfig) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and "://" not in cfg.storage:
        raise RuntimeError(
            f"storage: {cfg.storage!r} is a node-local path but the Ray cluster has {len(alive)} alive nodes; trial "
            "checkpoints written on worker nodes would fail. Use shared storage: an s3:// or gs:// URI, or "
            "file:///path on a filesystem mounted on every node.")


def check_fresh_study(cfg: SweepConfig) -> None:
    """A new sweep must not silently continue an Optuna study of the same name (OptunaSearch would)."""
    if not cfg.optuna_storage:
        return
    import optuna

    if cfg.name in optuna.study.get_all_study_names(cfg.optuna_storage):
        raise RuntimeError(
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


def open_parent(cfg: SweepConfig, uri: str, experiment_id: str) -> tuple[str, bool]:
    """The sweep's parent run (reused on resume, after checking the config did not change)."""
    fp = cfg.fingerprint()
    tags = {f"{TAG}.kind": "sweep", f"{TAG}.sweep": cfg.name, f"{TAG}.method": cfg.base.method.name,
            f"{TAG}.dataset": cfg.base.data.name, f"{TAG}.sweep_fingerprint": fp}
    run_id, created = tracking.find_or_start_run(uri, experiment_id, cfg.name, tags,
                                                 key_tags=[f"{TAG}.kind", f"{TAG}.sweep"])
    if created:
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
    else:
        old = tracking.client(uri).get_run(run_id).data.tags.get(f"{TAG}.sweep_fingerprint")
        if old != fp:
            raise RuntimeError(
                f"sweep {cfg.name!r} already exists in MLflow ({uri}, run {run_id}) with a different config; "
                "resume it with the config it was started with (artifact sweep.yaml of that run) or give this "
                "sweep a new name")
        tracking.set_status(uri, run_id, "RUNNING")
    return run_id, created


def run_sweep(cfg: SweepConfig, progress: bool = True) -> SweepSummary:
    """Run (or resume) the sweep; returns a summary. Finished trials of a resumed sweep are not redone."""
    # experiment-state snapshots forced by num_to_keep are wanted (restore); the warning about them is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if cfg.sparse_metric:  # reported at its epochs only; sweeps/spec.py checked, before Ray, that ASHA's rungs have it
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from ray import tune

    uri = cfg.tracking.uri
    experiment_id = tracking.prepare_store(uri, cfg.tracking.experiment)  # schema + experiment, before any trial
    init_ray(cfg.resources.cpu)
    check_storage(cfg)
    parent, _ = open_parent(cfg, uri, experiment_id)
    trainable = tune.with_resources(make_trainable(cfg, uri, experiment_id, parent),
                                    {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    path = cfg.experiment_path
    try:
        resumed = tune.Tuner.can_restore(path)
        if resumed:
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            check_fresh_study(cfg)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_searcher(cfg), scheduler=make_scheduler(cfg),
                                            num_samples=cfg.num_trials, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=cfg.name, storage_path=cfg.storage, verbose=1 if progress else 0,
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        results = tuner.fit()
        summary = finalize(cfg, results, uri, experiment_id, parent, resumed)
    except BaseException:
        tracking.set_status(uri, parent, "FAILED")
        raise
    return summary


def finalize(cfg: SweepConfig, results, uri: str, experiment_id: str, parent: str, resumed: bool) -> SweepSummary:
    """Close every child run (ASHA-stopped trials never reach their own ``close``), pick the best, close the parent.
    Idempotent: a resumed sweep finalizes the trials of earlier sessions again without changing them."""
    children = {r.data.tags.get(f"{TAG}.trial_id"): r for r in tracking.find_runs(
        uri, experiment_id, f"tags.`{TAG}.kind` = 'trial' and tags.`{TAG}.sweep` = '{cfg.name}'")}
    n_finished = n_stopped = n_errored = 0
    candidates = []
    seen: set[str] = set()
    for res in results:
        m = res.metrics or {}
        trial_id = m.get("trial_id") or Path(res.path).name
        epochs = int(m.get(TIME_ATTR, 0))
        run = children.get(trial_id)
        seen.add(trial_id)
        if res.error is not None:
            n_errored += 1
            if run is not None:
                tracking.set_tags(uri, run.info.run_id, {f"{TAG}.error": str(res.error)[:5000],
                                                         f"{TAG}.epochs_done": epochs})
                tracking.set_status(uri, run.info.run_id, "FAILED")
            continue
        stopped = epochs < cfg.max_t
        n_stopped += stopped
        n_finished += not stopped
        if run is not None:
            rid = run.info.run_id
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
            candidates.append((not stopped, m[cfg.metric], trial_id, run, res.config))
    for trial_id, run in children.items():  # e.g. a trial that failed before its first report
        if trial_id not in seen and run.info.status == "RUNNING":
            tracking.set_tags(uri, run.info.run_id, {f"{TAG}.error": "trial ended without a result"})
            tracking.set_status(uri, run.info.run_id, "FAILED")
    best: dict[str, Any] = {}
    if candidates:
        full = [c for c in candidates if c[0]] or candidates
        pick = max if cfg.mode == "max" else min
        _, value, trial_id, run, config = pick(full, key=lambda c: c[1])
        sampled = _sampled(cfg, config)
        best = {"trial_id": trial_id, "run_id": run.info.run_id if run is not None else None, "metric": cfg.metric,
                "value": value, "sampled": sampled, "config": cfg.trial_config(sampled).to_dict()}
        tracking.log_metrics(uri, parent, {f"best_{cfg.metric}": value})
        tracking.set_tags(uri, parent, {f"{TAG}.best_trial_id": trial_id,
                                        f"{TAG}.best_run_id": best["run_id"] or ""})
    tracking.set_tags(uri, parent, {f"{TAG}.n_trials": len(results), f"{TAG}.n_finished": n_finished,
                                    f"{TAG}.n_stopped_early": n_stopped, f"{TAG}.n_errored": n_errored})
    tracking.set_status(uri, parent, "FINISHED" if n_errored == 0 else "FAILED")
    return SweepSummary(cfg.name, parent, experiment_id, cfg.experiment_path, len(results), n_finished, n_stopped,
                        n_errored, best, resumed)

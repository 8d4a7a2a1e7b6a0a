"""The final pipeline: sweeps → best configuration per row (validation metric, from MLflow) → retrain over seeds as
parallel Ray tasks → evaluation suites as Ray tasks → tables (Markdown, CSV, LaTeX) and figures (PNG, PDF), every
cell traceable to its runs (``lineage.json``), everything also logged to one MLflow pipeline run.

Selection reads only the sweep trials' validation metrics (trials never compute test metrics); the test set is
touched only by the retrain and evaluation runs, after selection. A rerun reuses, from MLflow, every finished sweep
(same fingerprint), retrain (same resolved config) and evaluation (same model(s), suite and settings), and only
computes what is missing.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipelines.plan import EvalUnit, Plan, RetrainKey, make_plan
from pipelines.spec import PipelineSpec
from robust_core.config import RunConfig, build_run_config, dump_yaml

TAG = "robust_sweep."
EVAL_JSON = "eval.json"


@dataclass(frozen=True)
class Selection:
    sweep: str
    trial_run_id: str
    sweep_run_id: str
    metric: str
    value: float
    config: RunConfig


def select_best(spec: PipelineSpec, sweep: str) -> Selection:
    """Best trial of the latest run of ``sweep`` by ``spec.selection_metric`` (a validation metric).

    Trials that ran the full budget are preferred over ones ASHA stopped early; ties go to the earlier trial.
    """
    from robust_core.tracking import client, find_runs

    uri, exp = spec.tracking.uri, spec.tracking.experiment
    parents = find_runs(uri, exp, f"tags.`{TAG}kind` = 'sweep' and tags.`{TAG}sweep` = '{sweep}'")
    if not parents:
        raise LookupError(
            f"sweep {sweep!r} not found in MLflow experiment {exp!r} at {uri}; run its sweep first "
            f"(robust-sweep sweep CONFIG with name: {sweep}) or fix the row's `sweep:` name")
    parent = max(parents, key=lambda r: r.info.start_time)
    trials = find_runs(uri, exp, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{TAG}kind` = 'trial'")
    m = spec.selection_metric
    scored = [r for r in trials if m in r.data.metrics and r.info.status == "FINISHED"]
    if not scored:
        raise LookupError(f"sweep {sweep!r} (run {parent.info.run_id}) has no finished trial with metric {m!r}")
    sign = 1 if spec.selection_mode == "max" else -1
    full = [r for r in scored if r.data.tags.get(f"{TAG}stopped_early") != "true"] or scored
    best = sorted(full, key=lambda r: (-sign * r.data.metrics[m], r.info.start_time))[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = client(uri).download_artifacts(best.info.run_id, "config.yaml", tmp)
        import yaml

        cfg = build_run_config(yaml.safe_load(Path(path).read_text()), f"config of trial run {best.info.run_id}")
    return Selection(sweep, best.info.run_id, parent.info.run_id, m, best.data.metrics[m], cfg)


def seeded(cfg: RunConfig, seed: int, vary: list[str]) -> RunConfig:
    return cfg.with_values({path: seed for path in vary}, f"config with seed {seed}")


# ---------------------------------------------------------------------------------------------------- Ray tasks
def _retrain_task(cfg_dict: dict[str, Any], uri: str, run_id: str, out_dir: str) -> dict[str, Any]:
    """Runs in a Ray worker: train one seed (test accuracy per epoch, for learning curves), log to its MLflow run."""
    from robust_core.tracking import MLflowReporter, log_artifact_file
    from robust_core.trial import MODEL_FILE, run_trial

    cfg = build_run_config(cfg_dict)
    final, _ = run_trial(cfg, MLflowReporter(uri, run_id), out_dir=out_dir, evaluate_test=True, test_each_epoch=True)
    log_artifact_file(uri, run_id, str(Path(out_dir) / MODEL_FILE), "model")
    return {k: v for k, v in final.items() if isinstance(v, (int, float, str))}


def _eval_task(unit: EvalUnit, uri: str, models: dict[str, str], eval_run_id: str) -> dict[str, Any]:
    """Runs in a Ray worker: load the retrained model(s) from MLflow, run one suite (+ masking probe + audit) on the
    full test set, log the records to the evaluation run. ``models``: role -> retrain run id."""
    import os

    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from robust_core.attacks.evaluate import run_suites, wire
    from robust_core.attacks.records import write_json
    from robust_core.data import prepare_data
    from robust_core.tracking import client, log_artifact_file, log_metrics, set_status, set_tags
    from robust_core.trial import load_trained

    with tempfile.TemporaryDirectory() as tmp:
        def load(ref: tuple[str, str]):
            role, inference = ref
            p = client(uri).download_artifacts(models[role], "model/model.pt", f"{tmp}/{role}")
            return load_trained(p, inference=json.loads(inference))

        cfg, suite_models = wire([unit.suite], load, ("target", unit.inference_json),
                                 sources={n: (f"source_{n}", inf) for n, _, inf in unit.sources},
                                 baseline=None if unit.baseline is None else ("baseline", unit.baseline[1]),
                                 where=f"evaluation {unit.key}")
        data = prepare_data(cfg.data).test
        torch.manual_seed(unit.settings.seed)
        res = run_suites([unit.suite], suite_models, data, unit.settings)
    records = [r.to_dict() for r in res.records]
    with tempfile.TemporaryDirectory() as tmp:
        p = write_json(Path(tmp) / EVAL_JSON, res.records, res.audit, {"suite": unit.suite, "unit": _unit_meta(unit)})
        log_artifact_file(uri, eval_run_id, str(p))
    log_metrics(uri, eval_run_id, {r.metric_name: r.accuracy for r in res.records})
    set_tags(uri, eval_run_id, {f"{TAG}audit_flags": str(len(res.audit))})
    set_status(uri, eval_run_id, "FINISHED")
    return {"records": records, "audit": res.audit}


# ---------------------------------------------------------------------------------------------------- pipeline
class Runner:
    def __init__(self, plan: Plan, log: Callable[[str], None]) -> None:
        self.plan, self.spec, self.log = plan, plan.spec, log
        self.uri, self.exp = plan.spec.tracking.uri, plan.spec.tracking.experiment
        self.selections: dict[str, Selection] = {}
        self.retrains: dict[RetrainKey, dict[str, Any]] = {}  # -> {"run_id", "metrics", "reused"}
        self.evals: dict[str, dict[str, Any]] = {}  # eval key -> {"run_id", "records", "audit", "reused"}
        self.trained = self.reused = self.evaluated = self.evals_reused = 0
        self.parent = ""

    # -------------------------------------------------------------- 0. data
    def check_data(self) -> None:
        """Every dataset the plan trains on loads here, before any sweep starts (a clear error if files are missing;
        the smoke profile writes its tiny datasets first)."""
        from robust_core.data import load_arrays

        names = sorted({s.setting.dataset for s in self.plan.sources.values() if s.setting is not None})
        if self.spec.generate_tiny_data:
            from robust_core.data.tiny import write_tiny_dataset

            for n in names:
                write_tiny_dataset(n, Path(self.spec.data_root))
        for n in names:
            load_arrays(n, self.spec.data_root, download=True)

    # -------------------------------------------------------------- 1. sweeps + selection
    def run_sources(self) -> None:
        from robust_core.tracking import find_runs

        for name, src in self.plan.sources.items():
            if src.explicit:
                continue
            raw = self.plan.sweep_raw[name]
            if self.spec.sweep.mode == "defaults":
                cfg = build_run_config(raw["base"], f"config of {name}")
                self.selections[name] = Selection(name, "", "", "defaults (no sweep)", float("nan"), cfg)
                continue
            from sweeps.runner import run_sweep
            from sweeps.spec import build_sweep_config

            sc = build_sweep_config(raw, source=f"sweep {name}")
            done = find_runs(self.uri, self.exp, f"tags.`{TAG}kind` = 'sweep' and tags.`{TAG}sweep` = '{name}' and "
                                                 f"tags.`{TAG}sweep_fingerprint` = '{sc.fingerprint()}' and "
                                                 "attributes.status = 'FINISHED'")
            if done:
                self.log(f"[sweep] {name}: finished earlier (run {done[0].info.run_id}), reused")
                continue
            self.log(f"[sweep] {name}: {sc.num_trials} trials")
            self.log(f"[sweep] {run_sweep(sc, progress=False)}")
        for name, src in self.plan.sources.items():
            if name not in self.selections:
                self.selections[name] = sel = select_best(self.spec, name)
                self.log(f"[select] {name}: trial run {sel.trial_run_id} {sel.metric}={sel.value:.4f}")

    # -------------------------------------------------------------- 2. retrains
    def retrain_config(self, k: RetrainKey) -> RunConfig:
        cfg = self.selections[k.source].config.with_values(k.set, f"{k.source} with {k.set}")
        return seeded(cfg, k.seed, self.spec.vary)

    def finished(self, kind: str, key_tag: str, metric: str | None = None) -> dict[str, Any]:
        """The earliest FINISHED run of ``kind`` per value of tag ``key_tag`` (one query for the whole pipeline),
        counting only runs that logged ``metric`` when given."""
        from robust_core.tracking import find_runs

        out: dict[str, Any] = {}
        for r in find_runs(self.uri, self.exp, f"tags.`{TAG}kind` = '{kind}' and attributes.status = 'FINISHED'"):
            if metric is None or metric in r.data.metrics:
                out.setdefault(r.data.tags.get(f"{TAG}{key_tag}", ""), r)  # oldest first
        return out

    def _remote(self, fn):
        import ray

        return ray.remote(num_cpus=self.spec.resources.cpu, num_gpus=self.spec.resources.gpu, max_retries=1)(fn)

    def run_retrains(self, exp_id: str) -> None:
        from robust_core.tracking import log_artifact_text, log_params, start_run

        done = self.finished("retrain", "config_fingerprint", metric="test_acc")
        pending = []
        for k in sorted(self.plan.retrains, key=lambda k: (k.source, k.set_json, k.seed)):
            cfg = self.retrain_config(k)
            fp = cfg.fingerprint()
            if fp in done:
                r = done[fp]
                self.retrains[k] = {"run_id": r.info.run_id, "metrics": dict(r.data.metrics), "reused": True}
                continue
            sel = self.selections[k.source]
            tags = {f"{TAG}kind": "retrain", f"{TAG}pipeline": self.spec.name, f"{TAG}sweep": k.source,
                    f"{TAG}source_trial_run_id": sel.trial_run_id, f"{TAG}source_sweep_run_id": sel.sweep_run_id,
                    f"{TAG}seed": str(k.seed), f"{TAG}config_fingerprint": fp, f"{TAG}method": cfg.method.name,
                    f"{TAG}dataset": cfg.data.name, f"{TAG}set": k.set_json}
            run_name = f"{k.source}-seed{k.seed}" + ("-" + ",".join(f"{p.split('.')[-1]}={v}" for p, v in k.set.items())
                                                     if k.set else "")
            run_id = start_run(self.uri, exp_id, run_name, tags, parent_run_id=self.parent)
            log_params(self.uri, run_id, cfg.flat())
            log_artifact_text(self.uri, run_id, "config.yaml", dump_yaml(cfg))
            pending.append((k, cfg, run_id))
        self.reused = len(self.retrains)
        self.log(f"[retrain] {len(pending)} to train, {self.reused} reused from earlier runs")
        if not pending:
            return
        task = self._remote(_retrain_task)
        out = Path(self.spec.output_dir) / "models"
        refs = {task.remote(cfg.to_dict(), self.uri, run_id, str(out / f"{k.source}-seed{k.seed}-{cfg.fingerprint()}")):
                (k, cfg, run_id) for k, cfg, run_id in pending}
        t0 = time.time()

        def done(ref, final):
            k, cfg, run_id = refs[ref]
            self.retrains[k] = {"run_id": run_id, "metrics": final, "reused": False}
            what = f"{k.source} {k.set_json}" if k.set else k.source
            self.log(f"[retrain {len(self.retrains) - self.reused}/{len(refs)}] {what} seed {k.seed}: "
                     f"test_acc={final.get('test_acc', float('nan')):.4f}  ({time.time() - t0:.0f}s)")

        self._wait(refs, done, "retrain")
        self.trained = len(pending)

    def _wait(self, refs: dict, on_done, what: str) -> None:
        import ray

        from robust_core.tracking import set_status

        errors, remaining = [], list(refs)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            try:
                result = ray.get(ready[0])
            except Exception as e:  # record and go on: the other work is kept; raised below
                run_id = refs[ready[0]][-1]
                set_status(self.uri, run_id, "FAILED")
                errors.append(f"{what} run {run_id}: {e}")
                continue
            on_done(ready[0], result)
        if errors:
            raise RuntimeError(f"{what} failed for:\n  " + "\n  ".join(errors) + f"\nfinished {what}s are recorded in "
                               "MLflow and will be reused when you rerun the pipeline")

    # -------------------------------------------------------------- 3. evaluations
    def run_evals(self, exp_id: str) -> None:
        from robust_core.tracking import client, log_params, start_run

        done = self.finished("evaluation", "eval_key")
        pending = []
        for key, u in sorted(self.plan.evals.items()):
            if key in done:
                r = done[key]
                with tempfile.TemporaryDirectory() as tmp:
                    blob = json.loads(Path(client(self.uri).download_artifacts(r.info.run_id, EVAL_JSON, tmp))
                                      .read_text())
                self.evals[key] = {"run_id": r.info.run_id, "records": blob["records"], "audit": blob["audit"],
                                   "reused": True}
                continue
            models = {"target": self.retrains[u.target]["run_id"]}
            for name, rk, _ in u.sources:
                models[f"source_{name}"] = self.retrains[rk]["run_id"]
            if u.baseline is not None:
                models["baseline"] = self.retrains[u.baseline[0]]["run_id"]
            tags = {f"{TAG}kind": "evaluation", f"{TAG}eval_key": key, f"{TAG}suite": u.suite,
                    f"{TAG}model_run_id": models["target"], f"{TAG}pipeline": self.spec.name,
                    **{f"{TAG}{role}_run_id": rid for role, rid in models.items() if role != "target"}}
            run_id = start_run(self.uri, exp_id, f"eval-{u.suite}-{u.target.source}-seed{u.target.seed}", tags,
                               parent_run_id=models["target"])
            log_params(self.uri, run_id, {"suite": u.suite, "inference": u.inference_json, "protocol": u.protocol,
                                          **{f"eval.{k}": v for k, v in u.settings.model_dump(mode="json").items()}})
            pending.append((key, u, models, run_id))
        self.evals_reused = len(self.evals)
        self.log(f"[eval] {len(pending)} to run, {self.evals_reused} reused from earlier runs")
        if not pending:
            return
        task = self._remote(_eval_task)
        refs = {task.remote(u, self.uri, models, run_id): (key, u, run_id)
                for key, u, models, run_id in pending}
        t0 = time.time()

        def done(ref, result):
            key, u, run_id = refs[ref]
            self.evals[key] = {"run_id": run_id, **result, "reused": False}
            self.log(f"[eval {len(self.evals) - self.evals_reused}/{len(refs)}] {u.suite} on {u.target.source} seed "
                     f"{u.target.seed}  ({time.time() - t0:.0f}s)")

        self._wait(refs, done, "evaluation")
        self.evaluated = len(pending)


def _unit_meta(u: EvalUnit) -> dict[str, Any]:
    """What an evaluation was, in its JSON artifact: suite, protocol fingerprint, settings, models' inference."""
    return {"suite": u.suite, "protocol": u.protocol, "settings": u.settings.model_dump(mode="json"),
            "inference": u.inference_json, "sources": [[n, inf] for n, _, inf in u.sources],
            "baseline_inference": None if u.baseline is None else u.baseline[1]}


def run_pipeline(spec: PipelineSpec, only: str | None = None, log=print, dry_run: bool = False) -> dict[str, Any]:
    """Run the pipeline (``only``: one table or figure). Returns {"tables": {name: {fmt: path}}, "figures": ...,
    "trained", "reused", "evaluated", "evals_reused", "parent_run_id", "output_dir", "estimate"}.
    ``dry_run``: validate, print the plan and its estimated cost, start nothing."""
    from pipelines.cost import estimate
    from pipelines.render import render_outputs

    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # also inherited by local Ray workers
    plan = make_plan(spec, only)  # every problem of the spec and its generated sweeps, before anything starts
    est = estimate(plan)
    log(est.summary())
    if dry_run:
        return {"tables": {}, "figures": {}, "trained": 0, "reused": 0, "evaluated": 0, "evals_reused": 0,
                "parent_run_id": None, "output_dir": spec.output_dir, "estimate": est}
    from robust_core.tracking import prepare_store, set_status, start_run
    from sweeps.runner import init_ray

    r = Runner(plan, log)
    r.check_data()
    exp_id = prepare_store(r.uri, r.exp)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    init_ray(spec.resources.cpu)
    r.run_sources()
    r.parent = start_run(r.uri, exp_id, f"final-{spec.name}" + (f"-{only}" if only else ""),
                         {f"{TAG}kind": "pipeline", f"{TAG}pipeline": spec.name})
    try:
        r.run_retrains(exp_id)
        r.run_evals(exp_id)
        written = render_outputs(r)
    except BaseException:
        set_status(r.uri, r.parent, "FAILED")
        raise
    set_status(r.uri, r.parent, "FINISHED")
    return {**written, "trained": r.trained, "reused": r.reused, "evaluated": r.evaluated,
            "evals_reused": r.evals_reused, "parent_run_id": r.parent, "output_dir": spec.output_dir, "estimate": est}

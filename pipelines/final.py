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
from pathlib import Path
from typing import Any, Callable

from pipelines.plan import EvalUnit, Plan, RetrainKey, make_plan
from pipelines.render import FIGURES_DIR, TABLES_DIR, Results, figure_path, history_needed, render, table_path, \
    weights_needed
from pipelines.spec import PipelineSpec
from pipelines.store import EVAL_JSON, TAG, Selection, Store
from robust_core.config import RunConfig, build_run_config, dump_yaml

__all__ = ["Runner", "Selection", "run_pipeline", "seeded", "select_best"]  # Selection: pipelines.store's


def select_best(spec: PipelineSpec, sweep: str, metric: str | None = None, mode: str | None = None) -> Selection:
    """Best trial of the latest run of ``sweep`` by ``metric`` (a validation metric; default ``spec.selection_metric``
    and ``spec.selection_mode``; the plan's source says which: ``val_robust_acc`` for robust-selected rows), by the
    sweep's own rule (``sweeps.best``: full-budget trials before ones ASHA stopped early, ties to the earlier trial)."""
    return Store(spec.tracking.uri, spec.tracking.experiment).select_best(
        sweep, metric or spec.selection_metric, mode or spec.selection_mode)


def seeded(cfg: RunConfig, seed: int, vary: list[str]) -> RunConfig:
    return cfg.with_values({path: seed for path in vary}, f"config with seed {seed}")


# ---------------------------------------------------------------------------------------------------- Ray tasks
def _retrain_task(cfg_dict: dict[str, Any], uri: str, run_id: str, out_dir: str) -> dict[str, Any]:
    """Runs in a Ray worker: train one seed (test accuracy per epoch, for learning curves), log to its MLflow run."""
    from robust_core.tracking import MLflowReporter, log_artifact_file, log_metrics
    from robust_core.trial import MODEL_FILE, run_trial

    clock = {"t0": time.perf_counter(), "entry_at": time.time()}  # timing.* (benchmarks/laptop_breakdown.py)
    cfg = build_run_config(cfg_dict)
    final, _ = run_trial(cfg, MLflowReporter(uri, run_id), out_dir=out_dir, evaluate_test=True, test_each_epoch=True,
                         timing=clock)
    t0 = time.perf_counter()
    log_artifact_file(uri, run_id, str(Path(out_dir) / MODEL_FILE), "model")
    log_metrics(uri, run_id, {"timing.upload_s": time.perf_counter() - t0})
    return {k: v for k, v in final.items() if isinstance(v, (int, float, str))}


def _eval_task(unit: EvalUnit, uri: str, models: dict[str, str], eval_run_id: str) -> dict[str, Any]:
    """Runs in a Ray worker: load the retrained model(s) from MLflow, run one suite (+ masking probe + audit) on the
    full test set, log the records to the evaluation run. ``models``: role -> retrain run id."""
    import os

    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    t_entry, entry_at = time.perf_counter(), time.time()  # timing.* (benchmarks/laptop_breakdown.py)
    from robust_core.attacks.evaluate import run_suites, wire
    from robust_core.attacks.records import write_json
    from robust_core.data import prepare_data
    from robust_core.tracking import log_artifact_file, log_metrics, set_status, set_tags
    from robust_core.trial import load_trained

    store = Store(uri, "")
    with tempfile.TemporaryDirectory() as tmp:
        def load(ref: tuple[str, str]):
            role, inference = ref
            return load_trained(store.download_model(models[role], f"{tmp}/{role}"), inference=json.loads(inference))

        cfg, suite_models = wire([unit.suite], load, ("target", unit.inference_json),
                                 sources={n: (f"source_{n}", inf) for n, _, inf in unit.sources},
                                 baseline=None if unit.baseline is None else ("baseline", unit.baseline[1]),
                                 where=f"evaluation {unit.key}")
        t_load = time.perf_counter()
        data = prepare_data(cfg.data).test
        t_data = time.perf_counter()
        torch.manual_seed(unit.settings.seed)
        res = run_suites([unit.suite], suite_models, data, unit.settings)
        t_attack = time.perf_counter()
    records = [r.to_dict() for r in res.records]
    with tempfile.TemporaryDirectory() as tmp:
        p = write_json(Path(tmp) / EVAL_JSON, res.records, res.audit, {"suite": unit.suite, "unit": _unit_meta(unit)})
        log_artifact_file(uri, eval_run_id, str(p))
    log_metrics(uri, eval_run_id, {r.metric_name: r.accuracy for r in res.records})
    log_metrics(uri, eval_run_id, {"timing.load_s": t_load - t_entry, "timing.data_s": t_data - t_load,
                                   "timing.attack_s": t_attack - t_data, "timing.entry_at": entry_at,
                                   "timing.wall_s": time.perf_counter() - t_entry, "timing.end_at": time.time()})
    set_tags(uri, eval_run_id, {f"{TAG}audit_flags": str(len(res.audit))})
    set_status(uri, eval_run_id, "FINISHED")
    return {"records": records, "audit": res.audit}


# ---------------------------------------------------------------------------------------------------- pipeline
class Runner:
    def __init__(self, plan: Plan, log: Callable[[str], None], public_uri: str | None = None) -> None:
        self.plan, self.spec, self.log = plan, plan.spec, log
        self.uri, self.exp = plan.spec.tracking.uri, plan.spec.tracking.experiment
        self.public_uri = public_uri or self.uri  # what the outputs name (not a temporary server in front of it)
        self.exp_id = ""
        self.store = Store(self.uri, self.exp)
        self.selections: dict[str, Selection] = {}
        self.retrains: dict[RetrainKey, dict[str, Any]] = {}  # -> {"run_id", "metrics", "reused"}
        self.evals: dict[str, dict[str, Any]] = {}  # eval key -> {"run_id", "records", "audit", "reused"}
        self.trained = self.reused = self.evaluated = self.evals_reused = 0
        self.errored_trials = 0  # sweep trials that crashed (not diverged): the command exits with 1
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
            done = self.store.finished_sweep(name, sc.fingerprint())
            if done:
                self.log(f"[sweep] {name}: finished earlier (run {done}), reused")
                continue
            self.log(f"[sweep] {name}: {sc.num_trials} trials")
            summary = run_sweep(sc, progress=False)
            self.errored_trials += summary.n_errored
            self.log(f"[sweep] {summary}")
        for name, src in self.plan.sources.items():
            if name not in self.selections:
                self.selections[name] = sel = select_best(self.spec, src.sweep or name, src.metric, src.mode)
                self.log(f"[select] {name}: trial run {sel.trial_run_id} {sel.metric}={sel.value:.4f}")

    # -------------------------------------------------------------- 2. retrains
    def retrain_config(self, k: RetrainKey) -> RunConfig:
        cfg = self.selections[k.source].config.with_values(k.set, f"{k.source} with {k.set}")
        return seeded(cfg, k.seed, self.spec.vary)

    def _remote(self, fn):
        import ray

        return ray.remote(num_cpus=self.spec.resources.cpu, num_gpus=self.spec.resources.gpu, max_retries=1)(fn)

    def run_retrains(self, exp_id: str) -> None:
        from robust_core.tracking import log_artifact_text, log_params, start_run

        done = self.store.finished("retrain", "config_fingerprint", metric="test_acc")
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
        from robust_core.tracking import log_params, start_run

        done = self.store.finished("evaluation", "eval_key")
        pending = []
        for key, u in sorted(self.plan.evals.items()):
            if key in done:
                r = done[key]
                blob = self.store.eval_records(r.info.run_id)
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


    # -------------------------------------------------------------- 4. outputs
    def results(self) -> Results:
        """The plain values the outputs are rendered from (with the per-epoch histories the figures plot)."""
        return Results(self.plan, self.selections, self.retrains, self.evals,
                       self.store.histories(history_needed(self.plan, self.retrains)),
                       self.store.weights(weights_needed(self.plan, self.retrains)), self.parent,
                       self.public_uri, self.exp, self.exp_id,
                       {"trained": self.trained, "reused": self.reused, "evaluated": self.evaluated,
                        "evals_reused": self.evals_reused})

    def write_outputs(self) -> dict[str, Any]:
        """Render (``pipelines.render``, pure) and write every output to the output folder and the pipeline run."""
        from pipelines.figures import render_figure
        from robust_core.tracking import log_artifact_file, log_artifact_text, log_metrics, set_note

        out = Path(self.spec.output_dir)
        old = out / "lineage.json"
        present = ({t.name for t in self.spec.tables if (out / table_path(t.name)).is_file()},
                   {f.name for f in self.spec.figures if (out / figure_path(f.name)).is_file()})
        rendered = render(self.results(), json.loads(old.read_text()) if old.is_file() else None, present)
        (out / TABLES_DIR).mkdir(parents=True, exist_ok=True)
        (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
        tables: dict[str, dict[str, str]] = {}
        figures: dict[str, dict[str, str]] = {}
        for name, texts in rendered.tables.items():
            tables[name] = {}
            for ext, text in texts.items():  # the same relative path on disk and in MLflow
                (out / table_path(name, ext)).write_text(text)
                tables[name][ext] = str(out / table_path(name, ext))
                log_artifact_text(self.uri, self.parent, table_path(name, ext), text)
        for name, fig in rendered.figures.items():
            render_figure(fig, out / FIGURES_DIR)
            (out / figure_path(name, "csv")).write_text(rendered.figure_data[name])
            figures[name] = {ext: str(out / figure_path(name, ext)) for ext in ("png", "pdf", "csv")}
            for p in figures[name].values():
                log_artifact_file(self.uri, self.parent, p, FIGURES_DIR)
        for fname, text in (("lineage.json", rendered.lineage), ("REPRODUCTION.md", rendered.reproduction),
                            ("index.md", rendered.index)):
            (out / fname).write_text(text)
            log_artifact_text(self.uri, self.parent, fname, text)
        log_metrics(self.uri, self.parent, rendered.cell_metrics)
        for run_id, note in rendered.notes.items():
            set_note(self.uri, run_id, note)
        return {"tables": tables, "figures": figures, "index": str(out / "index.md"),
                "reproduction": str(out / "REPRODUCTION.md")}


def _unit_meta(u: EvalUnit) -> dict[str, Any]:
    """What an evaluation was, in its JSON artifact: suite, protocol fingerprint, settings, models' inference."""
    return {"suite": u.suite, "protocol": u.protocol, "settings": u.settings.model_dump(mode="json"),
            "inference": u.inference_json, "sources": [[n, inf] for n, _, inf in u.sources],
            "baseline_inference": None if u.baseline is None else u.baseline[1]}


def run_pipeline(spec: PipelineSpec, only: str | None = None, log=print, dry_run: bool = False,
                 public_uri: str | None = None) -> dict[str, Any]:
    """Run the pipeline (``only``: one table or figure). Returns {"tables": {name: {fmt: path}}, "figures": ...,
    "trained", "reused", "evaluated", "evals_reused", "parent_run_id", "output_dir", "estimate"}.
    ``dry_run``: validate, print the plan and its estimated cost, start nothing. ``public_uri``: the store's URI the
    outputs name when ``spec.tracking.uri`` is a temporary server in front of it (the demo)."""
    from pipelines.cost import estimate

    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # also inherited by local Ray workers
    plan = make_plan(spec, only)  # every problem of the spec and its generated sweeps, before anything starts
    est = estimate(plan)
    log(est.summary())
    if dry_run:
        return {"tables": {}, "figures": {}, "trained": 0, "reused": 0, "evaluated": 0, "evals_reused": 0,
                "errored_trials": 0, "parent_run_id": None, "output_dir": spec.output_dir, "estimate": est}
    from robust_core.tracking import log_metrics, prepare_store, set_status, start_run
    from sweeps.runner import init_ray

    r = Runner(plan, log, public_uri)
    r.check_data()
    r.exp_id = exp_id = prepare_store(r.uri, r.exp)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    init_ray(spec.resources.cpu)
    phases = {"timing.start_at": time.time()}  # the pipeline run's timing.* (benchmarks/laptop_breakdown.py)
    t0 = time.perf_counter()
    r.run_sources()
    phases["timing.sweeps_s"] = time.perf_counter() - t0
    r.parent = start_run(r.uri, exp_id, f"final-{spec.name}" + (f"-{only}" if only else ""),
                         {f"{TAG}kind": "pipeline", f"{TAG}pipeline": spec.name})
    try:
        t0, phases["timing.retrains_at"] = time.perf_counter(), time.time()
        r.run_retrains(exp_id)
        t1, phases["timing.evals_at"] = time.perf_counter(), time.time()
        r.run_evals(exp_id)
        t2 = time.perf_counter()
        written = r.write_outputs()
        phases.update({"timing.retrains_s": t1 - t0, "timing.evals_s": t2 - t1,
                       "timing.outputs_s": time.perf_counter() - t2})
        import ray

        phases["timing.cpus"] = float(ray.cluster_resources().get("CPU", 0))
        log_metrics(r.uri, r.parent, phases)
    except BaseException:
        set_status(r.uri, r.parent, "FAILED")
        raise
    set_status(r.uri, r.parent, "FINISHED")
    return {**written, "trained": r.trained, "reused": r.reused, "evaluated": r.evaluated,
            "evals_reused": r.evals_reused, "errored_trials": r.errored_trials, "parent_run_id": r.parent,
            "output_dir": spec.output_dir, "estimate": est}

"""The final pipeline: best configuration per row (validation metric, from the sweep's MLflow runs) → retrain over
seeds as parallel Ray tasks → test-set evaluation → tables (Markdown, CSV, LaTeX), each cell traceable to its runs.

Selection reads only the sweep trials' validation metrics (trials never compute test metrics); the test set is
touched only by the retrain runs, after selection. Finished retrains are found in MLflow by the fingerprint of their
resolved config and reused, so a rerun only computes what is missing.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.spec import PipelineSpec, TableSpec
from pipelines.tables import Cell, Row, Table, render_csv, render_latex, render_markdown
from robust_core.config import ConfigError, RunConfig, build_run_config, dump_yaml, set_path

TAG = "robust_sweep."


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
    raw = cfg.to_dict()
    for path in vary:
        set_path(raw, path, seed)
    return build_run_config(raw)


def _retrain_task(cfg_dict: dict[str, Any], uri: str, run_id: str, out_dir: str) -> dict[str, Any]:
    """Runs in a Ray worker: train one seed, evaluate on test, log everything to its MLflow run."""
    from robust_core.tracking import MLflowReporter, log_artifact_file
    from robust_core.trial import MODEL_FILE, run_trial

    cfg = build_run_config(cfg_dict)
    final, _ = run_trial(cfg, MLflowReporter(uri, run_id), out_dir=out_dir, evaluate_test=True)
    log_artifact_file(uri, run_id, str(Path(out_dir) / MODEL_FILE), "model")
    return {k: v for k, v in final.items() if isinstance(v, (int, float, str))}


def _find_finished_retrain(uri: str, exp: str, fingerprint: str, metrics: list[str]):
    from robust_core.tracking import find_runs

    runs = find_runs(uri, exp, f"tags.`{TAG}kind` = 'retrain' and tags.`{TAG}config_fingerprint` = '{fingerprint}'"
                               " and attributes.status = 'FINISHED'")
    runs = [r for r in runs if all(m in r.data.metrics for m in metrics)]
    return min(runs, key=lambda r: r.info.start_time) if runs else None


def run_pipeline(spec: PipelineSpec, only: str | None = None, log=print) -> dict[str, Any]:
    """Run the pipeline; returns {"tables": {name: {format: path}}, "trained": n, "reused": n, "parent_run_id"}."""
    from robust_core.tracking import log_artifact_text, log_params, prepare_store, set_status, start_run

    tables = [t for t in spec.tables if only is None or t.name == only]
    if not tables:
        raise ConfigError([f"--only {only!r}: no such table; tables are {', '.join(t.name for t in spec.tables)}"])
    uri, exp = spec.tracking.uri, spec.tracking.experiment
    exp_id = prepare_store(uri, exp)
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. selection (fails fast, before any training, if a sweep is missing)
    selections: dict[str, Selection] = {}
    for t in tables:
        for row in t.rows:
            if row.sweep not in selections:
                selections[row.sweep] = sel = select_best(spec, row.sweep)
                log(f"[select] {row.sweep}: trial run {sel.trial_run_id} {sel.metric}={sel.value:.4f}")

    parent = start_run(uri, exp_id, f"final-{spec.name}", {f"{TAG}kind": "pipeline", f"{TAG}pipeline": spec.name})
    metrics_needed = sorted({c.metric for t in tables for c in t.columns})

    # 2. retrain every (selection, seed) not already finished
    jobs: dict[tuple[str, int], dict[str, Any]] = {}
    pending = []
    for sweep, sel in selections.items():
        for seed in spec.seeds:
            cfg = seeded(sel.config, seed, spec.vary)
            fp = cfg.fingerprint()
            done = _find_finished_retrain(uri, exp, fp, metrics_needed)
            if done is not None:
                jobs[(sweep, seed)] = {"run_id": done.info.run_id, "metrics": dict(done.data.metrics), "reused": True}
                continue
            tags = {f"{TAG}kind": "retrain", f"{TAG}pipeline": spec.name, f"{TAG}sweep": sweep,
                    f"{TAG}source_trial_run_id": sel.trial_run_id, f"{TAG}source_sweep_run_id": sel.sweep_run_id,
                    f"{TAG}seed": str(seed), f"{TAG}config_fingerprint": fp, f"{TAG}method": cfg.method.name,
                    f"{TAG}dataset": cfg.data.name}
            run_id = start_run(uri, exp_id, f"{sweep}-seed{seed}", tags, parent_run_id=parent)
            log_params(uri, run_id, cfg.flat())
            log_artifact_text(uri, run_id, "config.yaml", dump_yaml(cfg))
            pending.append((sweep, seed, cfg, run_id))
    reused = len(jobs)
    log(f"[retrain] {len(pending)} to train, {reused} reused from earlier runs")
    if pending:
        _run_retrains(spec, pending, jobs, out, log)

    # 3. tables
    written: dict[str, dict[str, str]] = {}
    lineage: dict[str, Any] = {"pipeline_run_id": parent, "tracking_uri": uri, "experiment": exp, "tables": {}}
    for t in tables:
        table = build_table(t, spec, selections, jobs)
        files = {"md": render_markdown(table), "csv": render_csv(table), "tex": render_latex(table)}
        written[t.name] = {}
        for ext, text in files.items():
            p = out / f"{t.name}.{ext}"
            p.write_text(text)
            written[t.name][ext] = str(p)
            log_artifact_text(uri, parent, f"tables/{t.name}.{ext}", text)
        lineage["tables"][t.name] = {
            row.label: {"sweep": row.sweep, "sweep_run_id": selections[row.sweep].sweep_run_id,
                        "trial_run_id": selections[row.sweep].trial_run_id,
                        "selection": {selections[row.sweep].metric: selections[row.sweep].value},
                        "retrain_run_ids": {str(s): jobs[(row.sweep, s)]["run_id"] for s in spec.seeds}}
            for row in t.rows}
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2))
    log_artifact_text(uri, parent, "lineage.json", json.dumps(lineage, indent=2))
    index = "\n".join([f"# {spec.name}", ""] + [f"- [{t.title}]({t.name}.md) ([csv]({t.name}.csv), "
                                                  f"[tex]({t.name}.tex))" for t in tables]) + "\n"
    (out / "index.md").write_text(index)
    set_status(uri, parent, "FINISHED")
    return {"tables": written, "trained": len(pending), "reused": reused, "parent_run_id": parent,
            "output_dir": str(out)}


def _run_retrains(spec: PipelineSpec, pending, jobs, out: Path, log) -> None:
    import ray

    from robust_core.tracking import set_status
    from sweeps.runner import init_ray

    init_ray(spec.resources.cpu)
    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=1)(_retrain_task)
    refs = {}
    for sweep, seed, cfg, run_id in pending:
        model_dir = out / "models" / f"{sweep}-seed{seed}-{cfg.fingerprint()}"
        refs[task.remote(cfg.to_dict(), spec.tracking.uri, run_id, str(model_dir))] = (sweep, seed, run_id)
    t0, errors = time.time(), []
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        sweep, seed, run_id = refs[ready[0]]
        try:
            final = ray.get(ready[0])
        except Exception as e:  # record and go on: the other seeds' work is kept; raised below
            set_status(spec.tracking.uri, run_id, "FAILED")
            errors.append(f"{sweep} seed {seed} (run {run_id}): {e}")
            continue
        jobs[(sweep, seed)] = {"run_id": run_id, "metrics": final, "reused": False}
        done = len(refs) - len(remaining)
        log(f"[retrain {done}/{len(refs)}] {sweep} seed {seed}: test_acc={final.get('test_acc', float('nan')):.4f}"
            f"  ({time.time() - t0:.0f}s)")
    if errors:
        raise RuntimeError("retrain failed for:\n  " + "\n  ".join(errors) + "\nfinished retrains are recorded in "
                           "MLflow and will be reused when you rerun the pipeline")


def build_table(t: TableSpec, spec: PipelineSpec, selections: dict[str, Selection], jobs) -> Table:
    rows = []
    for row in t.rows:
        sel = selections[row.sweep]
        cells = []
        for col in t.columns:
            got = [(jobs[(row.sweep, s)]["metrics"].get(col.metric), jobs[(row.sweep, s)]["run_id"]) for s in spec.seeds]
            vals = tuple(v * col.scale for v, _ in got if v is not None)
            ids = tuple(r for v, r in got if v is not None)
            note = "" if vals else f"no {col.metric} recorded for {row.sweep}"
            cells.append(Cell(vals, ids, note))
        rows.append(Row(row.label, tuple(cells), source=f"{row.sweep}/{sel.trial_run_id}"))
    return Table(t.name, t.title, tuple(c.label for c in t.columns), tuple(rows), t.higher_is_better, t.decimals)

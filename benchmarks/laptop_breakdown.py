"""Where a final pipeline's wall time goes: training, validation, evaluation, checkpoints, MLflow, Ray/Tune, idle cores.

    robust-sweep final pipelines/laptop.yaml                     # writes robust-sweep-laptop/mlflow.db
    python benchmarks/laptop_breakdown.py --tracking-uri sqlite:///robust-sweep-laptop/mlflow.db \\
        --experiment robust-sweep-laptop [--run <pipeline run id>] [--json out.json]

Reads only what the pipeline logged to MLflow (no re-run): the pipeline run's phase times (``timing.sweeps_s``,
``timing.retrains_s``, ``timing.evals_s``, ``timing.outputs_s``, ``timing.cpus``), every trial's and retrain's
``timing.*`` (``robust_core.train.fit``: setup, train, val, robust_val, test, report; ``run_trial``: save; the
trainable: its wall time and unix ``entry_at``/``end_at``; ``mlflow_send_s``: the background sender, off the
training's path) and every evaluation's (load, data, attack).

Core-seconds of each phase (wall × cores) are split into: time inside a task (a trial, a retrain or an evaluation,
from its function's entry to its end) by what the task did, and time outside any task, by when: before the phase's
first task started, between tasks while work was still waiting (Ray starting workers/actors, Tune's and Optuna's
turns, the driver), the tail (a core idle because nothing was left to start), and after the last task ended (the
driver closing the sweep). A sweep is its own window (its MLflow parent run's start and end); the time between
sweeps is the driver's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASK_PARTS = {  # timing key -> label, in the order printed
    "trial": [("setup_s", "setup (data, model, restore)"), ("train_s", "training steps"),
              ("val_s", "validation"), ("robust_val_s", "robust validation"), ("report_s", "checkpoint + report")],
    "retrain": [("setup_s", "setup (data, model, restore)"), ("train_s", "training steps"),
                ("val_s", "validation"), ("test_s", "test accuracy (per epoch + final)"),
                ("report_s", "checkpoint + report"), ("save_s", "model file"), ("upload_s", "model upload")],
    "evaluation": [("load_s", "model download + load"), ("data_s", "test data"), ("attack_s", "attacks")],
}


def slot_split(window: tuple[float, float], spans: list[tuple[float, float]], slots: float) -> dict[str, float]:
    """Core-seconds of ``window`` (start, end; unix s) × ``slots`` not covered by the task ``spans``, split into
    before the first task, between tasks while some had still to start, the tail, and after the last task."""
    s0, s1 = window
    if not spans:
        return {"before": (s1 - s0) * slots, "between": 0.0, "tail": 0.0, "after": 0.0}
    first, last_start, last_end = min(a for a, _ in spans), max(a for a, _ in spans), max(b for _, b in spans)
    events = sorted({first, last_start, last_end, *[a for a, _ in spans], *[b for _, b in spans]})
    between = tail = 0.0
    for a, b in zip(events, events[1:]):
        mid = (a + b) / 2
        running = sum(1 for x, y in spans if x <= mid < y)
        idle = max(0.0, slots - running) * (b - a)
        if b <= last_start:
            between += idle
        else:
            tail += idle
    return {"before": max(0.0, first - s0) * slots, "between": between, "tail": tail,
            "after": max(0.0, s1 - last_end) * slots}


def breakdown(uri: str, experiment: str, run_id: str | None = None) -> dict[str, Any]:
    """``run_id``: the pipeline run to break down (default: the latest one with ``timing.*`` metrics)."""
    from robust_core.tracking import find_runs

    pipes = [r for r in find_runs(uri, experiment, "tags.`robust_sweep.kind` = 'pipeline'")
             if "timing.sweeps_s" in r.data.metrics and run_id in (None, r.info.run_id)]
    if not pipes:
        print(f"error: no pipeline run {run_id or ''} with timing.* metrics in {uri} (experiment {experiment}); run "
              "`robust-sweep final <profile>` with this version first, or give --run <the id of a `final-<name>` "
              "run>", file=sys.stderr)
        raise SystemExit(2)
    pipe = max(pipes, key=lambda r: r.info.start_time)
    pm = pipe.data.metrics
    cpus = pm.get("timing.cpus", 2.0)
    out: dict[str, Any] = {"pipeline_run": pipe.info.run_id, "cpus": cpus, "phases": {}}

    start, end = pm["timing.start_at"] - 1, (pipe.info.end_time or 2**62) / 1000 + 1  # this pipeline run's tasks only

    def tasks(kind: str) -> list:
        return [r for r in find_runs(uri, experiment, f"tags.`robust_sweep.kind` = '{kind}'")
                if "timing.wall_s" in r.data.metrics and start <= r.data.metrics.get("timing.entry_at", 0) <= end]

    def phase(name: str, kind: str, wall: float, windows: list[tuple[float, float, list]]) -> None:
        runs = [r for _, _, rs in windows for r in rs]
        inside = {label: sum(r.data.metrics.get(f"timing.{k}", 0.0) for r in runs) for k, label in TASK_PARTS[kind]}
        task_wall = sum(r.data.metrics["timing.wall_s"] for r in runs)
        inside["rest of the task (imports, MLflow run open/close)"] = task_wall - sum(inside.values())
        outside = {"before": 0.0, "between": 0.0, "tail": 0.0, "after": 0.0}
        for s0, s1, rs in windows:
            for k, v in slot_split((s0, s1), [(r.data.metrics["timing.entry_at"], r.data.metrics["timing.end_at"])
                                              for r in rs], cpus).items():
                outside[k] += v
        core_s = wall * cpus
        outside["driver, outside the windows"] = core_s - task_wall - sum(outside.values())
        m = [r.data.metrics for r in runs]
        out["phases"][name] = {"wall_s": wall, "tasks": len(runs), "core_s": core_s, "task_s": task_wall,
                               "inside": inside, "outside": outside,
                               "mlflow_send_s": sum(x.get("timing.mlflow_send_s", 0.0) for x in m),
                               "mlflow_open_s": sum(x.get("timing.mlflow_open_s", 0.0) for x in m),
                               "first_step_s": sum(x.get("timing.first_step_s", 0.0) for x in m),
                               "epochs": sum(int(x.get("epoch", 0)) for x in m)}

    trials = tasks("trial")
    sweeps = [r for r in find_runs(uri, experiment, "tags.`robust_sweep.kind` = 'sweep'")
              if r.info.end_time and start <= r.info.start_time / 1000 <= end]
    by_sweep: dict[str, list] = {}
    for t in trials:
        by_sweep.setdefault(t.data.tags.get("mlflow.parentRunId", ""), []).append(t)
    out["sweeps"] = len(sweeps)
    phase("sweeps", "trial", pm["timing.sweeps_s"],
          [(s.info.start_time / 1000, s.info.end_time / 1000, by_sweep.get(s.info.run_id, [])) for s in sweeps])
    r0 = pm["timing.retrains_at"]
    phase("retrains", "retrain", pm["timing.retrains_s"], [(r0, r0 + pm["timing.retrains_s"], tasks("retrain"))])
    e0 = pm["timing.evals_at"]
    phase("evaluations", "evaluation", pm["timing.evals_s"], [(e0, e0 + pm["timing.evals_s"], tasks("evaluation"))])
    out["outputs_s"] = pm.get("timing.outputs_s", 0.0)
    out["total_s"] = pm["timing.sweeps_s"] + pm["timing.retrains_s"] + pm["timing.evals_s"] + out["outputs_s"]
    return out


OUTSIDE_LABELS = {"before": "before the first task (driver, Tune/Ray start, first workers)",
                  "between": "between tasks while work waited (worker/actor start, Tune, Optuna)",
                  "tail": "tail: a core idle, nothing left to start",
                  "after": "after the last task (driver closes the sweep/phase)",
                  "driver, outside the windows": "driver between sweeps (selection, MLflow)"}


def render(b: dict[str, Any]) -> str:
    lines = [f"Total {b['total_s'] / 60:.1f} min on {b['cpus']:.0f} cores (tables and figures: "
             f"{b['outputs_s']:.0f} s). Core-seconds = wall × cores.", "",
             "| phase | wall (min) | tasks | where the core-seconds go | core-s | share |", "|---|---|---|---|---|---|"]
    for name, p in b["phases"].items():
        first = True
        rows = [(f"in {name[:-1] if name != 'evaluations' else 'evaluation'}s: {k}", v) for k, v in p["inside"].items()]
        rows += [(f"outside: {OUTSIDE_LABELS[k]}", v) for k, v in p["outside"].items()]
        for label, v in rows:
            if v == 0:
                continue
            head = f"| {name} | {p['wall_s'] / 60:.1f} | {p['tasks']} " if first else "| | | "
            lines.append(f"{head}| {label} | {v:.0f} | {100 * v / p['core_s']:.1f} % |")
            first = False
        lines.append(f"| | | | (MLflow sender thread, overlapping the above) | {p['mlflow_send_s']:.0f} | "
                     f"{100 * p['mlflow_send_s'] / p['core_s']:.1f} % |")
    per = b["phases"]["sweeps"]
    n = max(1, per["tasks"])
    per_epoch = (per["mlflow_send_s"] - per["mlflow_open_s"]) / max(1, per["epochs"])
    lines += ["", f"Per trial (mean of {per['tasks']}): wall {per['task_s'] / n:.1f} s; from the trial function's "
              f"entry to its first training step {per['first_step_s'] / n:.1f} s (setup "
              f"{per['inside']['setup (data, model, restore)'] / n:.1f} s of it); training steps "
              f"{per['inside']['training steps'] / n:.1f} s; checkpoint + report "
              f"{per['inside']['checkpoint + report'] / n:.1f} s. MLflow, in the trial's sender thread: creating the "
              f"run {per['mlflow_open_s'] / n:.1f} s (with the first import of MLflow and SQLAlchemy in the process), "
              f"then {per_epoch:.2f} s per epoch logged ({per['epochs']} epochs). Before a sweep's first trial "
              f"starts: {per['outside']['before'] / max(1, b['sweeps']) / b['cpus']:.1f} s wall per sweep "
              f"({b['sweeps']} sweeps)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default="sqlite:///robust-sweep-laptop/mlflow.db")
    ap.add_argument("--experiment", default="robust-sweep-laptop")
    ap.add_argument("--run", help="the pipeline run (`final-<name>`) to break down; default: the latest with timings "
                                  "(a later `--only` rerun that reused everything is one too)")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args(argv)
    b = breakdown(a.tracking_uri, a.experiment, a.run)
    print(render(b))
    if a.json:
        Path(a.json).write_text(json.dumps(b, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

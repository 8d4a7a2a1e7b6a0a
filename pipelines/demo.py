"""``robust-sweep demo``: the whole path on this machine, offline, on ``mnist5k``.

Runs the MLE and VAT sweeps through Ray Tune + Optuna + ASHA, then the final pipeline (best config × seeds → test →
table), and prints where the table is, the commands that reuse its runs, and how to open the MLflow UI on them.

The store is ``OUT/mlflow.db`` with artifacts in ``OUT/artifacts`` as plain files, so everything the README does
with a run id works with ``--tracking-uri sqlite:///OUT/mlflow.db`` after the demo. While the demo runs, a local
MLflow server on 127.0.0.1 sits in front of the database (one writer process: concurrent trials lose nothing); the
experiment is created first with a file artifact location, so clients write artifacts straight to ``OUT/artifacts``
and nothing in the store refers to the server, which is gone when the demo ends. Nothing the demo writes or prints
names that server.
"""
from __future__ import annotations

import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEPS = HERE.parent / "sweeps" / "configs"

QUICK_SWEEP = ["num_trials=2", "base.train.epochs=2", "base.train.steps_per_epoch=20"]
QUICK_PIPELINE = {"seeds": [0, 1]}
SWEEP_FILES = ("demo_mle.yaml", "demo_vat.yaml")  # their tracking.experiment is the one pipelines/demo.yaml reads


def run_demo(out: Path, quick: bool = False) -> int:
    from pipelines.final import run_pipeline
    from pipelines.spec import load_pipeline_spec
    from robust_core.tracking import prepare_store, start_local_server, stop_local_server
    from sweeps.runner import run_sweep
    from sweeps.spec import load_sweep_config

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "mlflow.db"
    store = f"sqlite:///{db}"
    t0 = time.time()
    quick_sweep = QUICK_SWEEP if quick else []
    local = [f"storage={out / 'ray'}", f"tracking.uri={store}"]
    # every config is validated before anything starts (the server URI is filled in below)
    sweeps = [load_sweep_config(SWEEPS / f, local + quick_sweep) for f in SWEEP_FILES]
    spec = load_pipeline_spec(HERE / "demo.yaml",
                              {"output_dir": str(out / "results"), **(QUICK_PIPELINE if quick else {})})
    # the experiments exist before the server starts: their artifact location is the folder OUT/artifacts/<name>,
    # which a sqlite:/// client reads directly (an experiment the server created would store mlflow-artifacts:/ URIs)
    for exp in {c.tracking.experiment for c in sweeps} | {spec.tracking.experiment}:
        prepare_store(store, exp)
    uri, server = start_local_server(db, out / "artifacts")
    errored = 0
    try:
        print(f"[demo] MLflow store: {store}", flush=True)
        for f in SWEEP_FILES:
            cfg = load_sweep_config(SWEEPS / f, local + [f"tracking.uri={uri}"] + quick_sweep)
            print(f"[demo] sweep {cfg.name}: {cfg.num_trials} trials", flush=True)
            summary = run_sweep(cfg)
            errored += summary.n_errored
            print(f"[demo] {summary}", flush=True)
        res = run_pipeline(spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": uri})}),
                           public_uri=store)
    finally:
        stop_local_server(server)
    for name, files in res["tables"].items():
        print(Path(files["md"]).read_text())
        print(f"[demo] table written to {files['md']} (also .csv, .tex); lineage: {out / 'results' / 'lineage.json'}")
    exp = spec.tracking.experiment
    print(f"[demo] finished in {(time.time() - t0) / 60:.1f} min. Reuse its runs (run ids: lineage.json, or "
          f"robust-sweep report demo-vat --tracking-uri {store} --experiment {exp}):\n"
          f"  robust-sweep eval <retrain run id> --tracking-uri {store} --suite whitebox\n"
          f"  robust-sweep trial --from-run <trial run id> --tracking-uri {store}\n"
          f"[demo] open the MLflow UI with:\n  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000\n"
          f"then browse http://127.0.0.1:5000 (experiment '{exp}')", flush=True)
    return 1 if errored or res["errored_trials"] else 0  # the one exit-code rule (robust_core/cli.py)

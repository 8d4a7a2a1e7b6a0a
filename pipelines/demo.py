"""``robust-sweep demo``: the whole path on this machine, offline, on ``mnist5k``.

Starts a local MLflow server on 127.0.0.1 (SQLite backend: one writer process, so concurrent trials lose nothing),
runs the MLE and VAT sweeps through Ray Tune + Optuna + ASHA, then the final pipeline (best config × seeds →
test → table), and prints where the table is and how to open the MLflow UI on the results.
"""
from __future__ import annotations

import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEPS = HERE.parent / "sweeps" / "configs"

QUICK_SWEEP = ["num_trials=2", "base.train.epochs=2", "base.train.steps_per_epoch=20"]
QUICK_PIPELINE = {"seeds": [0, 1]}


def run_demo(out: Path, quick: bool = False) -> int:
    from pipelines.final import run_pipeline
    from pipelines.spec import load_pipeline_spec
    from robust_core.tracking import start_local_server
    from sweeps.runner import run_sweep
    from sweeps.spec import load_sweep_config

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "mlflow.db"
    t0 = time.time()
    # validate every config before anything starts
    common = [f"storage={out / 'ray'}"]
    sweeps = [load_sweep_config(SWEEPS / f, common + (QUICK_SWEEP if quick else []))
              for f in ("demo_mle.yaml", "demo_vat.yaml")]
    uri, server = start_local_server(db, out / "artifacts")
    try:
        print(f"[demo] MLflow server at {uri} (store: {db})", flush=True)
        sweeps = [load_sweep_config(SWEEPS / f, common + [f"tracking.uri={uri}"] + (QUICK_SWEEP if quick else []))
                  for f in ("demo_mle.yaml", "demo_vat.yaml")]
        for cfg in sweeps:
            print(f"[demo] sweep {cfg.name}: {cfg.num_trials} trials", flush=True)
            s = run_sweep(cfg)
            print(f"[demo] sweep {cfg.name} done: {s}", flush=True)
        over = {"tracking": {"uri": uri}, "output_dir": str(out / "results"), **(QUICK_PIPELINE if quick else {})}
        spec = load_pipeline_spec(HERE / "demo.yaml", over)
        res = run_pipeline(spec)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, files in res["tables"].items():
        print(Path(files["md"]).read_text())
        print(f"[demo] table written to {files['md']} (also .csv, .tex); lineage: {out / 'results' / 'lineage.json'}")
    print(f"[demo] finished in {(time.time() - t0) / 60:.1f} min")
    print(f"[demo] open the MLflow UI with:\n  mlflow ui --backend-store-uri sqlite:///{db} "
          f"--default-artifact-root {out / 'artifacts'} --host 127.0.0.1 --port 5000\n"
          f"then browse http://127.0.0.1:5000 (experiment 'robust-sweep-demo')")
    return 0

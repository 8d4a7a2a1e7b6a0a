"""Does ASHA save what it promises? The same sweep run twice, with ASHA and to full budget, through the real stack.

    python benchmarks/asha_vs_full.py                                 # laptop VAT-100 + MLE-100 sweeps, 16 trials
    python benchmarks/asha_vs_full.py --sweeps laptop-vat-mnist-100 --trials 16 --seeds 0 1 2 --grace 1 --rf 3

Each sweep is one of ``pipelines/laptop.yaml``'s (mnist5k, MLP 256-128, 6 epochs × 50 steps; its search space and
base config as the profile builds them), with ``--trials`` trials, 2 at a time, sweep seed ``--seeds``: once with
ASHA (``--grace``, ``--rf``) and once with no scheduler (every trial runs all epochs). Same seed and space, so TPE
proposes the same first trials in both; after that each sweep's TPE sees its own results. Ray Tune + Optuna +
MLflow run as in production, into a temporary folder (``--out``).

Reported per sweep and seed: the best validation accuracy each finds (the sweep's pick: full-budget trials first,
then the metric at their last epoch) and the epochs each spent (summed over trials: independent of machine speed).

``--replay`` then replays ASHA offline on the full sweeps' learning curves for a grid of grace periods and reduction
factors (Ray's own ``_Bracket`` decision rule; 2 trials at a time, one epoch per time unit), over ``--orders`` random
orders of the trials: asynchronous ASHA decides against the trials that happened to report first, so one order is
one draw. The replay cannot show that TPE would propose other trials after pruning, so it ranks settings; the real
runs above are the measurement.
"""
from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def laptop_sweep(prefix: str) -> dict[str, Any]:
    from pipelines.plan import make_plan
    from pipelines.spec import load_pipeline_spec

    root = Path(__file__).resolve().parent.parent
    plan = make_plan(load_pipeline_spec(root / "pipelines" / "laptop.yaml"), None)
    names = [n for n in plan.sweep_raw if n.startswith(prefix + "-")]
    if len(names) != 1:
        raise SystemExit(f"error: --sweeps {prefix!r} matches {names or 'nothing'}; laptop sweeps: "
                         f"{sorted(n.rsplit('-', 1)[0] for n in plan.sweep_raw)}")
    return plan.sweep_raw[names[0]]


def curves(uri: str, experiment: str, sweep: str) -> list[dict[str, Any]]:
    """Per trial, in start order: val_acc by epoch (as logged), epochs done."""
    from robust_core import tracking

    runs = tracking.find_runs(uri, experiment, f"tags.`{tracking.TAG}.kind` = 'trial' and "
                                               f"tags.`{tracking.TAG}.sweep` = '{sweep}'")
    out = []
    for r in runs:
        hist = sorted(tracking.client(uri).get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)
        out.append({"val": [m.value for m in hist], "epochs": int(r.data.tags.get(f"{tracking.TAG}.epochs_done", 0))})
    return out


def run_one(raw: dict[str, Any], name: str, trials: int, seed: int, scheduler: dict, out: Path) -> dict[str, Any]:
    from sweeps.runner import run_sweep
    from sweeps.spec import build_sweep_config

    cfg = build_sweep_config({**raw, "name": name, "num_trials": trials, "max_concurrent": 2, "seed": seed,
                              "scheduler": scheduler, "storage": str(out / "ray"),
                              "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "asha-vs-full"}})
    t0 = time.perf_counter()
    summary = run_sweep(cfg, progress=False)
    c = curves(cfg.tracking.uri, cfg.tracking.experiment, name)
    return {"name": name, "best": summary.best.get("value"), "epochs": sum(t["epochs"] for t in c),
            "budget": trials * cfg.max_t, "max_t": cfg.max_t, "stopped": summary.n_stopped_early,
            "errored": summary.n_errored, "wall_s": time.perf_counter() - t0, "curves": c}


def replay(trial_curves: list[list[float]], max_t: int, grace: int, rf: float, concurrent: int = 2
           ) -> tuple[float, int]:
    """ASHA on recorded curves: (best last-epoch val of the trials that reach max_t, epochs spent)."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(grace, max_t, rf, 0)
    events: list[tuple[int, int, int]] = []  # (time, trial index, epoch)
    nxt, spent, finished = 0, 0, []

    def start(t: int) -> None:
        nonlocal nxt
        if nxt < len(trial_curves):
            heapq.heappush(events, (t + 1, nxt, 1))
            nxt += 1

    for _ in range(concurrent):
        start(0)
    while events:
        t, i, e = heapq.heappop(events)
        spent += 1
        val = trial_curves[i][e - 1]
        stop = bracket.on_result(SimpleNamespace(trial_id=str(i)), e, val) == TrialScheduler.STOP
        if e >= max_t:
            finished.append(val)
        if stop or e >= max_t:
            start(t)
        else:
            heapq.heappush(events, (t + 1, i, e + 1))
    return (max(finished) if finished else float("nan")), spent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", nargs="+", default=["laptop-vat-mnist-100", "laptop-mle-mnist-100"],
                    help="laptop sweeps by name without the hash suffix")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--rf", type=float, default=3)
    ap.add_argument("--replay", action="store_true", help="also replay ASHA on the full sweeps' curves (grid)")
    ap.add_argument("--orders", type=int, default=200, help="random trial orders per full sweep in the replay")
    ap.add_argument("--full-from", nargs="*", help="reuse the full-budget sweeps of earlier --json files (same "
                    "sweep, seed and trial count: training is deterministic, so they would repeat exactly)")
    ap.add_argument("--from-json", nargs="*", help="skip the sweeps: reuse the rows of earlier --json files "
                    "(e.g. to replay with other settings)")
    ap.add_argument("--out", help="folder for Ray results and the MLflow store (default: a new temporary folder)")
    ap.add_argument("--json", help="also write everything here")
    a = ap.parse_args(argv)
    rows = [r for f in a.from_json or [] for r in json.loads(Path(f).read_text())]
    out = None if a.from_json else Path(a.out or tempfile.mkdtemp(prefix="asha-vs-full-")).resolve()
    reused = {r["full"]["name"]: r["full"] for f in a.full_from or [] for r in json.loads(Path(f).read_text())}
    try:
        for prefix in [] if a.from_json else a.sweeps:
            raw = laptop_sweep(prefix)
            for seed in a.seeds:
                tag = f"{prefix}-s{seed}-n{a.trials}"
                asha = run_one(raw, f"{tag}-asha-g{a.grace}-rf{a.rf:g}", a.trials, seed,
                               {"type": "asha", "grace_period": a.grace, "reduction_factor": a.rf}, out)
                full = reused.get(f"{tag}-full") or run_one(raw, f"{tag}-full", a.trials, seed, {"type": "none"}, out)
                rows.append({"sweep": prefix, "seed": seed, "asha": asha, "full": full})
                print(f"{prefix} seed {seed}: ASHA best {asha['best']:.4f} in {asha['epochs']} epochs; full best "
                      f"{full['best']:.4f} in {full['epochs']} epochs ({asha['wall_s']:.0f} s, {full['wall_s']:.0f} s)",
                      file=sys.stderr, flush=True)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    print(f"\nEach pair: same sweep, seed, space and trial count, 2 trials at a time"
          f"{f'; results under {out}' if out else ''}\n")
    print("| ASHA sweep | best val, ASHA | best val, full | Δ (points) | epochs, ASHA | epochs, full | ASHA/full |"
          "\n|---|---|---|---|---|---|---|")
    for r in rows:
        s, f = r["asha"], r["full"]
        print(f"| {s['name']} | {s['best']:.3f} | {f['best']:.3f} | {100 * (s['best'] - f['best']):+.1f} | "
              f"{s['epochs']} | {f['epochs']} | {s['epochs'] / f['epochs']:.0%} |")
    if a.replay:
        import random

        print(f"\nReplay on the full sweeps' curves, {a.orders} random trial orders per sweep (async ASHA's decisions "
              "depend on which trials report first): Δ best val (points) vs the full sweep; epochs as a fraction "
              "of the full budget\n")
        print("| grace | rf | Δ best, mean | P(Δ < −0.5) | epochs, mean |\n|---|---|---|---|---|")
        rng = random.Random(0)
        for grace in (1, 2, 3):
            for rf in (2, 3, 4):
                d, frac = [], []
                for r in rows:
                    f = r["full"]
                    cs = [c["val"] for c in f["curves"]]
                    for _ in range(a.orders):
                        best, spent = replay(rng.sample(cs, len(cs)), f["max_t"], grace, rf)
                        d.append(100 * (best - f["best"]))
                        frac.append(spent / f["budget"])
                lose = sum(x < -0.5 for x in d) / len(d)
                print(f"| {grace} | {rf} | {statistics.mean(d):+.2f} | {lose:.0%} | {statistics.mean(frac):.0%} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

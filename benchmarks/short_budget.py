"""Train several variants side by side under one fixed budget on mnist5k; print test accuracy and per-step time.

Every variant runs in this one process, one after the other, with the same data split, model and budget, so the
times are comparable (relative to MLE); numbers go to stdout as a Markdown table and to --json.

    python benchmarks/short_budget.py                       # every registered method, defaults, 100 labels
    python benchmarks/short_budget.py --variants vat-exact=method.name=vat,method.params.direction=exact ...

A variant is LABEL=comma-separated overrides. Supervised methods use all labels unless --labels applies to them
too (--labels-for-all). Reported: final val accuracy, test accuracy (this is a benchmark, not model selection),
milliseconds per training step (validation excluded) and the ratio to MLE's.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from robust_core.config import load_run_config
from robust_core.registry import METHODS
from robust_core.train import evaluate, fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", help="LABEL=overrides (default: every registered method)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=100, help="steps per epoch")
    ap.add_argument("--labels", type=int, default=100, help="labels for semi-supervised methods")
    ap.add_argument("--labels-for-all", action="store_true", help="also give supervised methods only --labels labels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--set", action="append", default=[], help="override applied to every variant")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = [v.split("=", 1) for v in a.variants] if a.variants else [[m, f"method.name={m}"] for m in METHODS]
    if "mle" not in [lab for lab, _ in variants]:
        variants.insert(0, ["mle", "method.name=mle"])
    rows = []
    for label, over in variants:
        ov = [o for o in over.split(",") if o]
        cfg = load_run_config(overrides=ov + a.set + [f"train.epochs={a.epochs}", f"train.steps_per_epoch={a.steps}",
                                                     f"train.seed={a.seed}"])
        ssl = METHODS.get(cfg.method.name).uses_unlabeled or a.labels_for_all
        if ssl and cfg.data.n_labeled is None:
            cfg = load_run_config(overrides=ov + a.set + [f"train.epochs={a.epochs}", f"train.seed={a.seed}",
                                                         f"train.steps_per_epoch={a.steps}", f"data.n_labeled={a.labels}"])
        t0 = time.perf_counter()
        res = fit(cfg)
        wall = time.perf_counter() - t0
        train_s = sum(h["epoch_time_s"] for h in res.history)  # includes the per-epoch validation pass
        te = evaluate(res.inference_model, *res.data.test)
        rows.append({"variant": label, "labels": cfg.data.n_labeled or "all", "val_acc": res.last["val_acc"],
                     "val_curve": [round(h["val_acc"], 3) for h in res.history], "test_acc": te["acc"],
                     "ms_per_step": 1000 * train_s / (a.epochs * a.steps), "wall_s": wall})
        print(f"{label}: val {rows[-1]['val_curve']} test {te['acc']:.3f} ({wall:.0f}s)", file=sys.stderr, flush=True)
    base = next(r["ms_per_step"] for r in rows if r["variant"] == "mle")
    print(f"\nmnist5k, budget {a.epochs}x{a.steps} steps, seed {a.seed}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")
    print("| variant | labels | val acc | test acc | ms/step | × MLE |\n|---|---|---|---|---|---|")
    for r in rows:
        r["x_mle"] = r["ms_per_step"] / base
        print(f"| {r['variant']} | {r['labels']} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | "
              f"{r['ms_per_step']:.1f} | {r['x_mle']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the robust validation metric (``train.robust_val``: ``val_robust_acc``) adds to a trial, on the laptop
profile's shapes: mnist5k, MLP 256-128, batch 64, 50 steps per epoch, 6 epochs, 500 validation digits, L∞ ε = 0.3.

In one process, one after the other: one training epoch of each method that robust tables select (its ``epoch_time_s``:
training + clean validation), then the robust validation of that model (PGD-k from a seeded random start, eval mode,
``train.eval_batch_size`` examples per batch) for each ``n_examples``; the median of ``--repeats`` runs. Printed as a
Markdown table: seconds per epoch, seconds per robust validation, and the share it adds to a trial of ``--epochs``
epochs that computes it ``--computations`` times (the laptop profile: ASHA rungs 2, 4 and the last epoch = 3), beside
``pipelines/cost.py``'s estimate of that share.

    python benchmarks/robust_val.py --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch

from pipelines.cost import STEP_COST, robust_val_steps
from robust_core.config import load_run_config
from robust_core.data import prepare_data
from robust_core.train import fit, robust_validation

LAPTOP = ["data.name=mnist5k", "data.n_val=500", "model.name=mlp", "model.params.hidden=[256, 128]",
          "train.batch_size=64", "train.steps_per_epoch=50", "train.lr=0.002", "train.device=cpu"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=["mle", "at_fgsm", "ro", "pgd_at", "trades"])
    ap.add_argument("--n-examples", nargs="*", type=int, default=[200, 500])
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the robust validation")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the trial the share is computed for")
    ap.add_argument("--computations", type=int, default=3, help="robust validations per trial (rungs + last)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), python {sys.version.split()[0]}")
    data = prepare_data(load_run_config(overrides=LAPTOP).data)
    print("| method | s/epoch | " + " | ".join(f"s/robust val (n={n}) | share (n={n}) | estimate (n={n})"
                                             for n in a.n_examples) + " |")
    print("|---|---|" + "---|---|---|" * len(a.n_examples))
    for method in a.methods:
        cfg = load_run_config(overrides=LAPTOP + [f"method.name={method}", "train.epochs=1"]
                              + (["method.params.eps=0.3"] if method in ("pgd_at", "trades") else []))
        res = fit(cfg, data=data)
        epoch_s = res.history[-1]["epoch_time_s"]
        cells = []
        for n in a.n_examples:
            rv = load_run_config(overrides=[f"train.robust_val.steps={a.steps}", f"train.robust_val.n_examples={n}"]
                                 ).train.robust_val
            secs = statistics.median(
                robust_validation(res.inference_model, *data.val, rv, cfg.data.name, cfg.train.eval_batch_size)
                ["val_robust_time_s"] for _ in range(a.repeats))
            share = a.computations * secs / (a.epochs * epoch_s)
            base = {"data": {"n_val": 500}, "train": {"epochs": a.epochs, "batch_size": 64, "robust_val": {
                "attack": "pgd", "steps": a.steps, "n_examples": n, "epochs": list(range(1, a.computations))}}}
            est = robust_val_steps(base) / (a.epochs * 50 * STEP_COST.get(method, 3.0))
            cells.append(f"{secs:.3f} | {share:.0%} | {est:.0%}")
        print(f"| {method} | {epoch_s:.3f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""VAT's power-iteration direction, ``exact`` (the ξ → 0 limit) vs the secant (``finite_difference`` at ξ), over ε
and seeds on mnist5k with 100 labels; ε selected on validation accuracy, never on test.

    python benchmarks/vat_direction.py --seeds 0 1 2 --eps 1 2 4 8 --threads 1 --json /tmp/vat_direction.json
    python benchmarks/vat_direction.py ... --eps 1 2 4 6 8 --secant-eps 1 2 4 8 --resume   # add ε = 6, reuse the rest

The run config is the demo sweep's base (``sweeps/configs/demo_vat.yaml``: the VAT MNIST MLP 1200-600-300-150,
8 × 100 updates, lr 0.002, 100 labels, 500 validation digits) with ``method.params.direction`` and ``eps`` set; MLE
is the same config with ``method.name=mle``. Seed s sets ``train.seed`` and ``data.split_seed`` (initialisation,
batch order, labeled/validation split), as the demo's final pipeline does. For each seed and direction the ε with
the best final validation accuracy is selected (a grid-search sweep) and that run's test accuracy is reported.

Also measured, on each seed's trained MLE model and selected exact-direction VAT model: the cosine between the secant
step ∇_r KL(p(x) ‖ p(x + r)) at r = ξd and the exact power-iteration step H·d, for 500 test digits and a random unit
d each (median and fraction below 0). Every run happens in this one process, one after the other, so ms/step (which
includes the per-epoch validation pass) is comparable between variants.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from robust_core.config import build_run_config, read_yaml
from robust_core.methods._ops import kl_hessian_direction, l2_normalize
from robust_core.modes import frozen_bn_stats
from robust_core.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]

DIRECTIONS = ("exact", "finite_difference")


def config(base: dict, over: dict, seed: int, method: str, **params):
    raw = {**base, "method": {"name": method, "params": params},
           "train": {**base["train"], "seed": seed}, "data": {**base["data"], "split_seed": seed}}
    return build_run_config(raw, "benchmark config").with_values(over, "--set")


def secant_cosines(model, x: torch.Tensor, xi: float, seed: int) -> list[float]:
    """Per example cos(secant at ξ, exact H·d) for one random unit d per example; BN statistics untouched."""
    g = torch.Generator().manual_seed(seed)
    d = l2_normalize(torch.randn(x.shape, generator=g, dtype=x.dtype))
    model.train()
    with frozen_bn_stats(model):
        exact, _ = kl_hessian_direction(model, x, d, "exact")
        secant, _ = kl_hessian_direction(model, x, d, "finite_difference", xi=xi)
    return F.cosine_similarity(exact.flatten(1).double(), secant.flatten(1).double(), dim=1).tolist()


def mean_std(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0.0):.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0],
                    help="ε grid of the exact direction, pixel units (L2)")
    ap.add_argument("--secant-eps", type=float, nargs="*", help="ε grid of the secant (default: --eps; none: skip)")
    ap.add_argument("--xi", type=float, default=10.0, help="the secant's ξ (pixel units)")
    ap.add_argument("--base", default=str(ROOT / "sweeps/configs/demo_vat.yaml"), help="sweep config whose base is used")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE applied to every run (train.epochs=4)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--n-cos", type=int, default=500, help="test digits for the cosine measurement")
    ap.add_argument("--json", help="write every run here (rewritten after each run)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the VAT runs already in --json with the same resolved config (MLE always reruns: the "
                         "cosine measurement needs its model)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = read_yaml(a.base)["base"]
    over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    grids = {"exact": a.eps, "finite_difference": a.eps if a.secant_eps is None else a.secant_eps}
    directions = [d for d in DIRECTIONS if grids[d]]
    cached = {}
    if a.resume and a.json and Path(a.json).is_file():
        cached = {r["fingerprint"]: r for r in json.loads(Path(a.json).read_text())["runs"] if r["method"] == "vat"}
    runs: list[dict] = []
    models: dict[tuple, torch.nn.Module] = {}
    data = {}
    variants = [("mle", None, None)] + [("vat", d, e) for d in directions for e in grids[d]]
    for seed in a.seeds:
        for method, direction, eps in variants:
            params = {} if method == "mle" else {"direction": direction, "eps": eps, "xi": a.xi}
            cfg = config(base, over, seed, method, **params)
            if cfg.fingerprint() in cached:
                runs.append(cached[cfg.fingerprint()])
                continue
            t0 = time.perf_counter()
            res = fit(cfg)
            wall = time.perf_counter() - t0
            te = evaluate(res.inference_model, *res.data.test)
            steps = cfg.train.epochs * cfg.train.steps_per_epoch
            r = {"seed": seed, "method": method, "direction": direction, "eps": eps, "val_acc": res.last["val_acc"],
                 "val_curve": [round(h["val_acc"], 3) for h in res.history], "test_acc": te["acc"],
                 "ms_per_step": 1000 * sum(h["epoch_time_s"] for h in res.history) / steps, "wall_s": wall,
                 "fingerprint": cfg.fingerprint()}
            runs.append(r)
            models[(seed, method, direction, eps)] = res.model
            data[seed] = res.data
            print(f"seed {seed} {method} {direction or ''} eps={eps}: val {r['val_curve']} test {te['acc']:.3f} "
                  f"({wall:.0f}s)", file=sys.stderr, flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps({"runs": runs}, indent=2))
        # keep only what the cosine measurement needs: the MLE model and the selected exact-direction model
        exact = [r for r in runs if r["seed"] == seed and r["direction"] == "exact"]
        keep = {(seed, "mle", None, None)} | {(seed, "vat", "exact", max(exact, key=lambda r: r["val_acc"])["eps"])
                                               for _ in exact[:1]}
        for k in [k for k in models if k[0] == seed and k not in keep]:
            del models[k]

    print(f"\nmnist5k, 100 labels, base {Path(a.base).name} {base['train']} {over or ''}, seeds {a.seeds}, ξ = {a.xi}, "
          f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s)\n")
    print("| method | direction | ε | val acc % | test acc % | val / test per seed | ms/step |")
    print("|---|---|---|---|---|---|---|")
    for method, direction, eps in variants:
        rs = [r for r in runs if (r["method"], r["direction"], r["eps"]) == (method, direction, eps)]
        per = " · ".join(f"{100 * r['val_acc']:.1f}/{100 * r['test_acc']:.1f}" for r in rs)
        print(f"| {method} | {direction or '—'} | {eps if eps is not None else '—'} | "
              f"{mean_std([r['val_acc'] for r in rs])} | {mean_std([r['test_acc'] for r in rs])} | {per} | "
              f"{statistics.mean(r['ms_per_step'] for r in rs):.1f} |")

    print("\nε selected per seed on final validation accuracy (grid above); test accuracy of the selected run, and its "
          "difference to MLE on the same seed:\n")
    print("| direction | selected ε per seed | test acc % | test − MLE (points) |\n|---|---|---|---|")
    selected = {}
    for direction in directions:
        sel = [max((r for r in runs if r["seed"] == s and r["direction"] == direction), key=lambda r: r["val_acc"])
               for s in a.seeds]
        mle = [next(r for r in runs if r["seed"] == s and r["method"] == "mle") for s in a.seeds]
        diff = [x["test_acc"] - m["test_acc"] for x, m in zip(sel, mle)]
        selected[direction] = sel
        print(f"| {direction} | {' / '.join(str(r['eps']) for r in sel)} | {mean_std([r['test_acc'] for r in sel])} | "
              f"{mean_std(diff)} (min {100 * min(diff):.2f}) |")

    print(f"\nCosine between the secant at ξ = {a.xi} and the exact H·d, {a.n_cos} test digits per model (models "
          "trained in this invocation):\n")
    print("| model | seed | median cos | fraction < 0 |\n|---|---|---|---|")
    cos_rows = []
    for seed in a.seeds:
        x = data[seed].test[0][: a.n_cos]
        which = [("MLE", (seed, "mle", None, None))]
        for best in [r for r in selected.get("exact", []) if r["seed"] == seed]:
            which.append((f"VAT exact ε={best['eps']}", (seed, "vat", "exact", best["eps"])))
        for label, key in which:
            if key not in models:
                continue
            c = secant_cosines(models[key], x, a.xi, seed)
            cos_rows.append({"model": label, "seed": seed, "median": statistics.median(c),
                             "neg": sum(v < 0 for v in c) / len(c)})
            print(f"| {label} | {seed} | {statistics.median(c):.3f} | {cos_rows[-1]['neg']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "cosines": cos_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

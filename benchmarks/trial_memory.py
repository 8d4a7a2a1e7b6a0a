"""Peak memory of one trial's training step for every (model, batch, method) of a profile, and the GPU share it needs.

    python benchmarks/trial_memory.py                       # the paper profile
    python benchmarks/trial_memory.py --profile laptop --gpu-gib 80

No GPU needed: each row's step (the method's loss under the profile's autocast, backward, the fused optimiser step,
channels_last where configured) is accounted on fake tensors (``benchmarks/_memory.py``: parameters, gradients,
optimiser state, per-example method parameters at the real training-set size, activations, temporaries; nothing is
computed), for two steps so the optimiser state exists. The shapes and methods are those the profile's sweeps train
(``benchmarks/step_cost.py`` derives them from the profile).

need GiB = (peak + CUDA context) × (1 + margin): the context (``--context-gib``, default 0.5 GiB per process) and the
margin (``--margin``, default 0.3: caching-allocator fragmentation, cuDNN/cuBLAS workspaces, CUDA-vs-CPU autocast
coverage) are ASSUMPTIONS until measured on a GPU (``benchmarks/step_cost.py`` reports ``max_memory_allocated``
there). ``mem share`` = need / ``--gpu-gib``: the smallest ``resources.gpu`` by memory. Whether that many trials per
GPU are also worth it for compute is not known without a GPU.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import accounting_or_empty  # noqa: E402
from step_cost import machine, n_train, run_config, shapes_from_profiles  # noqa: E402

from robust_core.registry import DATASETS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (A100/H100 80 GB: 80)")
    ap.add_argument("--context-gib", type=float, default=0.5)
    ap.add_argument("--margin", type=float, default=0.3)
    a = ap.parse_args(argv)
    print(f"# trial_memory: profile {a.profile}; {machine()}\n# need = (peak + {a.context_gib} GiB) × "
          f"{1 + a.margin:g}; share of a {a.gpu_gib:g} GiB GPU\n")
    print("| shape | method | params+grads+opt MiB | peak MiB | need GiB | mem share | trials/GPU by memory |\n"
          "|---|---|---|---|---|---|---|")
    worst: dict[str, float] = {}
    for s in shapes_from_profiles([a.profile]):
        info = DATASETS.get(s.dataset).info
        for lab, row in s.rows.items():
            t0 = time.perf_counter()
            cfg = run_config(s, row, 1, 1, "cpu")
            c = accounting_or_empty(cfg, info, s.batch, s.unlabeled if row["ssl"] else 0, n_train=n_train(s),
                                    passes_only_fallback=False)
            if not c:
                print(f"| {s.label} ({s.dataset} B={s.batch}) | {lab} | — | — | — | — | — |", flush=True)
                continue
            need = (c["peak_bytes"] / 2**30 + a.context_gib) * (1 + a.margin)
            share = need / a.gpu_gib
            worst[s.label] = max(worst.get(s.label, 0.0), share)
            print(f"| {s.label} ({s.dataset} B={s.batch}{f' U={s.unlabeled}' if row['ssl'] else ''}"
                  f"{', ' + cfg.train.amp if cfg.train.amp != 'off' else ''}) | {lab} | {c['state_bytes'] / 2**20:.0f} | "
                  f"{c['peak_bytes'] / 2**20:.0f} | {need:.2f} | {share:.3f} | {math.floor(1 / share)} |", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print("\nLargest memory share per shape (the resources.gpu a trial of that shape needs by memory alone):")
    for k, v in worst.items():
        print(f"- {k}: {v:.3f} of a {a.gpu_gib:g} GiB GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why ATLD did not train on the laptop profile (issue 10): one ATLD fit at the laptop budget (mnist5k, MLP 256-128,
L∞ ε = 0.3, 6 epochs × 50 updates, batch 64, lr 2e-3, seed 0, the method's other defaults), then clean and PGD-20
accuracy on the 1,000 test digits without (ATLD−) and with IMT. Prints the validation accuracy after every epoch.
Runs against whichever checkout is first on PYTHONPATH, so the old and the new ATLD can be compared:

    PYTHONPATH=<checkout> python benchmarks/atld_diagnosis.py [KEY=VALUE ...]   (dotted overrides, e.g. method.params.disc_depth=10)

Results: benchmarks/RESULTS.md ("Why ATLD did not train on the laptop profile")."""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import robust_core
from robust_core.attacks.loop import perturb
from robust_core.attacks.threat import ThreatModel
from robust_core.config import build_run_config, deep_merge, parse_overrides
from robust_core.modes import eval_mode
from robust_core.train import fit

EPS = 0.3


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    print("robust_core:", robust_core.__file__)
    cfg = build_run_config(deep_merge({"data": {"name": "mnist5k", "n_val": 500},
                            "model": {"name": "mlp", "params": {"hidden": [256, 128]}},
                            "method": {"name": "atld", "params": {"eps": EPS}},
                            "train": {"epochs": 6, "steps_per_epoch": 50, "batch_size": 64, "lr": 0.002, "seed": 0}},
                                      parse_overrides(overrides)))
    t0 = time.time()
    res = fit(cfg)
    print(f"fit {time.time() - t0:.0f} s; val acc per epoch:", [round(h["val_acc"], 3) for h in res.history])
    x, y = res.data.test
    threat = ThreatModel("linf", EPS)
    for imt in ("none", "imt"):
        object.__setattr__(res.method.p, "imt", imt)  # inference-time only: the trained weights are the same
        model = res.method.inference_model(res.model)
        with eval_mode(res.model):
            clean = (model(x).argmax(1) == y).float().mean().item()
            xa = perturb(model, x, lambda out: F.cross_entropy(out, y, reduction="none"), threat, 20, 2.5 * EPS / 20,
                         random_start=True, generator=torch.Generator().manual_seed(0))
            rob = (model(xa).argmax(1) == y).float().mean().item()
        print(f"imt={imt}: clean {100 * clean:.1f} %, PGD-20 {100 * rob:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])

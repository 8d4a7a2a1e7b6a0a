"""Run (or resume) one sweep.

    python sweeps/run.py sweeps/configs/demo_vat.yaml [--set num_trials=8 --set base.train.epochs=3]
    ray submit sweeps/cluster.yaml sweeps/run.py -- sweeps/configs/demo_vat.yaml

The config is validated completely before Ray starts; an invalid one prints every problem and exits with code 2.
Rerunning the same config resumes the sweep (finished trials are not redone). ``RAY_ADDRESS`` selects a cluster.
Exit codes as ``robust-sweep`` (``robust_core/cli.py``): 0 every trial finished or diverged, 1 some trial errored,
2 invalid input.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sweeps/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("config", help="sweep YAML (see sweeps/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. --set num_trials=8 --set base.train.lr=0.001 (repeatable)")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, launch nothing")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    args = p.parse_args(argv)

    from robust_core.cli import guarded

    return guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from sweeps.spec import load_sweep_config

    cfg = load_sweep_config(args.config, args.overrides)
    if args.check:
        print(cfg.dump_yaml())
        return 0

    from sweeps.runner import run_sweep

    summary = run_sweep(cfg, progress=not args.quiet)
    print(json.dumps(asdict(summary), indent=2, default=str))
    return 1 if summary.n_errored else 0


if __name__ == "__main__":
    sys.exit(main())

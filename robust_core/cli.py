"""``robust-sweep``: trial | sweep | final | eval | demo. Exit code 2 for invalid input (nothing launched)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from robust_core.config import ConfigError


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.01 --set method.params.eps=8/255 (repeatable)")


def cmd_trial(args: argparse.Namespace) -> int:
    """One trial in this process, no Ray: the same run_trial a Ray trial calls."""
    from robust_core.config import deep_merge, load_run_config, parse_overrides
    from robust_core.reporting import CheckpointDir, Console, Many
    from robust_core.trial import run_trial

    base: dict = {}
    if args.from_run:
        base = _config_of_run(args.from_run, args.tracking_uri)
    shortcuts = {}
    if args.method:
        shortcuts = deep_merge(shortcuts, {"method": {"name": args.method}})
    if args.dataset:
        shortcuts = deep_merge(shortcuts, {"data": {"name": args.dataset}})
    over = deep_merge(shortcuts, parse_overrides(args.overrides))
    cfg = load_run_config(args.config, over, base=base)
    out = Path(args.out or f"runs/trials/{cfg.method.name}-{cfg.data.name}-{cfg.fingerprint()}")
    print(f"trial: method={cfg.method.name} data={cfg.data.name} model={cfg.model.name} -> {out}", file=sys.stderr)
    reporters = [Console(), CheckpointDir(out / "checkpoint") if not args.no_resume else None]
    if args.tracking_uri and not args.from_run:
        from robust_core.tracking import MLflowReporter, prepare_store, start_run

        exp_id = prepare_store(args.tracking_uri, args.experiment)
        run_id = start_run(args.tracking_uri, exp_id, f"trial-{cfg.method.name}",
                           {"robust_sweep.kind": "local_trial", "robust_sweep.method": cfg.method.name,
                            "robust_sweep.dataset": cfg.data.name})
        reporters.append(MLflowReporter(args.tracking_uri, run_id))
    final, _ = run_trial(cfg, Many(*reporters), out_dir=out, evaluate_test=args.test, progress=not args.quiet)
    print(f"saved model to {out / 'model.pt'}; evaluate it with: robust-sweep eval {out} --suite whitebox")
    return 0


def _config_of_run(run_id: str, uri: str | None) -> dict:
    if not uri:
        raise ConfigError(["--from-run needs --tracking-uri (the MLflow store the sweep logged to)"], "command line")
    import tempfile

    import yaml
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        p = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "config.yaml", tmp)
        return yaml.safe_load(Path(p).read_text())


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_sweep_config

    cfg = load_sweep_config(args.config, args.overrides)  # fully validated before Ray starts
    summary = run_sweep(cfg)
    print(summary)
    return 0


def cmd_final(args: argparse.Namespace) -> int:
    from pipelines.final import run_pipeline
    from pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(args.config)
    t0 = time.time()
    res = run_pipeline(spec, only=args.only, dry_run=args.dry_run)
    if args.dry_run:
        print("dry run: the pipeline config and every sweep it would run are valid; nothing was started")
        return 0
    for name, files in res["tables"].items():
        print(Path(files["md"]).read_text())
    for name, files in res["figures"].items():
        print(f"figure {name}: {files['png']} (also .pdf, data .csv)")
    print(f"trained {res['trained']} model(s), reused {res['reused']}; ran {res['evaluated']} evaluation(s), reused "
          f"{res['evals_reused']}; {(time.time() - t0) / 60:.1f} min")
    print(f"index: {res['index']}; reproduction: {res['reproduction']}; lineage: {res['output_dir']}/lineage.json")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    out = args.out or ("robust-sweep-demo-quick" if args.quick else "robust-sweep-demo")  # quick ≠ full sweeps
    return run_demo(Path(out), quick=args.quick)


def cmd_eval(args: argparse.Namespace) -> int:
    from robust_core.attacks.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robust-sweep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trial", help="run one trial locally (no Ray): the debugging entry point",
                       description="Train one configuration in this process through the same code path as a Ray "
                                   "trial. Resumes from OUT/checkpoint if present.")
    t.add_argument("--config", help="run config YAML (data/model/method/train); defaults fill the rest")
    t.add_argument("--method", help="shortcut for --set method.name=M")
    t.add_argument("--dataset", help="shortcut for --set data.name=D")
    t.add_argument("--from-run", help="start from the resolved config of an MLflow (trial) run id")
    t.add_argument("--tracking-uri", help="MLflow store for --from-run, or to log this trial to")
    t.add_argument("--experiment", default="robust-sweep-local", help="MLflow experiment when logging a local trial")
    t.add_argument("--out", help="output folder (model.pt, config.yaml, checkpoint/)")
    t.add_argument("--test", action="store_true", help="also report test accuracy (never use it to choose settings)")
    t.add_argument("--no-resume", action="store_true", help="do not checkpoint/resume")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_set(t)
    t.set_defaults(func=cmd_trial)

    s = sub.add_parser("sweep", help="run a hyperparameter sweep on Ray Tune (Optuna + ASHA + MLflow)")
    s.add_argument("config", help="sweep YAML, e.g. sweeps/configs/demo_vat.yaml")
    _add_set(s)
    s.set_defaults(func=cmd_sweep)

    f = sub.add_parser("final", help="sweeps -> best config per row -> retrain x seeds -> evaluate -> tables, figures",
                       description="Run a results pipeline: pipelines/demo.yaml, or a paper-reproduction profile "
                                   "(pipelines/smoke.yaml, laptop.yaml, paper.yaml). Reruns reuse finished work.")
    f.add_argument("config", help="pipeline YAML, e.g. pipelines/laptop.yaml")
    f.add_argument("--only", metavar="NAME", help="compute and render only this table or figure")
    f.add_argument("--dry-run", action="store_true", help="validate, print the plan's estimated cost, start nothing")
    f.set_defaults(func=cmd_final)

    e = sub.add_parser("eval", help="robustness evaluation of a saved model or an MLflow run's model")
    from robust_core.attacks.cli import add_arguments

    add_arguments(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the whole path on this machine: sweeps -> MLflow -> final table (~15 min, 2 CPUs)")
    d.add_argument("--out", help="folder for the MLflow store, Ray results and tables "
                                 "(default robust-sweep-demo, or robust-sweep-demo-quick with --quick)")
    d.add_argument("--quick", action="store_true", help="tiny budget (about a minute), to check the installation")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, LookupError) as e:  # missing model/data files, unknown sweep or run
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

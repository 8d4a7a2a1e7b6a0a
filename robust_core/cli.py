"""``robust-sweep``: trial | sweep | report | final | eval | demo.

One exit-code rule for every entry point (also ``sweeps/run.py``):

- 0: every trial finished or diverged (a divergence is a finding about its hyperparameters, counted in the summary);
- 1: some trial errored otherwise (a crash, a node lost beyond its retries), or the command itself crashed;
- 2: invalid input: a bad config, value or file (``error:`` naming it and what to do; nothing launched, no MLflow
  run left RUNNING).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from robust_core.config import ConfigError
from robust_core.errors import InputError


def _add_set(p: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE``; ``example``: overrides valid for this command's config (tests/test_cli_help.py checks
    every ``--set`` example in the help texts against the config validation)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. {example} (repeatable)")


def cmd_trial(args: argparse.Namespace) -> int:
    """One trial in this process, no Ray: the same run_trial a Ray trial calls."""
    from robust_core.config import deep_merge, load_run_config, parse_overrides
    from robust_core.errors import TrainingDiverged
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
    ckpt = None if args.no_resume else CheckpointDir(out / "checkpoint")
    if ckpt is not None:
        _check_checkpoint(ckpt, cfg)  # a bad checkpoint is an input error before anything starts
    reporters = [Console(), ckpt]
    mlflow = None
    if args.tracking_uri and not args.from_run:
        from robust_core.tracking import MLflowReporter, prepare_store, start_run

        exp_id = prepare_store(args.tracking_uri, args.experiment)
        run_id = start_run(args.tracking_uri, exp_id, f"trial-{cfg.method.name}",
                           {"robust_sweep.kind": "local_trial", "robust_sweep.method": cfg.method.name,
                            "robust_sweep.dataset": cfg.data.name})
        mlflow = MLflowReporter(args.tracking_uri, run_id)
        reporters.append(mlflow)
    try:
        run_trial(cfg, Many(*reporters), out_dir=out, evaluate_test=args.test, progress=not args.quiet)
    except TrainingDiverged as e:
        reason = str(e).splitlines()[0]
        if mlflow is not None:
            mlflow.fail(reason, traceback.format_exc(), {"robust_sweep.failure": "diverged"})
        print(f"trial diverged: {reason}\n(a finding about these hyperparameters, not an error: exit code 0)",
              file=sys.stderr)
        return 0
    except BaseException as e:  # the MLflow run is not left RUNNING
        if mlflow is not None:
            mlflow.fail(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}", traceback.format_exc(),
                        status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    print(f"saved model to {out / 'model.pt'}; evaluate it with: robust-sweep eval {out} --suite whitebox")
    return 0


def _check_checkpoint(ckpt, cfg) -> None:
    """Read the checkpoint a local trial would resume from: unreadable, foreign or of another config -> BadFileError."""
    from robust_core.errors import BadFileError
    from robust_core.reporting import CHECKPOINT_FILE

    state = ckpt.load()
    if state is None:
        return
    f = ckpt.path / CHECKPOINT_FILE
    missing = [k for k in ("fingerprint", "epoch", "model", "history") if k not in state]
    if missing:
        raise BadFileError(f, f"is not a robust-sweep checkpoint (missing {', '.join(missing)}); delete it to start "
                              "the trial over")
    if state["fingerprint"] != cfg.fingerprint():
        raise BadFileError(f, "was written by a different config; delete it to start over with this config, or "
                              "rerun with the config it was made with (config.yaml beside it), or use another --out")


def _config_of_run(run_id: str, uri: str | None) -> dict:
    if not uri:
        raise ConfigError(["--from-run needs --tracking-uri (the MLflow store the sweep logged to)"], "command line")
    from robust_core.tracking import config_of_run, require_store

    require_store(uri, "--from-run")
    return config_of_run(uri, run_id)


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_sweep_config

    cfg = load_sweep_config(args.config, args.overrides)  # fully validated before Ray starts
    summary = run_sweep(cfg)
    print(summary)
    return 1 if summary.n_errored else 0


def cmd_report(args: argparse.Namespace) -> int:
    """The ranked trials of a sweep, read from MLflow."""
    from sweeps.report import format_report, trial_rows

    from robust_core.tracking import require_store

    require_store(args.tracking_uri)
    parent, rows = trial_rows(args.tracking_uri, args.experiment, args.sweep)
    print(format_report(parent, rows))
    return 0


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="also show Ray's status tables, the trials' own output "
                                                          "and MLflow's run links (off by default)")


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
    if res["errored_trials"]:
        print(f"{res['errored_trials']} sweep trial(s) errored (see the sweeps' MLflow runs); exit code 1",
              file=sys.stderr)
    return 1 if res["errored_trials"] else 0


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
    _add_set(t, "--set train.lr=0.01 --set method.name=pgd_at --set method.params.eps=8/255")
    t.set_defaults(func=cmd_trial)

    s = sub.add_parser("sweep", help="run a hyperparameter sweep on Ray Tune (Optuna + ASHA + MLflow)")
    s.add_argument("config", help="sweep YAML, e.g. sweeps/configs/demo_vat.yaml")
    _add_set(s, "--set base.train.lr=0.01 --set num_trials=16 --set base.method.params.eps=2.0")
    _verbose(s)
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="the ranked trials of a sweep (params, metric, epochs, status), from MLflow",
                       description="Print the trials of the latest run of sweep SWEEP ranked by the sweep's metric "
                                   "(full-budget trials first: the first row is the trial the summary and the final "
                                   "pipeline pick). The plots are in the sweep run's artifacts, under report/.")
    r.add_argument("sweep", metavar="SWEEP", help="the sweep's name (name: in its YAML), e.g. demo-vat")
    r.add_argument("--tracking-uri", required=True, help="the MLflow store the sweep logged to, e.g. "
                                                         "sqlite:///robust-sweep-demo/mlflow.db")
    r.add_argument("--experiment", default="robust-sweep-demo", help="MLflow experiment (tracking.experiment of the "
                                                                      "sweep; default robust-sweep-demo)")
    r.set_defaults(func=cmd_report)

    f = sub.add_parser("final", help="sweeps -> best config per row -> retrain x seeds -> evaluate -> tables, figures",
                       description="Run a results pipeline: pipelines/demo.yaml, or a paper-reproduction profile "
                                   "(pipelines/smoke.yaml, laptop.yaml, paper.yaml). Reruns reuse finished work.")
    f.add_argument("config", help="pipeline YAML, e.g. pipelines/laptop.yaml")
    f.add_argument("--only", metavar="NAME", help="compute and render only this table or figure")
    f.add_argument("--dry-run", action="store_true", help="validate, print the plan's estimated cost, start nothing")
    _verbose(f)
    f.set_defaults(func=cmd_final)

    e = sub.add_parser("eval", help="robustness evaluation of a saved model or an MLflow run's model")
    from robust_core.attacks.cli import add_arguments

    add_arguments(e)
    e.set_defaults(func=cmd_eval)

    # running times are claimed in one place, the README's quick start, next to the command that measured them
    d = sub.add_parser("demo", help="the whole path on this machine: sweeps -> MLflow -> final table (the README "
                                    "says how long it takes)")
    d.add_argument("--out", help="folder for the MLflow store, Ray results and tables "
                                 "(default robust-sweep-demo, or robust-sweep-demo-quick with --quick)")
    d.add_argument("--quick", action="store_true", help="tiny budget, to check the installation")
    _verbose(d)
    d.set_defaults(func=cmd_demo)
    return p


def guarded(command: Callable[[], int]) -> int:
    """Run an entry point under the exit-code rule: invalid input -> ``error: ...`` and 2; Ctrl-C -> 130; any other
    exception propagates (its traceback, exit code 1)."""
    try:
        return command()
    except (ConfigError, InputError, FileNotFoundError, LookupError) as e:  # bad config/files, unknown sweep or run
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sweeps.console import VERBOSE_ENV, quiet_libraries

    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()  # unless verbose: no MLflow/Ray INFO lines and links, here and in the processes started
    return guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

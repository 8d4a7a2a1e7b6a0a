"""``robust-sweep eval MODEL_OR_RUN --suite NAME``: evaluate a saved model or an MLflow run's model; print a table.

MODEL_OR_RUN is a folder / ``model.pt`` written by ``robust_core.trial.run_trial`` or an MLflow run id (with
``--tracking-uri``; the model is the run's artifact ``model/model.pt``). Records go to a JSON file beside the model
(or ``--out``) and, with ``--tracking-uri``, to an MLflow evaluation run linked to the model's run.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from robust_core.attacks.evaluate import format_table, run_suites, wire
from robust_core.attacks.records import write_json
from robust_core.attacks.settings import build_settings
from robust_core.attacks.suites import SUITES
from robust_core.config import ConfigError

MODEL_ARTIFACT = "model/model.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_OR_RUN", help="model folder / model.pt, or an MLflow run id "
                                                         "(with --tracking-uri)")
    p.add_argument("--suite", required=True, help=f"which evaluation(s) to run, comma-separated: "
                                                 f"{', '.join(SUITES.names())} "
                                                 "(several share one data load, one probe and one audit)")
    p.add_argument("--tracking-uri", help="MLflow store: where the run's model is read from and the evaluation "
                                          "run is logged to")
    p.add_argument("--experiment", default="robust-sweep-eval",
                   help="MLflow experiment when the model is not itself an MLflow run")
    p.add_argument("--n-examples", type=int, help="evaluate a seeded subset (model selection only; labelled so). "
                                                 "Default: the full test set")
    p.add_argument("--seed", type=int, default=0, help="subset and random-start seed (default 0)")
    p.add_argument("--batch-size", type=int, default=500, help="attack batch size (default 500)")
    p.add_argument("--eps", help="L∞ radius in pixel units, e.g. 8/255 or 0.3 (default: 0.3 MNIST, 8/255 other)")
    p.add_argument("--l2-eps", help="L2 radius in pixel units (default: 2.0 MNIST, 0.5 other)")
    p.add_argument("--steps", help="comma-separated PGD/CW step counts (default 20,40,100)")
    p.add_argument("--eps-grid", help="comma-separated L∞ radii for the curves suite")
    p.add_argument("--l2-grid", help="comma-separated L2 radii for the curves suite")
    p.add_argument("--eot-samples", type=int, help="EOT samples for models that sample at test time (default 10)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=MODEL_OR_RUN",
                   help="transfer suite: a source model (repeat: e.g. plain=runs/mle pgd=runs/pgd)")
    p.add_argument("--baseline", metavar="MODEL_OR_RUN", help="fixed_set suite: the baseline model the fixed "
                                                              "adversarial set is generated on")
    p.add_argument("--aa-attacks", help="autoattack suite: comma-separated subset (version 'custom'; not for final "
                                        "tables), e.g. apgd-ce,apgd-t")
    p.add_argument("--aa-iters", type=int, help="autoattack suite: APGD iterations (default: the authors' 100)")
    p.add_argument("--out", help="JSON file for the records (default: eval_<suite>.json beside the model)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _list(s: str | None) -> list[str] | None:
    return None if s is None else [t.strip() for t in s.split(",")]


def _resolve(ref: str, uri: str | None, tmp: str) -> tuple[Path, str | None]:
    """(path to model.pt, MLflow run id or None)."""
    p = Path(ref)
    if p.exists():
        from robust_core.trial import MODEL_FILE

        return (p / MODEL_FILE if p.is_dir() else p), None
    if not uri:
        raise FileNotFoundError(f"{ref!r} is neither a saved model (folder or model.pt) nor usable as an MLflow run "
                                "id without --tracking-uri")
    from mlflow.tracking import MlflowClient

    from robust_core.tracking import require_store

    from mlflow.exceptions import MlflowException

    require_store(uri)  # before MLflow would create an empty database there
    try:
        local = MlflowClient(tracking_uri=uri).download_artifacts(ref, MODEL_ARTIFACT, tmp)
    except MlflowException as e:  # no such run, or a run without a model
        raise LookupError(f"{ref!r}: no {MODEL_ARTIFACT} of an MLflow run with this id at {uri} "
                          f"({str(e).splitlines()[0][:200]}); give a retrain or trial run id (lineage.json lists "
                          "them) or a model folder") from None
    return Path(local), ref


HOW = {"sources": "--source NAME=MODEL_OR_RUN (e.g. a plainly trained and a PGD-trained model)",
       "baseline": "--baseline MODEL_OR_RUN (the model the fixed set is made on)"}


def run(args: argparse.Namespace) -> int:
    import torch

    from robust_core.data import prepare_data
    from robust_core.trial import load_trained

    suites = [t.strip() for t in args.suite.split(",") if t.strip()]
    if not suites:
        raise ConfigError([f"--suite {args.suite!r}: name at least one of {', '.join(SUITES.names())}"],
                          "command line")
    sources = {}
    for s in args.source:
        if "=" not in s:
            raise ConfigError([f"--source {s!r}: write NAME=MODEL_OR_RUN"], "command line")
        name, ref = s.split("=", 1)
        sources[name] = ref
    aa: dict = {}
    if args.aa_attacks:
        aa.update(version="custom", attacks=_list(args.aa_attacks))
    if args.aa_iters is not None:
        aa["n_iter"] = args.aa_iters
    flags = {"eps": args.eps, "l2_eps": args.l2_eps, "n_examples": args.n_examples, "seed": args.seed,
             "batch_size": args.batch_size, "steps": _list(args.steps), "eps_grid": _list(args.eps_grid),
             "l2_grid": _list(args.l2_grid), "eot_samples": args.eot_samples, "autoattack": aa}
    raw = {k: v for k, v in flags.items() if v is not None}
    build_settings(raw, "command line")  # every flag problem before a model is loaded
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, tuple[Path, str | None]] = {}

        def load(ref: str):
            paths[ref] = _resolve(ref, args.tracking_uri, tmp)
            return load_trained(paths[ref][0], device=args.device)

        cfg, models = wire(suites, load, args.model, sources=sources, baseline=args.baseline, how=HOW,
                           where="command line")
        path, run_id = paths[args.model]
        name = cfg.method.name if run_id is None else f"{cfg.method.name}:{run_id[:8]}"
        settings = build_settings({**raw, "dataset": cfg.data.name, "model_name": name}, "command line")
        x, y = prepare_data(cfg.data).test
        x, y = x.to(args.device), y.to(args.device)
        torch.manual_seed(args.seed)
        res = run_suites(suites, models, (x, y), settings)
        meta = {"suite": "+".join(suites), "model": str(args.model), "model_path": str(path), "model_run_id": run_id,
                "dataset": cfg.data.name, "n_test": len(y), "n_examples": args.n_examples or len(y),
                "subset": settings.is_subset(len(y)), "seed": args.seed, "config_fingerprint": cfg.fingerprint(),
                "sources": sources, "baseline": args.baseline}
        out = Path(args.out) if args.out else (path.parent / f"eval_{'+'.join(suites)}.json" if run_id is None
                                               else Path(tmp) / f"eval_{'+'.join(suites)}.json")
        write_json(out, res.records, res.audit, meta)
        print(format_table(res.records, res.audit))
        if args.tracking_uri:
            from robust_core.attacks.records import log_mlflow

            rid = log_mlflow(res.records, res.audit, meta, tracking_uri=args.tracking_uri, model_run_id=run_id,
                             experiment=args.experiment, json_path=out)
            print(f"logged evaluation run {rid} to {args.tracking_uri}")
        if run_id is None or args.out:
            print(f"records written to {out}")
    return 0

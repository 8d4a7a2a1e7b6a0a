"""``robust-sweep eval MODEL_OR_RUN --suite NAME``: evaluate a saved model or an MLflow run's model; print a table.

MODEL_OR_RUN is a folder / ``model.pt`` written by ``robust_core.trial.run_trial`` or an MLflow run id (with
``--tracking-uri``; the model is the run's artifact ``model/model.pt``). Records go to a JSON file beside the model
(or ``--out``) and, with ``--tracking-uri``, to an MLflow evaluation run linked to the model's run.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from robust_core.attacks.records import write_json
from robust_core.config import ConfigError
from robust_core.attacks.suites import SUITES, EvalSettings, format_table, run_suites

MODEL_ARTIFACT = "model/model.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_OR_RUN", help="model folder / model.pt, or an MLflow run id "
                                                         "(with --tracking-uri)")
    p.add_argument("--suite", required=True, help=f"which evaluation(s) to run, comma-separated: {', '.join(SUITES)} "
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
    p.add_argument("--eot-samples", type=int, default=10, help="EOT samples for models that sample at test time")
    p.add_argument("--source", action="append", default=[], metavar="NAME=MODEL_OR_RUN",
                   help="transfer suite: a source model (repeat: e.g. plain=runs/mle pgd=runs/pgd)")
    p.add_argument("--baseline", metavar="MODEL_OR_RUN", help="fixed_set suite: the baseline model the fixed "
                                                              "adversarial set is generated on")
    p.add_argument("--aa-attacks", help="autoattack suite: comma-separated subset (version 'custom'; not for final "
                                        "tables), e.g. apgd-ce,apgd-t")
    p.add_argument("--aa-iters", type=int, help="autoattack suite: APGD iterations (default: the authors' 100)")
    p.add_argument("--out", help="JSON file for the records (default: eval_<suite>.json beside the model)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _number(s: str | None, what: str) -> float | None:
    from robust_core.config import parse_number

    if s is None:
        return None
    v = parse_number(s)
    if not isinstance(v, float):
        raise ConfigError([f"{what}={s!r} is not a number (write e.g. 8/255 or 0.3)"], "command line")
    return v


def _numbers(s: str | None, what: str) -> tuple[float, ...] | None:
    return None if s is None else tuple(_number(t, what) for t in s.split(","))  # type: ignore[misc]


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

    local = MlflowClient(tracking_uri=uri).download_artifacts(ref, MODEL_ARTIFACT, tmp)
    return Path(local), ref


def _load(ref: str, uri: str | None, tmp: str, device: str):
    from robust_core.trial import load_trained

    path, run_id = _resolve(ref, uri, tmp)
    cfg, model, method = load_trained(path, device=device)
    return path, run_id, cfg, model, method


def run(args: argparse.Namespace) -> int:
    import torch

    from robust_core.data import prepare_data

    suites = [t.strip() for t in args.suite.split(",") if t.strip()]
    bad = [t for t in suites if t not in SUITES]
    if bad or not suites:
        raise ConfigError([f"--suite {args.suite!r}: unknown suite(s) {bad}; choose from {', '.join(SUITES)}"],
                          "command line")
    steps = None if args.steps is None else tuple(int(t) for t in args.steps.split(","))
    if "transfer" in suites and not args.source:
        raise ConfigError(["--suite transfer needs at least one --source NAME=MODEL_OR_RUN (e.g. a plainly trained "
                           "and a PGD-trained model)"], "command line")
    if "fixed_set" in suites and not args.baseline:
        raise ConfigError(["--suite fixed_set needs --baseline MODEL_OR_RUN (the model the fixed set is made on)"],
                          "command line")
    sources = []
    for s in args.source:
        if "=" not in s:
            raise ConfigError([f"--source {s!r}: write NAME=MODEL_OR_RUN"], "command line")
        sources.append(tuple(s.split("=", 1)))
    aa = {}
    if args.aa_attacks:
        aa.update(version="custom", attacks=tuple(a.strip() for a in args.aa_attacks.split(",")))
    if args.aa_iters is not None:
        aa["n_iter"] = args.aa_iters
    with tempfile.TemporaryDirectory() as tmp:
        path, run_id, cfg, model, method = _load(args.model, args.tracking_uri, tmp, args.device)
        name = cfg.method.name if run_id is None else f"{cfg.method.name}:{run_id[:8]}"
        settings = EvalSettings(dataset=cfg.data.name, eps=_number(args.eps, "--eps"),
                                l2_eps=_number(args.l2_eps, "--l2-eps"), n_examples=args.n_examples, seed=args.seed,
                                batch_size=args.batch_size, eps_grid=_numbers(args.eps_grid, "--eps-grid"),
                                l2_grid=_numbers(args.l2_grid, "--l2-grid"), eot_samples=args.eot_samples,
                                model_name=name, autoattack=aa)
        if steps is not None:
            settings = replace(settings, steps=steps)
        x, y = prepare_data(cfg.data).test
        x, y = x.to(args.device), y.to(args.device)
        wrapped = method.inference_model(model)
        plan: dict[str, tuple[object, dict]] = {}
        for suite in suites:
            kw: dict = {}
            target = wrapped
            if suite == "adaptive":
                target, kw = model, {"method": method}
            elif suite == "transfer":
                kw["sources"] = {}
                for n, r in sources:
                    _, _, _, sm, smeth = _load(r, args.tracking_uri, tmp, args.device)
                    kw["sources"][n] = smeth.inference_model(sm)
            elif suite == "fixed_set":
                _, _, _, bm, bmeth = _load(args.baseline, args.tracking_uri, tmp, args.device)
                kw.update(baseline=bmeth.inference_model(bm), baseline_name=Path(args.baseline).name or "baseline")
            plan[suite] = (target, kw)
        torch.manual_seed(args.seed)
        res = run_suites(plan, (x, y), settings, probe_model=wrapped)
        meta = {"suite": "+".join(suites), "model": str(args.model), "model_path": str(path), "model_run_id": run_id,
                "dataset": cfg.data.name, "n_test": len(y), "n_examples": args.n_examples or len(y),
                "subset": settings.is_subset(len(y)), "seed": args.seed, "config_fingerprint": cfg.fingerprint()}
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

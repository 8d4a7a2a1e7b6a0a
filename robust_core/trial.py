"""One trial: the same function behind ``robust-sweep trial`` (local, no Ray), a Ray Tune trial and a final retrain.

``run_trial`` = ``fit`` + (optionally) the test-set evaluation + the saved model. Test metrics are computed only when
``evaluate_test=True``, which only the final pipeline asks for, after selection: sweeps never see the test set.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_core.config import RunConfig, build_run_config, dump_yaml
from robust_core.data import PreparedData, prepare_data
from robust_core.methods import Method, build_method
from robust_core.models import build_model
from robust_core.errors import BadFileError
from robust_core.reporting import Reporter, load_state
from robust_core.train import FitResult, evaluate, fit

MODEL_FILE = "model.pt"


def run_trial(cfg: RunConfig, reporter: Reporter | None = None, *, out_dir: str | Path | None = None,
              evaluate_test: bool = False, progress: bool = False, data: PreparedData | None = None,
              test_each_epoch: bool = False, timing: dict[str, float] | None = None
              ) -> tuple[dict[str, Any], FitResult]:
    """Train one config; returns (final metrics, fit result). Writes ``model.pt`` + ``config.yaml`` to ``out_dir``.
    ``test_each_epoch`` (final retrains only, implies ``evaluate_test``): test accuracy in every epoch's metrics.

    ``timing``: updated in place (see ``fit``), plus ``test_s`` for the final test evaluation and ``save_s``; the
    final metrics carry them as ``timing.<key>``, with ``timing.wall_s`` from ``timing["t0"]`` (a
    ``time.perf_counter()`` the caller took at its start; default: this call's start)."""
    clock = {} if timing is None else timing
    clock.setdefault("t0", time.perf_counter())
    res = fit(cfg, reporter, data=data, progress=progress, test_each_epoch=test_each_epoch, timing=clock)
    final: dict[str, Any] = dict(res.last)
    if "val_acc" in res.last:  # absent when the run has no validation split (data.n_val = 0)
        final["best_val_acc"] = max(h["val_acc"] for h in res.history)
    final["split_fingerprint"] = res.data.splits.fingerprint()
    final["config_fingerprint"] = cfg.fingerprint()
    final["mean_epoch_time_s"] = sum(h["epoch_time_s"] for h in res.history) / len(res.history)
    if evaluate_test or test_each_epoch:
        t0 = time.perf_counter()
        xt, yt = res.data.test
        te = evaluate(res.inference_model, xt, yt, cfg.train.eval_batch_size)
        final.update(test_acc=te["acc"], test_loss=te["loss"], n_test=len(yt))
        clock["test_s"] = clock.get("test_s", 0.0) + time.perf_counter() - t0
    if out_dir is not None:
        t0 = time.perf_counter()
        save_trained(res, cfg, Path(out_dir))
        clock["save_s"] = time.perf_counter() - t0
    final.update(timing_metrics(clock))
    if reporter is not None:
        reporter.close(final)
    return final, res


def timing_metrics(clock: dict[str, float]) -> dict[str, float]:
    """``timing.<key>`` metrics from a ``timing`` dict (``wall_s`` = now − ``t0``; ``t0`` itself is not logged)."""
    out = {f"timing.{k}": float(v) for k, v in clock.items() if k != "t0"}
    if "t0" in clock:
        out["timing.wall_s"] = time.perf_counter() - clock["t0"]
    if "entry_at" in clock:  # a timeline (unix seconds) for the breakdown of a sweep's slots
        out["timing.end_at"] = time.time()
    return out


def save_trained(res: FitResult, cfg: RunConfig, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    aux = nn.ModuleDict(res.method.modules())
    path = out_dir / MODEL_FILE
    torch.save({"config": cfg.to_dict(), "model": res.model.state_dict(), "aux": aux.state_dict(),
                "n_train": res.method.n_train, "history": res.history}, path)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    return path


def load_trained(path: str | Path, device: str | torch.device = "cpu", inference: dict[str, Any] | None = None
                 ) -> tuple[RunConfig, nn.Module, Method]:
    """Rebuild a model saved by ``run_trial``. Returns (config, classifier, method); the model to evaluate and attack
    is ``method.inference_model(classifier)``. Dataset files are not needed (only the dataset's static info).
    ``inference``: method params changed for evaluation only (e.g. ATLD's ``{"imt": "none"}``); the returned config
    says so."""
    from robust_core.registry import DATASETS

    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no saved model at {p} (expected the {MODEL_FILE} written by robust-sweep trial)")
    blob = load_state(p, "model file")  # data only: a crafted file cannot run code here
    missing = [k for k in ("config", "model", "aux") if k not in blob]
    if missing or not isinstance(blob["config"], dict):
        raise BadFileError(p, f"is not a model file written by robust-sweep trial (missing or malformed: {', '.join(missing or ['config'])}); "
                              "point to the model.pt of a finished trial")
    raw = blob["config"]
    if inference:
        raw = {**raw, "method": {**raw["method"], "params": {**raw["method"].get("params", {}), **inference}}}
    cfg = build_run_config(raw, str(p))
    info = DATASETS.get(cfg.data.name).info
    model = build_model(cfg.model, info)
    _load_weights(model, blob["model"], p)
    method = build_method(cfg.method, model=model, info=info, n_train=blob.get("n_train", 0))
    _load_weights(nn.ModuleDict(method.modules()), blob["aux"], p)
    model.to(device).eval()
    for m in method.modules().values():
        m.to(device).eval()
    return cfg, model, method


def _load_weights(module: nn.Module, state: Any, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:  # keys or shapes do not match the file's own config
        raise BadFileError(path, f"weights do not match the config stored in the file ({str(e).splitlines()[0]}); "
                                 "the file is corrupted: retrain or restore a good copy") from e

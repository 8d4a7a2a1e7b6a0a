"""The pipeline's run store: every MLflow query of the final pipeline lives here, with the tag names it reads.

Which sweep ran and which of its trials is best (the rule is ``sweeps.best.best_trial``, shared with the sweep
summary), which retrains and evaluations finished earlier (reused on a rerun), an evaluation's records, the per-epoch
history behind the learning-curve figures, and a retrained model's file. Planning and rendering never query a store:
the runner asks this module and hands plain values on (``pipelines.render.Results``).
Writes (creating runs, logging metrics and artifacts) go through ``robust_core.tracking``.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from robust_core import tracking
from robust_core.config import RunConfig, build_run_config
from sweeps.best import Scored, best_trial

TAG = tracking.TAG + "."  # every tag of this project starts with it
EVAL_JSON = "eval.json"  # an evaluation run's records (artifact)
MODEL_ARTIFACT = "model/model.pt"  # a retrain run's model (artifact)


def tag(name: str) -> str:
    """The full name of one of this project's tags, e.g. ``tag("kind")`` = ``robust_sweep.kind``."""
    return TAG + name


@dataclass(frozen=True)
class Selection:
    """The configuration a row retrains: the best trial of ``sweep`` by ``metric`` (or a sweep's defaults)."""
    sweep: str
    trial_run_id: str
    sweep_run_id: str
    metric: str
    value: float
    config: RunConfig


class Store:
    """The pipeline's queries against one MLflow experiment (``experiment``: its name) at ``uri``."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment

    def runs(self, filter_string: str) -> list:
        return tracking.find_runs(self.uri, self.experiment, filter_string)

    # -------------------------------------------------------------- sweeps
    def finished_sweep(self, sweep: str, fingerprint: str) -> str | None:
        """Run id of a FINISHED sweep named ``sweep`` with this config fingerprint (reused, not rerun), else None."""
        done = self.runs(f"tags.`{tag('kind')}` = 'sweep' and tags.`{tag('sweep')}` = '{sweep}' and "
                         f"tags.`{tag('sweep_fingerprint')}` = '{fingerprint}' and attributes.status = 'FINISHED'")
        return done[0].info.run_id if done else None

    def select_best(self, sweep: str, metric: str, mode: str) -> Selection:
        """Best trial of the latest run of ``sweep`` by ``metric`` (a validation metric; its last logged value), by
        the sweep's own rule (``sweeps.best``); its resolved config is read from the trial's ``config.yaml``."""
        parents = self.runs(f"tags.`{tag('kind')}` = 'sweep' and tags.`{tag('sweep')}` = '{sweep}'")
        if not parents:
            raise LookupError(
                f"sweep {sweep!r} not found in MLflow experiment {self.experiment!r} at {self.uri}; run its sweep "
                f"first (robust-sweep sweep CONFIG with name: {sweep}) or fix the row's `sweep:` name")
        parent = max(parents, key=lambda r: r.info.start_time)
        trials = self.runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{tag('kind')}` = 'trial'")
        best = best_trial((Scored(r.data.metrics[metric], r.data.tags.get(tag("stopped_early")) != "true",
                                  r.info.start_time, r)
                           for r in trials if metric in r.data.metrics and r.info.status == "FINISHED"), mode)
        if best is None:
            raise LookupError(f"sweep {sweep!r} (run {parent.info.run_id}) has no finished trial with metric "
                              f"{metric!r}")
        run = best.item
        cfg = build_run_config(self.config_of_run(run.info.run_id), f"config of trial run {run.info.run_id}")
        return Selection(sweep, run.info.run_id, parent.info.run_id, metric, best.value, cfg)

    def config_of_run(self, run_id: str) -> dict[str, Any]:
        """The resolved run config a trial or retrain logged (``config.yaml``), as a plain dict."""
        return tracking.config_of_run(self.uri, run_id)

    # -------------------------------------------------------------- retrains and evaluations
    def finished(self, kind: str, key_tag: str, metric: str | None = None) -> dict[str, Any]:
        """The earliest FINISHED run of ``kind`` per value of tag ``key_tag`` (one query for the whole pipeline),
        counting only runs that logged ``metric`` when given."""
        out: dict[str, Any] = {}
        for r in self.runs(f"tags.`{tag('kind')}` = '{kind}' and attributes.status = 'FINISHED'"):
            if metric is None or metric in r.data.metrics:
                out.setdefault(r.data.tags.get(tag(key_tag), ""), r)  # oldest first
        return out

    def eval_records(self, run_id: str) -> dict[str, Any]:
        """An evaluation run's ``eval.json``: {"records": [...], "audit": [...], ...}."""
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.download(run_id, EVAL_JSON, tmp)).read_text())

    def history(self, run_id: str, key: str) -> dict[int, float]:
        """Per-epoch values of metric ``key`` of one run: {epoch: value}."""
        return {int(m.step): m.value for m in tracking.client(self.uri).get_metric_history(run_id, key)
                if not math.isnan(m.value)}

    def histories(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[int, float]]:
        """``history`` of every (run id, metric) in ``wanted``, each queried once."""
        return {w: self.history(*w) for w in dict.fromkeys(wanted)}

    def weights(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The conv and linear weights of each retrain run's model (``layer_weights``), by run id."""
        from robust_core.reporting import load_state

        out: dict[str, dict[str, Any]] = {}
        for run_id in dict.fromkeys(run_ids):
            with tempfile.TemporaryDirectory() as tmp:  # data only: a crafted file cannot run code
                out[run_id] = layer_weights(load_state(self.download_model(run_id, tmp), "model file")["model"])
        return out

    def download_model(self, run_id: str, dest: str | Path) -> str:
        """Local path of a retrain run's model file, downloaded into ``dest``."""
        return self.download(run_id, MODEL_ARTIFACT, dest)

    def download(self, run_id: str, artifact: str, dest: str | Path) -> str:
        Path(dest).mkdir(parents=True, exist_ok=True)
        return tracking.client(self.uri).download_artifacts(run_id, artifact, str(dest))


def layer_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights of every conv and linear layer of a model's state dict (``*.weight`` with 2 or more dimensions;
    batch-norm scales are 1-D and left out), flattened to float64 numpy arrays, in the state dict's order."""
    return {k: v.detach().double().flatten().numpy() for k, v in state.items()
            if k.endswith("weight") and getattr(v, "ndim", 0) >= 2}


__all__ = ["EVAL_JSON", "layer_weights", "MODEL_ARTIFACT", "Selection", "Store", "TAG", "tag"]

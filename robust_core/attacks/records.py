"""Evaluation records: every robust number carries its full protocol; stored as JSON and as MLflow metrics/params."""
from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from robust_core.attacks.base import Attack
    from robust_core.attacks.key import AttackKey


@dataclass
class EvalRecord:
    """One accuracy number and the protocol that produced it.

    suite: which suite made it. key: its identity (``robust_core.attacks.key.AttackKey`` text, e.g.
    ``pgd-20[both]@standard``): what a table column names. model: the evaluated model's name. attack: registry
    name ("clean" for none), label: table name with run details (e.g. ``pgd-20[both]-eot10``). norm / eps (float,
    pixel units) / eps_str (e.g. "8/255"). steps, step_size (pixel units), restarts. n_examples: how many test
    examples; subset: True when not the full test set (model selection only, never a final table). seed: the
    attack's random seed. library / library_version: the code that computed it (this package's installed version,
    or pyautoattack's). accuracy: fraction in [0, 1] of examples still classified correctly. source: the model the
    adversarial examples were generated on when it is not the evaluated one (transfer / fixed set), else None.
    flags: masking-audit footnotes that concern this number. options: any other attack option (loss,
    eot_samples, version...).
    """

    suite: str
    key: str
    model: str
    attack: str
    label: str
    norm: str
    eps: float
    eps_str: str
    steps: int
    step_size: float
    restarts: int
    n_examples: int
    seed: int
    library: str
    library_version: str
    accuracy: float
    subset: bool = False
    source: str | None = None
    flags: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def metric_name(self) -> str:
        """MLflow metric name: ``<suite>.<label>.<norm>.eps_<eps>[.from_<source>]`` (MLflow-safe characters only)."""
        k = f"{self.suite}.{self.label}.{self.norm}.eps_{self.eps_str.replace('/', '_')}"
        if self.source:
            k += f".from_{self.source}"
        return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", k)

    @classmethod
    def of(cls, suite: str, model: str, key: "AttackKey", attack: "Attack | None", accuracy: float, n: int,
           seed: int, subset: bool, *, label: str | None = None, flags: list[str] | None = None,
           options: dict[str, Any] | None = None, norm: str = "none", eps: float = 0.0) -> "EvalRecord":
        """The record of ``key`` computed with ``attack`` (its protocol fills the fields; None = no gradient
        attack: clean accuracy, or a probe whose ``norm``/``eps`` are given). ``label`` defaults to the attack's."""
        from robust_core.attacks.base import eps_str, library_version

        if attack is None:
            lib, ver = library_version()
            p = {"attack": key.name, "label": str(key), "norm": norm, "eps": float(eps), "eps_str": eps_str(eps),
                 "steps": 0, "step_size": 0.0, "restarts": 1, "library": lib, "library_version": ver, "options": {}}
        else:
            p = attack.protocol()
        return cls(suite=suite, key=str(key), model=model, attack=p["attack"], label=label or p["label"],
                   norm=p["norm"], eps=p["eps"], eps_str=p["eps_str"], steps=p["steps"], step_size=p["step_size"],
                   restarts=p["restarts"], n_examples=n, seed=seed, library=p["library"],
                   library_version=p["library_version"], accuracy=accuracy, subset=subset, source=key.source,
                   flags=list(flags or []), options={**p["options"], **(options or {})})


def environment() -> dict[str, str]:
    import torch

    import pyautoattack

    return {"python": platform.python_version(), "torch": torch.__version__, "pyautoattack": pyautoattack.__version__}


def write_json(path: str | Path, records: Iterable[EvalRecord], audit: list[str], meta: dict[str, Any]) -> Path:
    """Write ``{"meta", "environment", "records", "audit"}`` to ``path`` (the file beside the model)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = {"meta": meta, "environment": environment(), "records": [r.to_dict() for r in records], "audit": audit}
    p.write_text(json.dumps(blob, indent=2, default=str, allow_nan=True))
    return p


def read_json(path: str | Path) -> tuple[list[EvalRecord], list[str], dict[str, Any]]:
    blob = json.loads(Path(path).read_text())
    return [EvalRecord(**r) for r in blob["records"]], blob["audit"], blob["meta"]


def log_mlflow(records: list[EvalRecord], audit: list[str], meta: dict[str, Any], *, tracking_uri: str,
               model_run_id: str | None = None, experiment: str | None = None, json_path: str | Path | None = None
               ) -> str:
    """Log an evaluation run (metrics = accuracies, params = shared protocol, tags link it to the model's run).

    ``tracking_uri`` is required (never the implicit ./mlruns). With ``model_run_id`` the run is created in the
    model run's experiment, tagged ``mlflow.parentRunId`` and ``robust_sweep.model_run_id``. Returns the run id.
    """
    if not tracking_uri:
        raise ValueError("log_mlflow needs an explicit tracking_uri (e.g. file:/path/mlruns or http://host:5000)")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if model_run_id is not None:
        exp_id = client.get_run(model_run_id).info.experiment_id
    else:
        name = experiment or "robust-sweep-eval"
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    tags = {"robust_sweep.kind": "evaluation", "robust_sweep.suite": str(meta.get("suite", ""))}
    if model_run_id is not None:
        tags.update({"mlflow.parentRunId": model_run_id, "robust_sweep.model_run_id": model_run_id})
    run = client.create_run(exp_id, tags=tags, run_name=f"eval-{meta.get('suite', '')}")
    rid = run.info.run_id
    for r in records:
        client.log_metric(rid, r.metric_name, float(r.accuracy))
    params = {k: str(v)[:500] for k, v in meta.items()}
    params.update({f"env.{k}": v for k, v in environment().items()})
    params["n_records"] = str(len(records))
    for k, v in params.items():
        client.log_param(rid, k, v)
    client.set_tag(rid, "robust_sweep.audit_flags", str(len(audit)))
    if audit:
        client.set_tag(rid, "robust_sweep.audit", " | ".join(audit)[:5000])
    if json_path is not None:
        client.log_artifact(rid, str(json_path))
    client.set_terminated(rid)
    return rid

"""Typed sweep configuration: one YAML file -> one validated, frozen ``SweepConfig``, before Ray starts.

A sweep file holds a partial ``RunConfig`` (``base``), a search space over dotted ``RunConfig`` paths (inline, or the
method's file in ``sweeps/spaces/``), the budget (trials, concurrency, ASHA) and where results go (MLflow, Ray
storage). ``load_sweep_config`` checks everything at once and raises one ``ConfigError`` listing every problem:
unknown or misspelt keys, a bad base config, search-space paths that do not exist, distribution syntax, empty or
non-positive ranges, every corner of the space building a valid ``RunConfig``, a metric that ``fit`` reports, ASHA
settings that fit the epoch budget. Relative paths are made absolute against the current directory, because Tune
runs each trial in its own working directory.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import Field, ValidationError

from robust_core.config import (
    ROBUST_VAL_METRIC, ConfigError, RunConfig, Strict, _format_errors, build_run_config, deep_merge, parse_number,
    parse_overrides, read_yaml, set_path,
)

SPACES_DIR = Path(__file__).parent / "spaces"
KINDS = ("uniform", "loguniform", "int", "choice")
# Per-epoch metrics reported by ``robust_core.train.fit`` for every method, and the direction that improves them;
# ROBUST_VAL_METRIC only when ``base.train.robust_val`` is set, at its epochs (checked in ``check_cross``).
METRIC_MODES = {"val_acc": "max", "train_acc": "max", "val_loss": "min", "train_loss": "min", ROBUST_VAL_METRIC: "max"}
MAX_CORNER_CONFIGS = 4096  # above this many corner combinations, corners are checked one axis at a time


class Dist(Strict):
    """One search dimension: ``kind`` in uniform | loguniform | int | choice; ``args`` = (lo, hi) or the choices."""

    kind: Literal["uniform", "loguniform", "int", "choice"]
    args: tuple[Any, ...]

    def corners(self) -> list[Any]:
        return list(self.args)

    def to_optuna(self):
        import optuna.distributions as od

        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.args))
        if self.kind == "int":
            return od.IntDistribution(int(self.args[0]), int(self.args[1]))
        return od.FloatDistribution(float(self.args[0]), float(self.args[1]), log=self.kind == "loguniform")

    def to_yaml(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.args)}


class Scheduler(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs before ASHA's first rung
    reduction_factor: float = Field(2, gt=1)  # keep 1/reduction_factor of the trials at each rung


class Resources(Strict):
    cpu: float = Field(1, gt=0)  # CPUs per trial
    gpu: float = Field(0, ge=0)  # GPUs per trial; fractional values share one device (no memory isolation)


class Tracking(Strict):
    uri: str = "sqlite:///runs/mlflow.db"  # sqlite:///path (schema created by the driver) or http://host:port
    experiment: str = "robust-sweep"


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # MLflow parent run, Optuna study, Ray experiment dir
    base: RunConfig
    search_space: dict[str, Dist]  # resolved: dotted RunConfig path -> distribution
    num_trials: int = Field(ge=1)
    max_concurrent: int = Field(ge=1)
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    seed: int = 0  # seeds Optuna's TPE sampler
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(2, ge=0)  # retries of a failing trial, resumed from its last epoch checkpoint
    tracking: Tracking = Field(default_factory=Tracking)
    storage: str = "./runs/ray"  # local path (single node) or URI (s3://, gs://, file:// on a shared filesystem)
    optuna_storage: str | None = None  # e.g. sqlite:///runs/optuna.db to keep the study outside Ray's checkpoint

    @property
    def max_t(self) -> int:
        """ASHA's budget: the configured epochs (one source for the budget)."""
        return self.base.train.epochs

    @property
    def rungs(self) -> list[int]:
        """The epochs at which ASHA compares trials (none without ASHA)."""
        if self.scheduler.type != "asha":
            return []
        return asha_rungs(self.scheduler.grace_period, self.scheduler.reduction_factor, self.max_t)

    @property
    def sparse_metric(self) -> bool:
        """The watched metric is not in every epoch's report (``val_robust_acc`` at ``train.robust_val.epochs``)."""
        rv = self.base.train.robust_val
        return self.metric == ROBUST_VAL_METRIC and rv is not None and rv.epochs is not None

    @property
    def experiment_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def trial_config(self, sampled: Mapping[str, Any]) -> RunConfig:
        """The typed config of one trial: base + the sampled values (flat dotted keys, as Tune passes them)."""
        return self.base.with_values(sampled, f"trial config of sweep {self.name}")

    def to_yaml_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["search_space"] = {k: v.to_yaml() for k, v in self.search_space.items()}
        return d

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_yaml_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """Hash of what the sweep is (base config, space, budget, search, scheduler); not of where it is recorded
        (``tracking``, ``storage``), so a resumed sweep may talk to a restarted MLflow server on another port."""
        import hashlib
        import json

        what = {k: v for k, v in self.to_yaml_dict().items() if k not in ("tracking", "storage")}
        blob = json.dumps(what, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_sweep_config(path: str | Path, overrides: list[str] | None = None, cwd: str | Path | None = None
                      ) -> SweepConfig:
    """Read, merge ``key=value`` overrides (e.g. ``num_trials=8``, ``base.train.epochs=3``), validate, resolve paths."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides))
    return build_sweep_config(raw, source=str(path), cwd=cwd)


def build_sweep_config(raw: Mapping[str, Any], source: str = "sweep config", cwd: str | Path | None = None
                       ) -> SweepConfig:
    cwd = Path(cwd or Path.cwd()).resolve()
    problems: list[str] = []
    raw = dict(raw)

    base_raw = raw.get("base") or {}
    base: RunConfig | None = None
    if not isinstance(base_raw, Mapping):
        problems.append("base: must be a mapping (a partial run config: data, model, method, train)")
        base_raw = {}
    else:
        base_raw = deep_merge({}, base_raw)
        root = (base_raw.get("data") or {}).get("root") if isinstance(base_raw.get("data"), Mapping) else None
        root = root or "./data"
        if isinstance(root, str) and "://" not in root:  # trials run in other working directories
            set_path(base_raw, "data.root", str((cwd / Path(root).expanduser()).resolve()))
        try:
            base = build_run_config(base_raw)
        except ConfigError as e:
            problems += [f"base.{p}" for p in e.problems]

    space: dict[str, Dist] = {}
    space_raw = raw.get("search_space")
    if space_raw is None:
        if base is not None:
            space_raw = default_space_raw(base.method.name, base.data.name, problems)
    if space_raw is not None:
        space = parse_space(space_raw, problems)
    if space:  # one problem per bad path (with the valid keys); corners only of the paths that exist
        bad = check_paths(base.to_dict() if base is not None else base_raw, space)
        problems += [p for _, p in bad]
        if base is not None:
            problems += check_corners(base, {k: d for k, d in space.items() if k not in {path for path, _ in bad}})

    tracking = raw.get("tracking")
    if isinstance(tracking, Mapping) and isinstance(tracking.get("uri"), str):
        uri = tracking["uri"]
        if "://" not in uri:
            problems.append(f"tracking.uri: {uri!r} is a plain path (an MLflow file store, refused by MLflow 3.13+); "
                            "use sqlite:///path/mlflow.db or http://host:port")
        raw["tracking"] = {**tracking, "uri": resolve_sqlite(uri, cwd)}
    if isinstance(raw.get("optuna_storage"), str):
        raw["optuna_storage"] = resolve_sqlite(raw["optuna_storage"], cwd)
    if isinstance(raw.get("storage"), str) and "://" not in raw["storage"]:
        raw["storage"] = str((cwd / Path(raw["storage"]).expanduser()).resolve())

    sweep = None
    try:
        sweep = SweepConfig.model_validate({**raw, "base": base or RunConfig(), "search_space": space})
    except ValidationError as e:
        problems += [p for p in _format_errors(e) if not p.startswith(("base.", "search_space."))]

    problems += check_cross(raw, base)
    if problems:
        raise ConfigError(problems, source)
    assert sweep is not None
    return sweep


def resolve_sqlite(uri: str, cwd: Path) -> str:
    """``sqlite:///rel/x.db`` -> ``sqlite:////abs/rel/x.db`` (relative to ``cwd``); other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((cwd / uri[len(prefix):]).resolve())
    return uri


def default_space_raw(method: str, dataset: str, problems: list[str]) -> Mapping[str, Any] | None:
    """The entry for ``dataset`` (else ``default``) of ``sweeps/spaces/<method>.yaml``."""
    f = SPACES_DIR / f"{method}.yaml"
    if not f.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        problems.append(f"search_space: null but there is no {f} for method {method!r} (have: {', '.join(known)}); "
                        "write that file or give search_space inline")
        return None
    try:
        data = read_yaml(f)
    except ConfigError as e:
        problems += e.problems
        return None
    problems += check_space_file(data, f)
    spaces = data.get("spaces") or {}
    entry = spaces.get(dataset, spaces.get("default")) if isinstance(spaces, Mapping) else None
    if entry is None:
        problems.append(f"search_space: {f} has no entry for dataset {dataset!r} and no 'default' entry")
    return entry


def check_space_file(data: Mapping[str, Any], f: Path | str) -> list[str]:
    """Shape of a ``sweeps/spaces/<method>.yaml`` file: ``method`` (= file stem) and ``spaces: {dataset: space}``."""
    problems = []
    extra = set(data) - {"method", "spaces"}
    if extra:
        problems.append(f"{f}: unknown key(s) {sorted(extra)}; expected 'method' and 'spaces'")
    if data.get("method") != Path(f).stem:
        problems.append(f"{f}: method: {data.get('method')!r} must equal the file name {Path(f).stem!r}")
    if not isinstance(data.get("spaces"), Mapping) or not data.get("spaces"):
        problems.append(f"{f}: spaces: must be a non-empty mapping of dataset name (or 'default') -> search space")
    return problems


def parse_space(space_raw: Any, problems: list[str]) -> dict[str, Dist]:
    if not isinstance(space_raw, Mapping) or not space_raw:
        problems.append("search_space: must be a non-empty mapping of dotted run-config path -> distribution, "
                        "e.g. {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}")
        return {}
    out: dict[str, Dist] = {}
    for path, spec in space_raw.items():
        key = f"search_space.{path}"
        if path == "train.epochs":
            problems.append(f"{key}: the epoch budget cannot be searched (ASHA's max_t is base.train.epochs)")
            continue
        d = parse_dist(spec, key, problems)
        if d is not None:
            out[str(path)] = d
    return out


def parse_dist(spec: Any, key: str, problems: list[str]) -> Dist | None:
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        problems.append(f"{key}: expected exactly one of {{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, "
                        f"{{int: [lo, hi]}}, {{choice: [v1, v2, ...]}} (got {spec!r})")
        return None
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            problems.append(f"{key}: choice needs a non-empty list of values (got {args!r})")
            return None
        bad = [v for v in args if v is not None and not isinstance(v, (bool, int, float, str))]
        if bad:
            problems.append(f"{key}: choice values must be numbers, strings, booleans or null (Optuna cannot "
                            f"sample {bad!r}); search a scalar instead")
            return None
        if len(set(map(repr, args))) != len(args):
            problems.append(f"{key}: choice has repeated values {args!r}")
            return None
        return Dist(kind=kind, args=tuple(parse_number(v) if isinstance(v, str) and "/" in v else v for v in args))
    if not isinstance(args, list) or len(args) != 2:
        problems.append(f"{key}: {kind} needs [lo, hi] (got {args!r})")
        return None
    lo, hi = (parse_number(v) for v in args)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
        problems.append(f"{key}: {kind} bounds must be finite numbers (got {args!r})")
        return None
    if kind == "int" and not all(float(v).is_integer() for v in (lo, hi)):
        problems.append(f"{key}: int bounds must be integers (got {args!r})")
        return None
    if lo >= hi:
        problems.append(f"{key}: {kind} needs lo < hi (got lo={lo}, hi={hi})")
        return None
    if kind == "loguniform" and lo <= 0:
        problems.append(f"{key}: loguniform needs lo > 0 (got lo={lo}); use uniform for ranges that include 0")
        return None
    if kind == "int":
        return Dist(kind=kind, args=(int(lo), int(hi)))
    return Dist(kind=kind, args=(float(lo), float(hi)))


def check_corners(base: RunConfig, space: Mapping[str, Dist]) -> list[str]:
    """Every corner (each range end, each choice) must build a valid RunConfig; also together with the others."""
    problems: list[str] = []
    bad_paths: set[str] = set()
    raw = base.to_dict()
    for path, d in space.items():  # one axis at a time: names the offending path and value
        for v in d.corners():
            try:
                trial = deep_merge(raw, {})
                set_path(trial, path, v)
                build_run_config(trial)
            except ConfigError as e:
                bad_paths.add(path)
                problems += [f"search_space.{path}={v!r}: {p}" for p in e.problems]
    if problems:
        return problems
    axes = [[(p, v) for v in d.corners()] for p, d in space.items()]
    if math.prod(len(a) for a in axes) > MAX_CORNER_CONFIGS:
        return problems
    for combo in itertools.product(*axes):  # interactions between dimensions
        trial = deep_merge(raw, {})
        for p, v in combo:
            set_path(trial, p, v)
        try:
            build_run_config(trial)
        except ConfigError as e:
            where = ", ".join(f"{p}={v!r}" for p, v in combo)
            problems += [f"search_space corner ({where}): {p}" for p in e.problems]
            break
    return problems


def check_paths(base_raw: Mapping[str, Any], space: Mapping[str, Dist]) -> list[tuple[str, str]]:
    """Each search-space path names a run-config key (method params against the method's ``Params`` when the
    method name is known): (path, problem) once per bad path, with "did you mean" and the valid keys. Also works
    when the base config is invalid, so these problems are listed with the others."""
    import difflib

    from robust_core.config import DataConfig, MethodConfig, ModelConfig, TrainConfig
    from robust_core.registry import METHODS

    sections = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "train": TrainConfig}
    method = (base_raw.get("method") or {}).get("name", "mle") if isinstance(base_raw.get("method"), Mapping) else None
    problems = []
    for path in space:
        head, *rest = path.split(".")
        if head not in sections:
            problems.append((path, f"search_space.{path}: {head!r} is not a section of the run config "
                                   f"(use data., model., method. or train.)"))
            continue
        fields = list(sections[head].model_fields)
        if head == "method" and rest[:1] == ["params"] and len(rest) == 2 and method in METHODS:
            fields, key, what = list(METHODS.get(method).Params.model_fields), rest[1], f"a {method} param"
        elif rest[:1] == ["params"] and len(rest) == 2:
            continue  # model kwargs / params of an unknown method: checked once the base is valid
        elif len(rest) == 1:
            key, what = rest[0], f"a {head} key"
        else:
            problems.append((path, f"search_space.{path}: not a run-config key"))
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            problems.append((path, f"search_space.{path}: {key!r} is not {what}; {hint}valid: {', '.join(fields)}"))
    return problems


def check_cross(raw: Mapping[str, Any], base: RunConfig | None) -> list[str]:
    """Checks across fields, on the raw values (so they run even when other fields are invalid)."""
    problems = []
    metric, mode = raw.get("metric", "val_acc"), raw.get("mode", "max")
    if metric not in METRIC_MODES:
        problems.append(f"metric: {metric!r} is not reported by fit every epoch; use one of "
                        f"{', '.join(METRIC_MODES)}")
    elif mode in ("max", "min") and mode != METRIC_MODES[metric]:
        problems.append(f"mode: {metric} improves with mode={METRIC_MODES[metric]}, got mode={mode}")
    if base is not None and base.data.n_val == 0 and metric.startswith("val_"):
        problems.append(f"base.data.n_val: 0 leaves no validation split for {metric} to select on; a sweep needs "
                        "one (n_val: 0 is for final retrains on train ∪ validation)")
    sched = raw.get("scheduler") or {}
    grace = sched.get("grace_period", 1) if isinstance(sched, Mapping) else 1
    epochs = base.train.epochs if base is not None else _raw_epochs(raw)
    asha = isinstance(sched, Mapping) and sched.get("type", "asha") == "asha"
    if epochs is not None and asha and isinstance(grace, int) and grace > epochs:
        problems.append(f"scheduler.grace_period: {grace} epochs exceeds max_t = base.train.epochs = "
                        f"{epochs}; lower it or raise the epochs")
    if metric == ROBUST_VAL_METRIC and base is not None:
        rv = base.train.robust_val
        rf = sched.get("reduction_factor", 2) if isinstance(sched, Mapping) else 2
        if rv is None:
            problems.append(f"metric: {metric} is computed only when base.train.robust_val says how (e.g. "
                            "{attack: pgd, steps: 10, n_examples: 500}); set it, or select on val_acc")
        elif asha and rv.epochs is not None and isinstance(grace, int) and grace <= base.train.epochs \
                and isinstance(rf, (int, float)) and rf > 1:
            rungs = asha_rungs(grace, rf, base.train.epochs)
            missing = [r for r in rungs if r not in rv.epochs]
            if missing:
                problems.append(f"base.train.robust_val.epochs: ASHA compares trials on {metric} at epochs {rungs}, "
                                f"but it is computed only at {list(rv.epochs)} and the last ({base.train.epochs}); "
                                f"add {missing}, or set epochs: null (every epoch)")
    return problems


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which Ray's ``ASHAScheduler`` (one bracket) compares trials: grace·rf^k below ``max_t`` (a trial
    that reaches ``max_t`` stops there), as the first whole epoch at or after each (the rule and rounding of
    ``ray.tune.schedulers.async_hyperband._Bracket``; ``tests/test_robust_selection.py`` compares with it)."""
    import numpy as np

    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return sorted({math.ceil(grace_period * reduction_factor ** k) for k in range(n)
                   if grace_period * reduction_factor ** k < max_t})


def _raw_epochs(raw: Mapping[str, Any]) -> int | None:
    """base.train.epochs from an unvalidated config (its default when absent); None when it is not an int."""
    from robust_core.config import TrainConfig

    base = raw.get("base")
    train = base.get("train") if isinstance(base, Mapping) else None
    e = train.get("epochs", TrainConfig.model_fields["epochs"].default) if isinstance(train, Mapping) else \
        TrainConfig.model_fields["epochs"].default
    return e if isinstance(e, int) and not isinstance(e, bool) else None

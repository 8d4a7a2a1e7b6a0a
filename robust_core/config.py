"""Typed run configuration: data, model, method, train.

Flow: defaults (here, and in each method's ``Params``) <- YAML file <- ``--set key=value`` overrides, then one
validation that rejects unknown keys and lists every problem at once. ``robust_core`` code only ever sees the
frozen ``RunConfig``; raw dicts stop at ``load_run_config``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from typing_extensions import Annotated

from robust_core.registry import DATASETS, METHODS, MODELS, UnknownNameError


class ConfigError(ValueError):
    """A configuration is invalid; ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")


def parse_number(v: Any) -> Any:
    """Accept ``8/255``-style fractions and plain numeric strings; everything else is left to pydantic."""
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"[-+]?\d+(\.\d*)?\s*/\s*\d+(\.\d*)?", s):
            num, den = (float(t) for t in s.split("/"))
            return num / den if den else v  # 1/0 stays a string: the field then reports it is not a number
        try:
            return float(Fraction(s)) if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", s, re.I) else v
        except (ValueError, ZeroDivisionError):
            return v
    return v


Number = Annotated[float, BeforeValidator(parse_number)]
"""A float that may be written as a fraction (``eps: 8/255``); parsed once, here."""


def linf_pixel_radius(v: float | None) -> float | None:
    """An L∞ radius of inputs in [0, 1] is at most 1: the one check of every config's L∞ ε (``8`` meant ``8/255``)."""
    if v is not None and v > 1:
        raise ValueError(f"{v} > 1: ε is in pixel units of inputs in [0, 1] (write 8/255, not 8)")
    return v


class Strict(BaseModel):
    """Base for every config object: unknown keys are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    name: str = "mnist5k"
    root: str = "./data"  # where torchvision datasets are read from / downloaded to
    download: bool = True  # try to download when the files are missing (fails clearly when offline)
    n_val: int = Field(500, ge=0)  # validation examples carved from train (class-balanced); 0: none, train on all
    n_labeled: int | None = Field(None, ge=1)  # None: supervised on all of train; N: N labels, rest unlabeled
    split_seed: int = 0  # seeds the val / labeled / unlabeled split (numpy PCG64: same on every machine)


class ModelConfig(Strict):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the registered model


class MethodConfig(Strict):
    name: str = "mle"
    params: dict[str, Any] = Field(default_factory=dict)  # fields of the method's ``Params`` class

    def typed_params(self):
        return METHODS.get(self.name).Params.model_validate(self.params)


ROBUST_VAL_METRIC = "val_robust_acc"  # what fit reports when train.robust_val is set (a sweep / selection metric)


class RobustValOptions(Strict):
    """How the robust validation metric ``val_robust_acc`` is measured (what a pipeline profile sets in
    ``datasets.<d>.robust_val``): the accuracy of the deployed model (``method.inference_model``) on the validation
    split under one attack of the one attack loop (``robust_core.attacks``), in eval mode. Never the test set.

    attack: "pgd" (default: PGD-k from a random start, Madry et al. 2018), "cw" (PGD-k on the Carlini-Wagner
    margin) or "fgsm" (one step of length ε; ``steps`` and ``step_frac`` unused). norm: "linf" (default) or "l2".
    steps: 10 (PGD/CW iterations; a ranking signal for selection, not a final number: the tables' attacks are the
    evaluation suites'). step_frac: 0.25 (step = step_frac·ε). n_examples: None = the whole validation split; N = a
    seeded subset of it, the same examples at every epoch and in every trial. seed: 0 (the subset and the random
    starts, fixed, so epochs and trials are compared on the same draws).
    """

    attack: Literal["pgd", "cw", "fgsm"] = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    steps: int = Field(10, ge=1)
    step_frac: float = Field(0.25, gt=0)
    n_examples: int | None = Field(None, ge=1)
    seed: int = 0


class RobustValConfig(RobustValOptions):
    """``train.robust_val``: compute ``val_robust_acc`` (``RobustValOptions``) during training.

    eps: the radius, pixel units of inputs in [0, 1] (None = the dataset's default for ``norm``, from its source:
    0.3 on MNIST, 8/255 on CIFAR-10; the pipeline writes the profile's evaluation ε here). epochs: the epochs
    (1-based) at which it is computed besides the last one, which always is (None = every epoch). A sweep that
    selects on it with ASHA needs every rung among them (``sweeps/spec.py`` checks; the pipeline writes the rungs),
    because ASHA compares trials on the first report at or after each rung that carries the metric.
    """

    eps: Annotated[Number, Field(ge=0)] | None = None
    epochs: tuple[Annotated[int, Field(ge=1)], ...] | None = None

    @field_validator("epochs")
    @classmethod
    def _sorted(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if v is None else tuple(sorted(set(v)))

    @field_validator("eps")
    @classmethod
    def _pixel_units(cls, v: float | None, info: ValidationInfo) -> float | None:
        return linf_pixel_radius(v) if info.data.get("norm", "linf") == "linf" else v

    def due(self, epoch: int, last: int) -> bool:
        """Whether to compute it after ``epoch`` (1-based) of a run of ``last`` epochs."""
        return self.epochs is None or epoch == last or epoch in self.epochs

    def radius(self, dataset: str) -> float:
        """ε: the configured one, else the dataset's default for ``norm`` (``EvalSettings.eps_for``, from its source:
        the evaluations' rule)."""
        from robust_core.attacks.settings import EvalSettings

        return self.eps if self.eps is not None else EvalSettings(dataset=dataset).eps_for(self.norm)

    def attack_for(self, dataset: str):
        """The ``robust_core.attacks`` attack that makes the examples, at ``radius(dataset)``."""
        from robust_core.attacks.gradient import CW, FGSM, PGD

        eps = self.radius(dataset)
        if self.attack == "fgsm":
            return FGSM(eps=eps, norm=self.norm)
        return (CW if self.attack == "cw" else PGD)(eps=eps, norm=self.norm, n_steps=self.steps,
                                                     step_frac=self.step_frac)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the largest training pool
    batch_size: int = Field(64, ge=1)  # labeled examples per step
    unlabeled_batch_size: int = Field(128, ge=1)  # unlabeled examples per step (semi-supervised methods)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum, or Adam beta1
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)  # decoupled from lr for Adam (AdamW), coupled for SGD
    schedule: Literal["constant", "linear", "cosine", "step"] = "linear"
    decay_start: float = Field(0.5, ge=0, lt=1)  # linear/cosine: fraction of all steps after which the lr decays
    milestones: tuple[int, ...] = Field((), validate_default=True)  # step: lr *= decay_factor after these epochs
    decay_factor: float = Field(0.1, gt=0, lt=1)  # step: factor applied at each milestone
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm
    seed: int = 0  # initialisation, batch order, method randomness
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast dtype; fp16 adds a gradient scaler (CUDA only)
    deterministic: bool = True
    eval_batch_size: int = Field(1000, ge=1)
    robust_val: RobustValConfig | None = None  # also report val_robust_acc (robust selection); None: not computed
    # Execution only (results equal up to float rounding; data_placement and data_dtype: bit-identical):
    # where the training set lives: on the training device (batches gathered and indices drawn there: no copy and
    # no wait per step), in host memory (pinned; each batch copied over), or auto = the device when the set takes at
    # most a quarter of its free memory (always on CPU). See robust_core/data/placement.py.
    data_placement: Literal["auto", "device", "host"] = "auto"
    # storage dtype of the images: uint8 (4x smaller; each batch converted to the exact float32 values in [0, 1]),
    # float32, or auto = uint8 for 8-bit image data on CUDA, float32 elsewhere (on CPU a copy would add memory)
    data_dtype: Literal["auto", "uint8", "float32"] = "auto"
    channels_last: bool = False  # NHWC memory layout for the model's 2-D convolutions and their inputs (CUDA: faster
    #                              convs, with amp especially); no effect on models without 2-D convolutions
    compile: bool = False  # torch.compile the classifier the method calls (inductor; compiles once per mode/shape)

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, m: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        schedule, epochs = info.data.get("schedule"), info.data.get("epochs")
        if schedule == "step" and not m:
            raise ValueError("schedule 'step' needs the epochs at which to decay, e.g. [60, 90]")
        if schedule != "step" and m:
            raise ValueError(f"only used by schedule 'step' (schedule is {schedule!r}); remove them or set "
                             "train.schedule=step")
        if epochs is not None and (any(b <= a for a, b in zip(m, m[1:])) or any(e < 1 or e >= epochs for e in m)):
            raise ValueError(f"{list(m)} must be strictly increasing epochs in [1, {epochs - 1}] (train.epochs is "
                             f"{epochs}; a milestone at or after the last epoch never takes effect)")
        return m


class RunConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_names_and_params(self) -> "RunConfig":
        problems = _cross_problems(self.model_dump())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Stable hash of the resolved config (identifies a run for reuse and lineage)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def with_values(self, values: Mapping[str, Any], source: str = "config") -> "RunConfig":
        """A copy with dotted-path values set (``{"train.lr": 0.01}``), validated again."""
        if not values:
            return self
        raw = self.to_dict()
        for path, value in values.items():
            set_path(raw, path, value)
        return build_run_config(raw, source)


def _cross_problems(raw: Mapping[str, Any]) -> list[str]:
    """Checks against the registries (names, method params, model kwargs, label balance) on a plain dict, so they
    also run when field validation failed (pydantic skips the model validator then) and all problems come at once."""

    def section(name: str, cls: type[Strict]) -> dict[str, Any]:
        v = raw.get(name)
        out = {k: f.default for k, f in cls.model_fields.items() if f.default_factory is None}
        out.update({k: f.default_factory() for k, f in cls.model_fields.items() if f.default_factory is not None})
        if isinstance(v, Mapping):
            out.update(v)
        return out

    data, model, method = section("data", DataConfig), section("model", ModelConfig), section("method", MethodConfig)
    problems: list[str] = []
    for key, registry, name in (
        ("data.name", DATASETS, data["name"]),
        ("model.name", MODELS, model["name"]),
        ("method.name", METHODS, method["name"]),
    ):
        if not isinstance(name, str):
            continue  # reported by field validation
        try:
            registry.get(name)
        except UnknownNameError as e:
            problems.append(f"{key}: {e}")
    if isinstance(method["name"], str) and method["name"] in METHODS and isinstance(method["params"], Mapping):
        try:
            METHODS.get(method["name"]).Params.model_validate(method["params"])
        except ValidationError as e:
            problems += _format_errors(e, prefix="method.params")
    if isinstance(model["name"], str) and model["name"] in MODELS and isinstance(model["params"], Mapping):
        problems += _check_kwargs(MODELS.get(model["name"]), model["params"], "model.params")
    n_labeled = data["n_labeled"]
    if isinstance(data["name"], str) and data["name"] in DATASETS and isinstance(n_labeled, int) and n_labeled > 0:
        k = DATASETS.get(data["name"]).info.num_classes
        if n_labeled % k:
            problems.append(f"data.n_labeled: {n_labeled} labels cannot be balanced over {k} classes; "
                            f"use a multiple of {k}")
    return problems


def _check_kwargs(factory: Any, params: Mapping[str, Any], prefix: str) -> list[str]:
    import inspect

    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    allowed = [n for n in sig.parameters if n != "info"]
    bad = [k for k in params if k not in allowed]
    return [f"{prefix}.{k}: unknown parameter; {factory.__name__} accepts {', '.join(allowed) or 'none'}" for k in bad]


def _format_errors(err: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = ".".join(p for p in (prefix, loc) if p)
        if e["type"] == "extra_forbidden":
            out.append(f"{key}: unknown key (check the spelling)")
        elif e["type"] == "value_error" and (not loc or "\n" in str(e.get("ctx", {}).get("error", ""))):
            out += [line for line in str(e["ctx"]["error"]).splitlines()]
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
            out.append(f"{key}: {msg}{got}")
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate dicts."""
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError([f"{path}: {k!r} is a value, not a section"])
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "method.params.eps=8/255"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    problems = []
    for pair in pairs or []:
        if "=" not in pair:
            problems.append(f"override {pair!r}: expected key=value, e.g. train.lr=0.01")
            continue
        key, raw = pair.split("=", 1)
        set_path(out, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    if problems:
        raise ConfigError(problems, "command line")
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"{p}: no such file"], str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{p}: not valid YAML: {e}"], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not a text file (YAML must be UTF-8 text); check the path"], str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: top level must be a mapping, got {type(data).__name__}"], str(p))
    return data


def build_run_config(raw: Mapping[str, Any], source: str = "run config") -> RunConfig:
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as e:
        problems = _format_errors(e)
        if all(err["loc"] for err in e.errors()):  # field errors: pydantic skipped the cross-field checks
            problems += [p for p in _cross_problems(raw) if p not in problems]
        raise ConfigError(problems, source) from None


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    over = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    raw = deep_merge(raw, over)
    return build_run_config(raw, str(path) if path else "run config")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

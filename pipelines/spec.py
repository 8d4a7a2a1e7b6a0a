"""Typed final-pipeline config: tables and figures (rows × columns, paper values), where each row's configuration
comes from, how many seeds, and — for the paper-reproduction profiles — how each paper dataset is run here.

Two ways to name a row's configuration:

- ``sweep: NAME`` — the best trial of an existing sweep (its MLflow parent run), as in ``pipelines/demo.yaml``;
- ``method: KEY`` — a key of ``methods:``; the pipeline then owns one sweep per (method, column setting), built
  from the profile's ``datasets:`` entry (data, model, budget) and ``sweeps/spaces/<method>.yaml``, and runs it
  if it has not finished yet.

A profile file (``pipelines/paper.yaml``, ``laptop.yaml``, ``smoke.yaml``) says ``include: catalog.yaml`` (the
papers' tables and figures, shared) and adds how each paper dataset is run: ``datasets: {mnist: {...}, svhn: null}``
(``null`` = not available in this profile: its columns are left out, with a footnote). ``overrides:`` changes one
table or figure by name (e.g. fewer seeds for a sensitivity table).

Selection: a table or figure that reports accuracy under attack (a column with ``value: attack`` other than clean;
figure kinds curves, budget, bars) selects its rows' configurations on the robust validation metric
``val_robust_acc`` (``selection: robust``); the others on ``selection_metric`` (``val_acc``; ``selection: clean``).
A row, a method key or a table/figure may say ``selection:`` explicitly, in that precedence (e.g. ``clean`` for a
standard-training baseline, whose robust accuracy is about 0 for every configuration). A table shows one model per
row and seed in all of its columns (Shaham's test and A_mnist columns show the same nets). A method shown in a clean
and in a robust table gets one sweep per selection (and per robust attack): the robust one computes
``val_robust_acc`` (``datasets.<d>.robust_val``: how, at the dataset's evaluation ε; the table's or figure's
``robust_attack`` names the attack when its threat is not the profile's default PGD, e.g. ``fgsm`` for tables of
one-step attacks) at ASHA's rungs and the last epoch, and searches and selects on it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, field_validator, \
    model_validator
from typing_extensions import Annotated

from robust_core.attacks.key import AttackKey
from robust_core.attacks.settings import EvalOptions
from robust_core.config import ConfigError, Number, RobustValOptions, _format_errors, deep_merge, read_yaml

PAPER_DATASETS = ("mnist", "svhn", "cifar10", "cifar100")
PAPER_STEPS = (20, 40, 100)  # the papers' PGD/CW step counts; a profile's eval.steps maps onto them in order
NAME = r"^[A-Za-z0-9_.-]+$"
Selection = Literal["clean", "robust"]  # which validation metric a row's configuration is selected on
RobustAttack = Literal["pgd", "cw", "fgsm"]  # the attack of robust selection (robust_core.config.RobustValOptions)
# an attack as a column names it, parsed once (robust_core.attacks.key): `pgd-20`, `pgd-20[both]`, `fgsm@baseline`
AttackField = Annotated[AttackKey, PlainValidator(AttackKey.coerce), PlainSerializer(str)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingSpec(_Strict):
    uri: str
    experiment: str = "robust-sweep"


class MethodSpec(_Strict):
    """What a row trains. method: registered method name. params: fixed method params (part of the sweep's base,
    e.g. ``{norm: l1}`` for RO-L1). space: search-space entries merged over ``sweeps/spaces/<method>.yaml``'s
    entry (``null`` removes one). inference: method params changed only when the trained model is evaluated (e.g.
    ATLD's ``imt``): rows that differ only here share their sweep and retrains. space / model / train are keyed by
    paper dataset or ``default``: model replaces the profile dataset's model for this method (e.g. a WideResNet for
    the ATLD rows), train is merged over the profile dataset's train settings."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    inference: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: dict[str, dict[str, Any]] = Field(default_factory=dict)
    selection: Selection | None = None  # e.g. clean for a standard-training baseline, in every table; None: the table's

    def for_dataset(self, field: str, paper: str | None) -> Any:
        d = getattr(self, field)
        return d.get(paper or "", d.get("default"))

    @model_validator(mode="after")
    def _params_and_inference(self) -> "MethodSpec":
        """``params`` + ``inference`` must be valid ``Params`` of the method: checked here, so a typo in an
        evaluation-only override fails at --dry-run, not after training (``params`` alone are checked with the
        sweeps built from them)."""
        from robust_core.registry import METHODS

        if not self.inference or self.method not in METHODS:
            return self  # an unknown method is reported with the other cross-section problems
        try:
            METHODS.get(self.method).Params.model_validate({**self.params, **self.inference})
        except ValidationError as e:
            problems = [p for p in _format_errors(e, prefix="inference")
                        if p.split(":")[0].removeprefix("inference.") in self.inference]
            if problems:
                raise ValueError("; ".join(problems)) from None
        return self


class PublishedValue(_Strict):
    """A value the paper publishes for one cell, in the column's unit (accuracy or error in %, seconds, ratio).
    ``source`` says where it is, in the form ``pipelines/check_published.py`` verifies against the paper's text
    (``FILE.txt TABLE, lines A-B, row ROW, column COLUMN, number K``). ``value: null`` with a ``note``: the paper
    prints something here that does not read unambiguously in the extracted text; the note (why) becomes the cell's
    footnote. A cell the paper reports nothing for has no entry."""

    value: float | None = None
    source: str | None = None
    note: str = ""


class RowSpec(_Strict):
    label: str
    sweep: str | None = None  # an existing sweep (MLflow parent run) the best configuration is taken from
    method: str | None = None  # or: a key of `methods:` (the pipeline owns the sweeps)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides on the selected config (sensitivity rows)
    paper: dict[str, PublishedValue] = Field(default_factory=dict)  # column label -> published value (tables only)
    selection: Selection | None = None  # None: the table's / figure's

    @model_validator(mode="after")
    def _one_source(self) -> "RowSpec":
        if (self.sweep is None) == (self.method is None):
            raise ValueError(f"row {self.label!r}: give exactly one of `sweep:` (an existing sweep) or `method:` "
                             "(a key of `methods:`)")
        return self


Value = Literal["metric", "error", "attack", "epoch_time", "relative_epoch_time"]


class ColumnSpec(_Strict):
    """One column. dataset/labels: the paper's setting (``labels: null`` = supervised on all labels); omitted for
    rows that name a `sweep:`. value: ``metric`` (a final metric of the retrain runs × scale, default test accuracy
    in %), ``error`` (100 − test accuracy), ``attack`` (accuracy in % under ``suite``'s ``attack``, e.g. whitebox /
    pgd-20), ``epoch_time`` (seconds per epoch), ``relative_epoch_time`` (÷ that of method ``relative_to``)."""

    label: str
    dataset: str | None = None
    labels: int | None = Field(None, ge=1)
    value: Value = "metric"
    metric: str = "test_acc"
    scale: float = 100.0
    suite: str | None = None
    attack: AttackField | None = None
    relative_to: str | None = None  # a key of `methods:` (relative_epoch_time)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides on this column's retrains (over the row's)

    @field_validator("suite")
    @classmethod
    def _registered(cls, v: str | None) -> str | None:
        from robust_core.attacks.suites import SUITES
        from robust_core.registry import UnknownNameError

        try:
            return None if v is None else SUITES.get(v).name
        except UnknownNameError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _consistent(self) -> "ColumnSpec":
        if self.value == "attack" and (self.suite is None or self.attack is None):
            raise ValueError(f"column {self.label!r}: value 'attack' needs `suite:` and `attack:`")
        if self.value == "relative_epoch_time" and self.relative_to is None:
            raise ValueError(f"column {self.label!r}: value 'relative_epoch_time' needs `relative_to:` (a method key)")
        if self.dataset is not None and self.dataset not in PAPER_DATASETS:
            raise ValueError(f"column {self.label!r}: dataset {self.dataset!r} is not one of {PAPER_DATASETS}")
        return self


class TableSpec(_Strict):
    name: str = Field(pattern=NAME)
    title: str
    paper: str = ""  # citation shown under the table
    rows: list[RowSpec] = Field(min_length=1)
    columns: list[ColumnSpec] = Field(default_factory=lambda: [ColumnSpec(label="test accuracy (%)")])
    higher_is_better: bool = True
    decimals: int = Field(2, ge=0, le=6)
    seeds: list[int] | None = None  # default: the pipeline's seeds
    sources: dict[str, str] = Field(default_factory=dict)  # transfer: source name -> a key of `methods:` (its model)
    baseline: str | None = None  # fixed_set: the row whose model the fixed adversarial set is generated on
    notes: list[str] = Field(default_factory=list)
    selection: Selection | None = None  # None: robust when a column reports accuracy under an attack, else clean
    robust_attack: RobustAttack | None = None  # robust selection's attack (the table's threat); None: the profile's

    @property
    def reports_robust(self) -> bool:
        return any(c.value == "attack" and c.attack is not None and c.attack.name != "clean" for c in self.columns)


FigureKind = Literal["curves", "budget", "epochs", "epochs_to_reach", "bars", "weights"]


class SettingSpec(_Strict):
    """One panel of a figure: a paper dataset (with its label count). thresholds: epochs_to_reach only, this panel's
    test accuracies in % (None: the figure's ``thresholds``), e.g. FAT Fig. 3's 98 / 90 / 80 % per dataset."""

    dataset: str
    labels: int | None = Field(None, ge=1)
    thresholds: list[float] | None = None


XUnit = Literal["eps", "eps255", "l2_norm"]


class FigureAxis(_Strict):
    """The x-axis of a ``curves`` or ``budget`` figure: which radii its evaluations run and where they are plotted.

    x: ``eps`` (each attack's radius in its own norm, pixel units of inputs in [0, 1]), ``eps255`` (the same radius
    plotted in 1/255 of the pixel range: 8/255 at x = 8, as the ATLD paper writes ε) or ``l2_norm`` (the L2 norm of
    the perturbation, one axis for both attacks: L2 attacks at ε = x, L∞ attacks at ε∞ = x/√d with d the input's
    dimension, so that the sign perturbation of FGSM has L2 norm x before clipping to [0, 1]). levels: paper
    dataset -> the radii, written in the unit of ``x`` (``l2_norm``: L2 norms; ``eps``/``eps255``: L∞ radii in
    pixel units, ``8/255`` allowed); a dataset not listed keeps the profile's ``eval.eps_grid`` / ``l2_grid``."""

    x: XUnit = "eps"
    levels: dict[str, list[Annotated[Number, Field(ge=0)]]] = Field(default_factory=dict)

    @field_validator("levels")
    @classmethod
    def _paper_datasets(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        bad = [d for d in v if d not in PAPER_DATASETS]
        if bad:
            raise ValueError(f"levels: unknown paper dataset(s) {bad}; one of {', '.join(PAPER_DATASETS)}")
        return v


class FigureSpec(_Strict):
    """kind: ``curves`` (accuracy vs ε of ``attacks`` ⊂ {fgsm, l2grad}, suite curves), ``budget`` (accuracy vs ε
    of ``attacks`` ⊂ {pgd, cw}, suite budget), ``epochs`` (per epoch of the retrains, the ``epoch_curves`` (train,
    test) as ``epoch_y`` (error or accuracy, %); one panel per pair in ``pairs``, else one for all rows),
    ``epochs_to_reach`` (first epoch whose test accuracy reaches each of ``thresholds`` %, or of a setting's own),
    ``bars`` (accuracy under ``attacks`` of suite whitebox, one group per attack), ``weights`` (histograms of the
    retrained classifiers' weights, one panel per layer in ``layers``: state-dict names, default every conv and
    linear weight). One panel per setting (× attack for curves/budget, × layer for weights). axis: curves/budget
    only, the radii run and where they are plotted (``FigureAxis``)."""

    name: str = Field(pattern=NAME)
    title: str
    paper: str = ""
    kind: FigureKind
    rows: list[RowSpec] = Field(min_length=1)
    settings: list[SettingSpec] = Field(min_length=1)
    attacks: list[AttackField] = Field(default_factory=list)
    pairs: list[list[str]] = Field(default_factory=list)  # epochs: row labels shown together
    epoch_curves: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"], min_length=1)
    epoch_y: Literal["error", "accuracy"] = "error"  # epochs: what is plotted per epoch, in %
    layers: list[str] = Field(default_factory=list)  # weights: state-dict names of the layers; [] = every conv/linear
    thresholds: list[float] = Field(default_factory=list)  # epochs_to_reach: test accuracies in %
    seeds: list[int] | None = None
    selection: Selection | None = None  # None: robust for kinds curves, budget and bars (accuracy under attack)
    robust_attack: RobustAttack | None = None  # robust selection's attack; None: the profile's robust_val.attack
    axis: FigureAxis = Field(default_factory=FigureAxis)  # curves/budget: the radii run and their x positions

    @property
    def reports_robust(self) -> bool:
        return self.kind in ("curves", "budget", "bars")


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class DatasetProfile(_Strict):
    """How a paper dataset is run in this profile. name: registered dataset. model: {name, params}. train: train
    config overrides (epochs, steps_per_epoch, batch sizes, lr, ...). labels: paper label count -> this profile's
    (unlisted counts are kept). n_val: validation examples carved from train. eval: how its models are evaluated
    (``robust_core.attacks.settings.EvalOptions``: eps, l2_eps, steps, step_frac, restarts, batch_size, eps_grid,
    l2_grid, eot_samples, autoattack, n_examples, seed, audit), validated with the rest of the profile. robust_val:
    how the robust validation metric of robust-selected rows is measured (``robust_core.config.RobustValOptions``:
    attack, norm, steps, step_frac, n_examples, seed; its radius is ``eval``'s ε of that norm)."""

    name: str
    display: str | None = None  # column header name (default: the dataset name)
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp"})
    train: dict[str, Any] = Field(default_factory=dict)
    labels: dict[int, int] = Field(default_factory=dict)
    n_val: int | None = Field(None, ge=1)
    eval: EvalOptions = Field(default_factory=EvalOptions)
    robust_val: RobustValOptions = Field(default_factory=RobustValOptions)  # how robust selection measures (at eval ε)
    cost_step_s: float | None = Field(None, gt=0)  # seconds per supervised (MLE) training step, for the estimate
    train_size: int | None = Field(None, ge=1)  # examples in train (for the estimate when steps_per_epoch is null)


class SchedulerSpec(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)


class SweepDefaults(_Strict):
    """Sweeps the pipeline owns. mode: ``sweep`` (Ray Tune + Optuna + ASHA, then the best trial on the validation
    metric: ``val_acc``, or ``val_robust_acc`` for robust-selected rows) or ``defaults`` (no search and no selection:
    the method's defaults and the profile's budget, shared by clean and robust rows; for the smoke profile)."""

    mode: Literal["sweep", "defaults"] = "sweep"
    num_trials: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    storage: str = "./runs/ray"


class PipelineSpec(_Strict):
    name: str = Field(pattern=NAME)
    output_dir: str = "results"
    tracking: TrackingSpec
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)  # 5, as the papers do
    vary: list[Literal["train.seed", "data.split_seed"]] = Field(
        default_factory=lambda: ["train.seed", "data.split_seed"])  # what each seed changes
    selection_metric: str = "val_acc"  # clean selection: read from the sweep's trials; never a test metric
    selection_mode: Literal["max", "min"] = "max"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    title_suffix: str = ""  # appended to every title, e.g. "mnist5k, reduced budget"
    data_root: str = "./data"
    generate_tiny_data: bool = False  # smoke: write tiny learnable datasets in torchvision's format to data_root
    datasets: dict[str, DatasetProfile | None] = Field(default_factory=dict)
    stand_in: str | None = None  # a key of `datasets:` run in place of a table's first dataset when none is available
    sweep: SweepDefaults = Field(default_factory=SweepDefaults)
    methods: dict[str, MethodSpec] = Field(default_factory=dict)
    tables: list[TableSpec] = Field(default_factory=list)
    figures: list[FigureSpec] = Field(default_factory=list)

    @field_validator("selection_metric")
    @classmethod
    def _no_test_selection(cls, v: str) -> str:
        if "test" in v:
            raise ValueError(f"{v!r} is a test-set metric; select on a validation metric such as val_acc")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "PipelineSpec":
        problems = cross_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def outputs(self) -> list[str]:
        return [t.name for t in self.tables] + [f.name for f in self.figures]

    def selection_of(self, item: TableSpec | FigureSpec, row: RowSpec) -> Selection:
        """Which validation metric ``row`` of ``item`` is selected on: the row's ``selection``, else its method's,
        else the table's / figure's, else robust when that reports accuracy under attack."""
        m = self.methods.get(row.method) if row.method is not None else None
        return (row.selection or (m.selection if m is not None else None) or item.selection
                or ("robust" if item.reports_robust else "clean"))


def cross_problems(spec: PipelineSpec) -> list[str]:
    """Checks across sections (names, references), all listed at once."""
    from robust_core.attacks.suites import BASELINE, SUITES
    from robust_core.registry import DATASETS, METHODS

    p: list[str] = []
    if not spec.tables and not spec.figures:
        p.append("tables/figures: a pipeline needs at least one table or figure")
    names = spec.outputs
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        p.append(f"table/figure names must be unique; repeated: {', '.join(dup)}")
    for key, m in spec.methods.items():
        if m.method not in METHODS.names():
            p.append(f"methods.{key}.method: unknown method {m.method!r}; known: {', '.join(METHODS.names())}")
    for key, d in spec.datasets.items():
        if key not in PAPER_DATASETS:
            p.append(f"datasets.{key}: not a paper dataset; use one of {', '.join(PAPER_DATASETS)}")
        if d is not None and d.name not in DATASETS.names():
            p.append(f"datasets.{key}.name: unknown dataset {d.name!r}; known: {', '.join(DATASETS.names())}")
    if spec.stand_in is not None and spec.datasets.get(spec.stand_in) is None:
        p.append(f"stand_in: {spec.stand_in!r} must be a key of `datasets:` that is not null")
    for kind, items in (("tables", spec.tables), ("figures", spec.figures)):
        for t in items:
            where = f"{kind}.{t.name}"
            labels = [r.label for r in t.rows]
            for r in t.rows:
                if r.method is not None and r.method not in spec.methods:
                    p.append(f"{where}: row {r.label!r} names method {r.method!r}, which is not a key of `methods:`")
            if isinstance(t, TableSpec):
                p += published_problems(t, where)
                needs: set[str] = set()
                for c in t.columns:
                    col = f"{where}: column {c.label!r}"
                    if c.relative_to is not None and c.relative_to not in spec.methods:
                        p.append(f"{col}: relative_to {c.relative_to!r} is not a method key")
                    if c.dataset is None and any(r.method is not None for r in t.rows):
                        p.append(f"{col} needs `dataset:` (its rows name methods)")
                    if c.value != "attack" or c.suite is None:
                        continue
                    if c.dataset is None:
                        p.append(f"{col} needs `dataset:` (its threat model and evaluation settings come from "
                                 "`datasets:` of that paper dataset)")
                    needs |= SUITES.get(c.suite).needs
                for s, key in t.sources.items():
                    if key not in spec.methods:
                        p.append(f"{where}: sources.{s} = {key!r} is not a key of `methods:` (what the source model "
                                 "trains)")
                    if s == BASELINE:
                        p.append(f"{where}: sources.{s}: {BASELINE!r} names the fixed set's baseline; use another name")
                if t.baseline is not None and t.baseline not in labels:
                    p.append(f"{where}: baseline {t.baseline!r} is not a row label")
                if "baseline" in needs and t.baseline is None:
                    p.append(f"{where}: its columns' suites need `baseline:` (the row the fixed set is made on)")
                if "sources" in needs and not t.sources:
                    p.append(f"{where}: its columns' suites need `sources:` (name -> method key of each source model)")
            else:
                p += [f"{where}: row {r.label!r} has `paper:` values; published values belong to table rows"
                      for r in t.rows if r.paper]
                for pair in t.pairs:
                    for lab in pair:
                        if lab not in labels:
                            p.append(f"{where}: pairs names {lab!r}, not a row label")
                if t.kind == "epochs_to_reach" and not t.thresholds and not all(s.thresholds for s in t.settings):
                    p.append(f"{where}: kind epochs_to_reach needs `thresholds:` (test accuracies in %), for the "
                             "figure or for each of its settings")
                if t.kind != "weights" and t.layers:
                    p.append(f"{where}: `layers:` is for kind weights only")
                if t.kind != "epochs" and {"epoch_curves", "epoch_y"} & t.model_fields_set:
                    p.append(f"{where}: `epoch_curves:` and `epoch_y:` are for kind epochs only")
                if t.kind != "epochs_to_reach" and any(s.thresholds is not None for s in t.settings):
                    p.append(f"{where}: a setting's `thresholds:` is for kind epochs_to_reach only")
                if t.kind in ("curves", "budget", "bars") and not t.attacks:
                    p.append(f"{where}: kind {t.kind} needs `attacks:`")
                for s in t.settings:
                    if s.dataset not in PAPER_DATASETS:
                        p.append(f"{where}: setting dataset {s.dataset!r} is not one of {PAPER_DATASETS}")
            if t.seeds is not None and len(set(t.seeds)) != len(t.seeds):
                p.append(f"{where}: seeds must be distinct")
    return p


def published_problems(t: TableSpec, where: str) -> list[str]:
    """Every published value of ``t`` names a column of ``t`` and is well formed (``value_problems``)."""
    p: list[str] = []
    labels = [c.label for c in t.columns]
    for r in t.rows:
        for col, pv in r.paper.items():
            at = f"{where}: row {r.label!r}, paper {col!r}"
            if col not in labels:
                p.append(f"{at}: not a column label of this table; columns: {', '.join(labels)}")
            p += value_problems(pv, at)
    return p


def value_problems(pv: PublishedValue, at: str) -> list[str]:
    """A value with a well-formed source, or no value and a note saying why (also for the pending file's entries)."""
    from pipelines.check_published import parse_source

    if pv.value is None:
        return [] if pv.note else [f"{at}: no value and no `note:`; give `value:` with its `source:`, or a note saying "
                                   "why the paper's value cannot be read (a cell the paper reports nothing for has no "
                                   "entry)"]
    if not pv.source:
        return [f"{at}: value {pv.value:g} has no `source:` (where it is printed in ../shared/papers/)"]
    try:
        parse_source(pv.source)
    except ValueError as e:
        return [f"{at}: {e}"]
    return []


def _absolutise(raw: dict[str, Any], cwd: Path) -> dict[str, Any]:
    from sweeps.spec import resolve_sqlite

    raw = dict(raw)
    tr = dict(raw.get("tracking") or {})
    if isinstance(tr.get("uri"), str):
        tr["uri"] = resolve_sqlite(tr["uri"], cwd)
        raw["tracking"] = tr
    for key in ("output_dir", "data_root"):
        if isinstance(raw.get(key), str) and "://" not in raw[key]:
            raw[key] = str((cwd / Path(raw[key]).expanduser()).resolve())
    sw = raw.get("sweep")
    if isinstance(sw, dict) and isinstance(sw.get("storage"), str) and "://" not in sw["storage"]:
        raw["sweep"] = {**sw, "storage": str((cwd / Path(sw["storage"]).expanduser()).resolve())}
    return raw


def _apply_overrides(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``overrides: {NAME: {...}}`` deep-merges into the table or figure called NAME (from the catalogue)."""
    over = raw.pop("overrides", None) or {}
    if not isinstance(over, dict):
        problems.append("overrides: must map a table/figure name to the fields to change")
        return raw
    for kind in ("tables", "figures"):
        items = raw.get(kind) or []
        raw[kind] = [deep_merge(it, over.pop(it.get("name"), {})) if isinstance(it, dict) else it for it in items]
    for name in over:
        problems.append(f"overrides.{name}: no table or figure of that name")
    return raw


def read_with_include(path: str | Path) -> dict[str, Any]:
    """The YAML at ``path``, on top of the file its ``include:`` names (relative to it), recursively."""
    path = Path(path)
    raw = read_yaml(path)
    inc = raw.pop("include", None)
    if inc is None:
        return raw
    base_path = (path.parent / inc).resolve()
    if not base_path.is_file():
        raise ConfigError([f"include: {inc!r} not found (looked for {base_path})"], str(path))
    base = read_with_include(base_path)
    for key in ("tables", "figures"):  # lists: a profile may add to the catalogue's, never silently replace
        if key in raw and key in base:
            raw[key] = list(base[key]) + list(raw[key])
    return deep_merge(base, raw)


def load_pipeline_spec(path: str | Path, overrides: dict[str, Any] | None = None,
                       cwd: str | Path | None = None) -> PipelineSpec:
    raw = deep_merge(read_with_include(path), overrides or {})
    problems: list[str] = []
    raw = _apply_overrides(raw, problems)
    try:
        spec = PipelineSpec.model_validate(_absolutise(raw, Path(cwd or Path.cwd()).resolve()))
    except ValidationError as e:
        raise ConfigError(problems + _format_errors(e), str(path)) from None
    if problems:
        raise ConfigError(problems, str(path))
    return spec

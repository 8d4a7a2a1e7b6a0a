"""Resolve a pipeline spec into the work it needs — pure, no MLflow, no Ray, so it is validated (and its cost
estimated) before anything starts.

Units of work, each identified by a stable key so a rerun finds it in MLflow:

- a *source* (``SourceUnit``): where a row's configuration comes from — an existing sweep, or a sweep the pipeline
  owns (one per method × setting × selection metric: a robust-selected row's sweep computes ``val_robust_acc`` at
  ASHA's rungs and the last epoch and searches on it), or the method's defaults (``sweep.mode: defaults``);
- a *retrain* (``RetrainKey``): a source's selected config + the row's ``set`` overrides + one seed;
- an *evaluation* (``EvalUnit``): one suite on one retrained model (+ its transfer sources / fixed-set baseline),
  keyed by the models and by what the suite runs (``robust_core.attacks.evaluate.fingerprint``: its attacks, their
  settings and the attack code), so a changed suite is evaluated again and an unchanged one is reused.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.spec import PAPER_STEPS, ColumnSpec, FigureSpec, PipelineSpec, RowSpec, Selection, TableSpec
from robust_core.attacks.key import AttackKey
from robust_core.attacks.settings import EvalSettings
from robust_core.config import ROBUST_VAL_METRIC, ConfigError, TrainConfig, deep_merge


def display(dataset: str) -> str:
    """A registered dataset's name in headers (the paper datasets' names are registered datasets)."""
    from robust_core.registry import DATASETS

    return DATASETS.get(dataset).display


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Setting:
    paper: str | None  # paper dataset of the column (None for explicit-sweep rows)
    profile: str  # the `datasets:` entry that runs it (the stand-in's for stand-in columns)
    dataset: str  # registered dataset run here
    labels: int | None
    display: str
    stand_in: bool = False  # run in place of a paper dataset that is not available in this profile

    @property
    def key(self) -> str:  # stand-in and genuine columns with the same data share sweeps and retrains
        return f"{self.profile}-{self.labels or 'all'}"

    @property
    def header(self) -> str:
        return f"{self.display} ({self.labels})" if self.labels else self.display


@dataclass(frozen=True)
class SourceUnit:
    name: str  # the key of `Plan.sources`: the sweep name (MLflow parent run); for defaults mode a label
    explicit: bool  # an existing sweep named by the row
    method_key: str | None = None
    setting: Setting | None = None
    metric: str = "val_acc"  # the validation metric its best trial is selected on
    mode: str = "max"
    sweep: str = ""  # explicit: the existing sweep's name ("" = name)


@dataclass(frozen=True)
class RetrainKey:
    source: str
    set_json: str  # the row's `set` overrides, canonical JSON
    seed: int

    @property
    def set(self) -> dict[str, Any]:
        return json.loads(self.set_json)


@dataclass(frozen=True)
class EvalUnit:
    """One suite on one retrained model. protocol: ``robust_core.attacks.evaluate.fingerprint`` of what the suite
    runs with these settings; sources: (name, retrain, inference_json) per transfer source; baseline: (retrain,
    inference_json) of the fixed set's baseline."""

    suite: str
    target: RetrainKey
    inference_json: str
    settings: EvalSettings
    protocol: str
    sources: tuple[tuple[str, RetrainKey, str], ...] = ()
    baseline: tuple[RetrainKey, str] | None = None

    @property
    def key(self) -> str:
        return _h([self.protocol, self.target, self.inference_json, self.sources, self.baseline])


@dataclass
class CellRef:
    """What one table cell / figure series point reads: per seed, a retrain (and an evaluation for attack values)."""

    retrains: list[RetrainKey]
    evals: list[EvalUnit | None]
    attack: AttackKey | None = None  # the records' key (profile's step counts), with its source / objective
    reference: list[RetrainKey] = field(default_factory=list)  # relative_epoch_time: the reference method's


@dataclass
class ResolvedColumn:
    spec: ColumnSpec
    setting: Setting | None
    header: str
    show_paper: bool


@dataclass
class ResolvedTable:
    spec: TableSpec
    title: str
    columns: list[ResolvedColumn]
    cells: dict[tuple[str, int], CellRef]  # (row label, column index) -> reads
    seeds: list[int]
    footnotes: list[str]


@dataclass
class ResolvedFigure:
    spec: FigureSpec
    title: str
    settings: list[Setting]
    rows: dict[tuple[str, str], list[RetrainKey]]  # (row label, setting key) -> retrains per seed
    evals: dict[tuple[str, str], list[EvalUnit]]
    seeds: list[int]
    attacks: list[AttackKey]
    footnotes: list[str]
    x_scale: dict[tuple[str, str], float] = field(default_factory=dict)  # (setting key, norm) -> x per unit of ε
    thresholds: dict[str, list[float]] = field(default_factory=dict)  # epochs_to_reach: setting key -> accuracies %


@dataclass
class Plan:
    spec: PipelineSpec
    sources: dict[str, SourceUnit]
    sweep_raw: dict[str, dict[str, Any]]  # generated sweep name -> sweep config dict (validated by build)
    retrains: set[RetrainKey]
    evals: dict[str, EvalUnit]
    tables: list[ResolvedTable]
    figures: list[ResolvedFigure]
    problems: list[str]


FIGURE_SUITE = {"curves": "curves", "budget": "budget", "bars": "whitebox"}  # figure kind -> the suite it plots


def input_dim(dataset: str) -> int:
    """d, the number of input values of one example of a registered dataset (C·H·W)."""
    from robust_core.registry import DATASETS

    return math.prod(DATASETS.get(dataset).info.shape)


def axis_settings(f: FigureSpec, s: Setting, settings: EvalSettings) -> EvalSettings:
    """The evaluation settings of figure ``f`` on setting ``s``: the profile's, with the radii of the figure's axis
    (``FigureAxis.levels`` of the column's paper dataset) in place of the grids when it lists them."""
    levels = f.axis.levels.get(s.paper or "")
    if not levels:
        return settings
    if f.axis.x == "l2_norm":
        root_d = math.sqrt(input_dim(s.dataset))
        grids = {"l2_grid": tuple(levels), "eps_grid": tuple(x / root_d for x in levels)}
    else:
        grids = {"eps_grid": tuple(levels)}
    return EvalSettings.model_validate({**settings.model_dump(), **grids})


def axis_scale(f: FigureSpec, s: Setting) -> dict[str, float]:
    """Norm -> the factor from an attack's radius ε to its x position on figure ``f``'s axis (1 when not listed)."""
    if f.axis.x == "l2_norm":
        return {"linf": math.sqrt(input_dim(s.dataset))}
    return {"linf": 255.0} if f.axis.x == "eps255" else {}


def map_attack(key: AttackKey, steps: tuple[int, ...]) -> AttackKey:
    """The paper's attack (``pgd-40``) in a profile whose ``eval.steps`` replaces (20, 40, 100) in order."""
    if key.steps in PAPER_STEPS and PAPER_STEPS.index(key.steps) < len(steps):
        return key.with_(steps=steps[PAPER_STEPS.index(key.steps)])
    return key


class Planner:
    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.problems: list[str] = []
        self.sources: dict[str, SourceUnit] = {}
        self.sweep_raw: dict[str, dict[str, Any]] = {}
        self.retrains: set[RetrainKey] = set()
        self.evals: dict[str, EvalUnit] = {}
        self._names: dict[str, str] = {}  # sweep stem -> name with its config hash
        self._protocols: dict[str, str] = {}  # evaluation identity (JSON) -> fingerprint, computed once per plan

    # ------------------------------------------------------------------ settings and sources
    def setting(self, paper: str, labels: int | None, stand_in: bool = False) -> Setting | None:
        key = self.spec.stand_in if stand_in else paper
        prof = self.spec.datasets.get(key) if key is not None else None
        if prof is None:
            return None
        lab = prof.labels.get(labels, labels) if labels is not None else None
        return Setting(paper, key, prof.name, lab, prof.display or display(prof.name), stand_in)

    def source(self, row: RowSpec, setting: Setting | None, selection: Selection = "clean",
               attack: str | None = None) -> SourceUnit:
        """``selection``: robust = a sweep of its own on ``val_robust_acc`` (made by ``attack``; None: the profile's
        ``robust_val.attack``); ignored without sweeps (defaults mode selects nothing, so every row of a method
        shares the method's defaults)."""
        robust = selection == "robust" and (row.sweep is not None or self.spec.sweep.mode == "sweep")
        metric, how = (ROBUST_VAL_METRIC, "max") if robust else (self.spec.selection_metric, self.spec.selection_mode)
        if row.sweep is not None:
            name = f"{row.sweep}[{metric}]" if robust else row.sweep
            src = SourceUnit(name, True, metric=metric, mode=how, sweep=row.sweep)
        else:
            assert setting is not None and row.method is not None
            mode = "defaults" if self.spec.sweep.mode == "defaults" else "sweep"
            mkey = self._shared_key(row.method)
            prof = self.spec.datasets[setting.profile]
            assert prof is not None
            attack = (attack or prof.robust_val.attack) if robust else None
            suffix = f"-robust_{attack}" if robust else "-defaults" if mode == "defaults" else ""
            stem = f"{self.spec.name}-{mkey}-{setting.key}{suffix}"
            if stem not in self._names:
                raw = self._sweep_raw(stem, mkey, setting, attack)
                # the name carries a hash of what the sweep is: editing a profile's budget or space starts new
                # sweeps (the old ones stay in MLflow) instead of clashing with a finished sweep of the same name
                what = {k: v for k, v in raw.items() if k not in ("name", "tracking", "storage")}
                self._names[stem] = name = f"{stem}-{_h(what)[:6]}"
                self.sweep_raw[name] = {**raw, "name": name}
            name = self._names[stem]
            src = SourceUnit(name, False, mkey, setting, metric, how)
        self.sources.setdefault(src.name, src)
        return src

    def _shared_key(self, key: str) -> str:
        """Method keys that train the same thing (differing only in ``inference``) share one sweep: the first."""
        m = self.spec.methods[key]
        for k, other in self.spec.methods.items():
            if (other.method, other.params, other.space, other.model, other.train) == \
                    (m.method, m.params, m.space, m.model, m.train):
                return k
        return key

    def _sweep_raw(self, name: str, method_key: str, s: Setting, robust_attack: str | None = None) -> dict[str, Any]:
        """``robust_attack``: None = selected on the clean metric, else on ``val_robust_acc`` made by this attack."""
        from sweeps.spec import default_space_raw

        spec, m = self.spec, self.spec.methods[method_key]
        prof = spec.datasets[s.profile]
        assert prof is not None
        data: dict[str, Any] = {"name": prof.name, "root": spec.data_root, "n_labeled": s.labels}
        if prof.n_val is not None:
            data["n_val"] = prof.n_val
        base = {"data": data, "model": dict(m.for_dataset("model", s.profile) or prof.model),
                "method": {"name": m.method, "params": dict(m.params)},
                "train": deep_merge(prof.train, m.for_dataset("train", s.profile) or {})}
        space: dict[str, Any] = {}
        if spec.sweep.mode == "sweep":
            problems: list[str] = []
            space = dict(default_space_raw(m.method, prof.name, problems) or {})
            self.problems += [f"sweep {name}: {p}" for p in problems]
            extra = m.for_dataset("space", s.profile) or {}
            for k, v in extra.items():
                if v is None:
                    space.pop(k, None)
                else:
                    space[k] = v
            for k in m.params:  # a fixed param is not searched
                space.pop(f"method.params.{k}", None)
        metric, mode = spec.selection_metric, spec.selection_mode
        if robust_attack is not None:
            base["train"]["robust_val"] = self.robust_val(s, base["train"].get("epochs"), robust_attack)
            metric, mode = ROBUST_VAL_METRIC, "max"
        return {"name": name, "base": base, "search_space": space or None, "num_trials": spec.sweep.num_trials,
                "max_concurrent": spec.sweep.max_concurrent, "metric": metric,
                "mode": mode, "seed": spec.sweep.seed, "scheduler": spec.sweep.scheduler.model_dump(),
                "resources": spec.resources.model_dump(), "tracking": spec.tracking.model_dump(),
                "storage": spec.sweep.storage}

    def robust_val(self, s: Setting, epochs: Any, attack: str) -> dict[str, Any]:
        """``train.robust_val`` of a robust-selected source: the profile's ``robust_val`` with ``attack``, at the
        evaluation ε of its norm, computed at ASHA's rungs (sweep mode) and the last epoch."""
        from sweeps.spec import asha_rungs

        prof = self.spec.datasets[s.profile]
        assert prof is not None
        sched = self.spec.sweep.scheduler
        epochs = TrainConfig.model_fields["epochs"].default if epochs is None else epochs
        asha = self.spec.sweep.mode == "sweep" and sched.type == "asha" and isinstance(epochs, int) and epochs >= 1
        rungs = asha_rungs(sched.grace_period, sched.reduction_factor, epochs) if asha else []
        return {**prof.robust_val.model_dump(), "attack": attack,
                "eps": self.eval_settings(s).eps_for(prof.robust_val.norm), "epochs": rungs}

    def retrain(self, row: RowSpec, setting: Setting | None, seed: int, item: TableSpec | FigureSpec | None = None,
                col_set: dict[str, Any] | None = None) -> RetrainKey:
        """``item``: the table or figure that shows ``row``; its selection (``PipelineSpec.selection_of``) and
        ``robust_attack`` pick the source. ``col_set``: the column's overrides (e.g. ``{data.n_val: 0}``: retrain on
        train ∪ validation)."""
        if item is None:
            src = self.source(row, setting)
        else:
            src = self.source(row, setting, self.spec.selection_of(item, row), item.robust_attack)
        k = RetrainKey(src.name, json.dumps({**row.set, **(col_set or {})}, sort_keys=True), seed)
        self.retrains.add(k)
        return k

    # ------------------------------------------------------------------ evaluations
    def eval_settings(self, s: Setting) -> EvalSettings:
        prof = self.spec.datasets[s.profile]
        assert prof is not None
        return EvalSettings.of(prof.eval, s.dataset, model_name="target")

    def steps(self, s: Setting) -> tuple[int, ...]:
        return self.eval_settings(s).steps

    def inference(self, row: RowSpec) -> str:
        inf = self.spec.methods[row.method].inference if row.method is not None else {}
        return json.dumps(inf, sort_keys=True)

    def check_attack(self, where: str, suite: str, key: AttackKey, settings: EvalSettings,
                     sources: tuple[str, ...] = ()) -> None:
        """A column's / figure's attack must be one the suite runs (a typo fails here, not after training)."""
        from robust_core.attacks.suites import SUITES

        if suite not in SUITES:
            return  # reported by the spec's checks
        runs = list(dict.fromkeys(str(st.key) for st in SUITES.get(suite).steps(settings, sources)))
        if str(key) not in runs:
            self.problems.append(f"{where}: suite {suite} does not run {key} here (it runs: {', '.join(runs)})")

    def protocol(self, suite: str, settings: EvalSettings, sources: tuple[str, ...], method: str | None) -> str:
        from robust_core.attacks.evaluate import fingerprint

        memo = json.dumps([suite, settings.model_dump(mode="json"), sources, method])
        if memo not in self._protocols:
            self._protocols[memo] = fingerprint(suite, settings, sources, method)
        return self._protocols[memo]

    def eval_unit(self, suite: str, item: TableSpec | FigureSpec, row: RowSpec, setting: Setting, seed_i: int,
                  seeds: list[int], rows_by_label: dict[str, RowSpec], sources: dict[str, str] | None = None,
                  baseline: str | None = None, col_set: dict[str, Any] | None = None) -> EvalUnit:
        seed = seeds[seed_i]
        target = self.retrain(row, setting, seed, item, col_set)
        from robust_core.attacks.suites import SUITES

        needs = SUITES.get(suite).needs
        src: tuple = ()
        if "sources" in needs:
            # a source model is an extra retrain of its method key (not a row of the table: ATLD's sources are
            # ResNet-18s), of the next seed, so that it is never the evaluated model itself
            other = seeds[(seed_i + 1) % len(seeds)]
            src_rows = {n: RowSpec(label=f"(source {n})", method=k) for n, k in sorted((sources or {}).items())}
            src = tuple((n, self.retrain(r, setting, other, item), self.inference(r)) for n, r in src_rows.items())
        base = None
        if "baseline" in needs:
            b = rows_by_label[baseline]  # type: ignore[index]
            base = (self.retrain(b, setting, seed, item), self.inference(b))
        settings = self.eval_settings(setting)
        if isinstance(item, FigureSpec):
            settings = axis_settings(item, setting, settings)
        method = self.spec.methods[row.method].method if row.method is not None else None
        proto = self.protocol(suite, settings, tuple(n for n, _, _ in src), method)
        u = EvalUnit(suite, target, self.inference(row), settings, proto, src, base)
        self.evals.setdefault(u.key, u)
        return u

    # ------------------------------------------------------------------ tables
    def table(self, t: TableSpec) -> ResolvedTable | None:
        seeds = t.seeds or self.spec.seeds
        suffix = f" ({self.spec.title_suffix})" if self.spec.title_suffix else ""
        foot: list[str] = []
        cols: list[ResolvedColumn] = []
        if all(c.dataset is None for c in t.columns):
            cols = [ResolvedColumn(c, None, c.label, True) for c in t.columns]
        else:
            avail = [(c, self.setting(c.dataset, c.labels)) for c in t.columns]  # type: ignore[arg-type]
            stand = not any(s for _, s in avail) and self.spec.stand_in is not None
            if stand:
                first = t.columns[0].dataset
                avail = [(c, self.setting(c.dataset, c.labels, stand_in=True) if c.dataset == first else None)
                         for c in t.columns]  # type: ignore[arg-type]
                s0 = next(s for _, s in avail if s is not None)
                foot.append(f"{s0.display} stands in for {display(first or '')} (not available in this profile); the "
                            "paper's values are for a different dataset and are not shown beside stand-in cells.")
            relabelled: list[str] = []
            dropped = [c.label for c, s in avail if s is None]
            if dropped:
                foot.append("Columns not computed in this profile (data not available here): " + ", ".join(dropped)
                            + ".")
            for c, s in avail:
                if c.value == "attack" and c.suite is not None and c.attack is not None:
                    where = f"tables.{t.name}: column {c.label!r}"
                    srcs = tuple(sorted(t.sources))
                    if s is None:  # not run in this profile: checked against the paper dataset's defaults
                        self.check_attack(where, c.suite, c.attack, EvalSettings(dataset=c.dataset), srcs)
                    else:
                        self.check_attack(where, c.suite, map_attack(c.attack, self.steps(s)), self.eval_settings(s),
                                          srcs)
                if s is None:
                    continue
                steps = self.steps(s)
                paper_name = display(c.dataset)  # type: ignore[arg-type]
                paper_hdr = paper_name + (f" ({c.labels})" if c.labels else "")
                same_attack = c.attack is None or map_attack(c.attack, steps) == c.attack
                faithful = not s.stand_in and s.display == paper_name and s.labels == c.labels and same_attack
                renamed = c.label.startswith(paper_hdr) and same_attack
                s_hdr = s.header
                if c.labels and s.labels != c.labels:  # the profile's labels map: say which paper column it is
                    s_hdr = f"{s.display} ({s.labels}; paper {c.labels})"
                    relabelled.append(f"{s.labels} labels for the paper's {c.labels}")
                if faithful:
                    header = c.label
                elif renamed:  # "MNIST error" -> "mnist5k error"
                    header = s_hdr + c.label[len(paper_hdr):]
                elif c.value == "attack":
                    from robust_core.attacks.suites import BASELINE, CLASSIFIER

                    key = map_attack(c.attack, steps)  # type: ignore[arg-type]
                    rest = c.label[len(paper_hdr):] if c.label.startswith(paper_hdr) else ""
                    if f" {c.attack.header}" in rest:  # "CIFAR-10 PGD-20 from Standard" -> "... PGD-2 from Standard"
                        header = s_hdr + rest.replace(c.attack.header, key.header, 1)  # type: ignore[union-attr]
                    else:
                        src = f" from {key.source}" if key.source not in (None, BASELINE, CLASSIFIER) else ""
                        header = f"{s_hdr} {key.header}{src}"
                else:
                    header = s_hdr
                cols.append(ResolvedColumn(c, s, header, show_paper=not s.stand_in))
            if relabelled:
                foot.append("This profile maps label counts (`labels:` of its datasets): " + ", ".join(
                    dict.fromkeys(relabelled)) + "; a header names both.")
        if not cols:
            return None
        from robust_core.attacks.suites import SUITES

        by_label = {r.label: r for r in t.rows}
        if len(seeds) == 1 and any(c.spec.suite in SUITES and "sources" in SUITES.get(c.spec.suite).needs
                                   for c in cols):
            foot.append("One seed only: the transfer sources are the same seed's models (for the source's own row "
                        "that is a white-box attack).")
        cells: dict[tuple[str, int], CellRef] = {}
        for r in t.rows:
            for j, rc in enumerate(cols):
                c, s = rc.spec, rc.setting
                rets = [self.retrain(r, s, sd, t, c.set) for sd in seeds]
                ref = CellRef(rets, [None] * len(seeds))
                if c.value == "attack":
                    ref.attack = map_attack(c.attack, self.steps(s))  # type: ignore[arg-type]
                    ref.evals = [self.eval_unit(c.suite or "", t, r, s, i, seeds, by_label, t.sources, t.baseline,
                                                c.set) for i in range(len(seeds))]
                if c.value == "relative_epoch_time":
                    ref_row = RowSpec(label=f"({c.relative_to})", method=c.relative_to)
                    ref.reference = [self.retrain(ref_row, s, sd, t, c.set) for sd in seeds]
                cells[(r.label, j)] = ref
        return ResolvedTable(t, t.title + suffix, cols, cells, seeds, foot + list(t.notes))

    # ------------------------------------------------------------------ figures
    def figure(self, f: FigureSpec) -> ResolvedFigure | None:
        seeds = f.seeds or self.spec.seeds
        suffix = f" ({self.spec.title_suffix})" if self.spec.title_suffix else ""
        foot: list[str] = []
        settings = []
        thresholds: dict[str, list[float]] = {}
        for st in f.settings:
            s = self.setting(st.dataset, st.labels)
            if s is None:
                foot.append(f"{display(st.dataset)} panel not computed in this profile (data not available here).")
            else:
                settings.append(s)
                thresholds[s.key] = st.thresholds or f.thresholds
        if not settings and self.spec.stand_in is not None:
            s = self.setting(f.settings[0].dataset, f.settings[0].labels, stand_in=True)
            if s is not None:
                settings = [s]
                thresholds[s.key] = f.settings[0].thresholds or f.thresholds
                first = display(f.settings[0].dataset)
                foot = [x for x in foot if not x.startswith(f"{first} panel")]
                foot.insert(0, f"{s.display} stands in for {first} (not available in this profile).")
        if not settings:
            return None
        suite = FIGURE_SUITE.get(f.kind)
        by_label = {r.label: r for r in f.rows}
        rows: dict[tuple[str, str], list[RetrainKey]] = {}
        evals: dict[tuple[str, str], list[EvalUnit]] = {}
        for r in f.rows:
            for s in settings:
                rows[(r.label, s.key)] = [self.retrain(r, s, sd, f) for sd in seeds]
                if suite is not None:
                    evals[(r.label, s.key)] = [self.eval_unit(suite, f, r, s, i, seeds, by_label)
                                               for i in range(len(seeds))]
        attacks = [map_attack(a, self.steps(settings[0])) for a in f.attacks]
        for a in attacks if suite is not None else ():
            self.check_attack(f"figures.{f.name}: attack {a}", suite, a,
                              axis_settings(f, settings[0], self.eval_settings(settings[0])))
        x_scale = {(s.key, norm): v for s in settings for norm, v in axis_scale(f, s).items()}
        return ResolvedFigure(f, f.title + suffix, settings, rows, evals, seeds, attacks, foot, x_scale, thresholds)


def make_plan(spec: PipelineSpec, only: str | None = None) -> Plan:
    """Resolve ``spec`` (``only``: one table or figure); raises ConfigError listing every problem."""
    if only is not None and only not in spec.outputs:
        raise ConfigError([f"--only {only!r}: no such table or figure; have: {', '.join(spec.outputs)}"])
    p = Planner(spec)
    tables = [rt for t in spec.tables if only in (None, t.name) for rt in [p.table(t)] if rt is not None]
    figures = [rf for f in spec.figures if only in (None, f.name) for rf in [p.figure(f)] if rf is not None]
    if not tables and not figures:
        p.problems.append("nothing to compute: every table/figure needs data that is not available in this profile")
    _validate_sweeps(p)
    if p.problems:
        raise ConfigError(p.problems, f"pipeline {spec.name}")
    return Plan(spec, p.sources, p.sweep_raw, p.retrains, p.evals, tables, figures, p.problems)


def _validate_sweeps(p: Planner) -> None:
    """Every generated sweep / defaults config is built now, so a bad profile fails before Ray starts."""
    from robust_core.config import build_run_config
    from sweeps.spec import build_sweep_config

    for name, raw in p.sweep_raw.items():
        try:
            if p.spec.sweep.mode == "sweep":
                build_sweep_config(raw, source=f"sweep {name}")
            else:
                build_run_config(raw["base"], f"config of {name}")
        except ConfigError as e:
            p.problems += [f"{name}: {x}" for x in e.problems]
    for k in p.retrains:  # the rows' `set` overrides must name real config keys
        if k.set and k.source in p.sweep_raw:
            try:
                build_run_config(p.sweep_raw[k.source]["base"]).with_values(k.set, f"{k.source} with set {k.set}")
            except ConfigError as e:
                p.problems += [f"{k.source} set {k.set}: {x}" for x in e.problems]
    p.problems = list(dict.fromkeys(p.problems))

"""Turn finished retrains and evaluations into the pipeline's outputs: tables (Markdown, CSV, LaTeX), figures (and
the plotted numbers as CSV), ``lineage.json``, ``REPRODUCTION.md`` and ``index.md``.

Pure: everything here takes plain values (``Results``: the plan, the selections, the retrains' final metrics, the
evaluations' records, the per-epoch histories the figures need) and returns plain values (``Rendered``: texts and
``Figure`` objects). It reads no file and queries no store; the runner (``pipelines.final``) fetches the inputs
through ``pipelines.store`` and writes the outputs to disk and MLflow. Cells and points are read only from the runs
the plan names; masking-audit flags of the records behind a cell become its footnotes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import mean, stdev
from typing import Any, Mapping

from pipelines.figures import Figure, Panel, Series, figure_csv
from pipelines.plan import CellRef, Plan, RetrainKey, ResolvedFigure, ResolvedTable, input_dim
from pipelines.reproduction import render_reproduction, table_record
from pipelines.store import Selection
from pipelines.tables import Cell, Row, Table, render_csv, render_latex, render_markdown
from robust_core.attacks.key import AttackKey
from robust_core.tracking import metric_key, run_link


@dataclass(frozen=True)
class Results:
    """What the pipeline's outputs are made of, as plain values.

    ``retrains``: retrain key -> {"run_id", "metrics": final metrics}; ``evals``: evaluation key -> {"run_id",
    "records": record dicts, "audit"}; ``history``: (run id, metric) -> {epoch: value} for every pair
    ``history_needed`` names; ``weights``: run id -> {layer: flat array of its weights} of every run
    ``weights_needed`` names (``pipelines.store.layer_weights``); ``counts``: trained, reused, evaluated,
    evals_reused (for the index).
    """
    plan: Plan
    selections: Mapping[str, Selection]
    retrains: Mapping[RetrainKey, Mapping[str, Any]]
    evals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    history: Mapping[tuple[str, str], Mapping[int, float]] = field(default_factory=dict)
    weights: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # run id -> layer -> flat weights
    pipeline_run_id: str = ""
    tracking_uri: str = ""
    experiment: str = ""
    experiment_id: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def spec(self):
        return self.plan.spec


TABLES_DIR, FIGURES_DIR = "tables", "figures"  # the same layout in the output folder and the pipeline run's artifacts,
# so the links of index.md and REPRODUCTION.md resolve in both


def table_path(name: str, ext: str = "md") -> str:
    return f"{TABLES_DIR}/{name}.{ext}"


def figure_path(name: str, ext: str = "png") -> str:
    return f"{FIGURES_DIR}/{name}.{ext}"


NORM_TEXT = {"linf": "L∞", "l2": "L2", "l1": "L1"}


def _audit_note(flag: str) -> str:
    """Footnote text of a masking-audit flag (the audit prefixes the evaluated model's internal name; the cell
    already says which model it is)."""
    return f"masking audit: {flag.removeprefix('target: ')}"


def find_record(records: list[dict[str, Any]], key: AttackKey, suite: str) -> dict[str, Any] | None:
    """The record of ``key`` in ``suite`` (masking probes excluded)."""
    want = str(key)
    for rec in records:
        if rec["suite"] == suite and rec["key"] == want and not rec.get("options", {}).get("probe"):
            return rec
    return None


def _cell(r: Results, rt: ResolvedTable, row_label: str, j: int) -> Cell:
    rc = rt.columns[j]
    col, ref = rc.spec, rt.cells[(row_label, j)]
    vals: list[float] = []
    ids: list[str] = []
    eval_ids: list[str] = []
    notes: list[str] = []
    sets: list[dict[str, Any]] = []  # the fixed set's size and composition per seed
    for i, k in enumerate(ref.retrains):
        job = r.retrains[k]
        m = job["metrics"]
        v: float | None = None
        if col.value == "metric":
            v = m.get(col.metric)
            v = None if v is None else v * col.scale
        elif col.value == "error":
            v = None if m.get("test_acc") is None else (1 - m["test_acc"]) * 100
        elif col.value in ("epoch_time", "relative_epoch_time"):
            v = m.get("mean_epoch_time_s", m.get("epoch_time_s"))
            if col.value == "relative_epoch_time" and v is not None:
                rm = r.retrains[ref.reference[i]]["metrics"]
                base = rm.get("mean_epoch_time_s", rm.get("epoch_time_s"))
                v = None if not base else v / base
        elif col.value == "attack":
            u = ref.evals[i]
            ev = r.evals[u.key]  # type: ignore[union-attr]
            rec = find_record(ev["records"], ref.attack, u.suite)  # type: ignore[arg-type, union-attr]
            if rec is not None:
                v = rec["accuracy"] * 100
                notes += [_audit_note(f) for f in rec.get("flags", [])]
                if rec["attack"] == "autoattack" and rec["label"] != "aa":
                    notes.append(f"AutoAttack run as {rec['label']}, not the standard version")
                if "fixed_set" in rec.get("options", {}):
                    sets.append(rec["options"]["fixed_set"])
                eval_ids.append(ev["run_id"])
        if v is not None and not math.isnan(v):
            vals.append(v)
            ids.append(job["run_id"])
    if sets:
        notes.append(fixed_set_note(sets, rt.spec.baseline or "baseline"))
    note = ""
    if not vals and sets and not any(x["n"] for x in sets):
        note = "the fixed set is empty: no one-step example fools the baseline (accuracy on it is undefined)"
    elif not vals:
        what = ref.attack if col.value == "attack" else (col.metric if col.value == "metric" else col.value)
        note = f"no {what} recorded by the runs of this cell (see lineage.json)"
    row = next(x for x in rt.spec.rows if x.label == row_label)
    pv = row.paper.get(col.label) if rc.show_paper else None
    if pv is not None and pv.value is None:
        notes.append(pv.note)  # the paper prints a value here that does not read unambiguously
    notes = list(dict.fromkeys(notes))
    suspect = any(n.startswith("masking audit:") for n in notes)
    return Cell(tuple(vals), tuple(ids + eval_ids), note, pv.value if pv else None, tuple(notes), suspect,
                compare=col.value != "epoch_time")


def fixed_set_note(sets: list[dict[str, Any]], baseline: str) -> str:
    """The footnote of a fixed-set cell: the set's size and composition per seed (``FixedSet.run``'s info)."""
    per = []
    for s in sets:
        parts = " + ".join(f"{NORM_TEXT.get(n, n)} {k}" for n, k in s["by_norm"].items())
        per.append(f"n = {s['n']} ({parts}; from {s['test_points']} of the {s['correct']} test points the "
                   f"{baseline} classifies correctly, of {s['of']})")
    return (f"fixed set made on the {baseline} of the same seed, one-step examples that fool it"
            + (", per seed: " if len(per) > 1 else ": ") + "; ".join(per))


def build_table(r: Results, rt: ResolvedTable) -> Table:
    rows = []
    for row in rt.spec.rows:
        cells = tuple(_cell(r, rt, row.label, j) for j in range(len(rt.columns)))
        src = {r.selections[k.source].sweep + "/" + (r.selections[k.source].trial_run_id or "defaults")
               for k in rt.cells[(row.label, 0)].retrains}
        rows.append(Row(row.label, cells, source=";".join(sorted(src))))
    foot = list(rt.footnotes) + published_footnotes(
        rt.spec.paper, [(c.spec.label, c.header, c.spec.value) for c in rt.columns
                        if c.show_paper and any(c.spec.label in x.paper for x in rt.spec.rows)])
    higher = tuple(False if c.spec.value in ("error", "epoch_time", "relative_epoch_time")
                   else True if c.spec.value == "attack" else rt.spec.higher_is_better for c in rt.columns)
    return Table(rt.spec.name, rt.title, tuple(c.header for c in rt.columns), tuple(rows), rt.spec.higher_is_better,
                 rt.spec.decimals, tuple(foot), column_higher=higher,
                 paper_columns=tuple(c.spec.label for c in rt.columns))


def published_footnotes(paper: str, columns: list[tuple[str, str, str]]) -> list[str]:
    """Footnotes on the published values of a table: where they come from, which columns run other data or attacks
    than the paper's (compared all the same, said here), and which are shown without a verdict. ``columns``: (the
    paper's label, our header, value kind) of each column that shows published values."""
    if not columns:  # none published, or not shown (a stand-in dataset: the plan's footnote says so)
        return [f"Paper: {paper}."] if paper else []
    foot = [f"Published values: {paper}; each transcribed with the paper's table, row and column it comes from (the "
            "rows' `paper:` in pipelines/catalog.yaml); none where the paper reports none."]
    differ = [f"{ours} for {label}" for label, ours, _ in columns if ours != label]
    if differ:
        foot.append("Compared with the paper's values although this profile runs other data or attacks in "
                    f"the paper's place ({'; '.join(differ)}): a gap there measures the distance to the paper under "
                    "this profile, not a failed reproduction of the paper's setting.")
    if any(kind == "epoch_time" for _, _, kind in columns):
        foot.append("Seconds per epoch depend on the hardware: the paper's are shown for reference, without a verdict.")
    return foot


# ---------------------------------------------------------------------------------------------------- figures
def _agg(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, 0.0
    return mean(v), (stdev(v) if len(v) > 1 else 0.0)


def _bar_series(label: str, groups: list[list[float]]) -> Series:
    """One bar series: mean ± std of each category's values (one value per seed), categories at x = 0, 1, ..."""
    agg = [_agg(g) for g in groups]
    return Series(label, tuple(float(i) for i in range(len(groups))), tuple(a for a, _ in agg),
                  tuple(b for _, b in agg))


def history_keys(f) -> tuple[str, ...]:
    """The per-epoch metrics a figure plots (``FigureSpec``): its epoch curves, or the test accuracy it reaches."""
    if f.kind == "epochs":
        return tuple(f"{c}_acc" for c in f.epoch_curves)
    return ("test_acc",) if f.kind == "epochs_to_reach" else ()


def history_needed(plan: Plan, retrains: Mapping[RetrainKey, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(run id, metric) of every per-epoch history the plan's figures plot: what the runner fetches for ``Results``."""
    return list(dict.fromkeys((retrains[k]["run_id"], key) for rf in plan.figures
                              for key in history_keys(rf.spec) for ks in rf.rows.values() for k in ks))


def axis_label(x: str, norms: set[str], dataset: str) -> str:
    """The x label of a curves/budget panel, in the unit of the figure's axis (``FigureAxis.x``)."""
    norm = " / ".join(NORM_TEXT.get(n, n) for n in sorted(norms)) or "?"
    if x == "l2_norm":  # the figure's note says what the level is (AXIS_NOTES)
        return "noise level (L2 norm)" + (f"; ε∞ = level/√{input_dim(dataset)}" if "linf" in norms else "")
    if x == "eps255":
        return f"ε ({norm}, in 1/255 of the pixel range)"
    return f"ε ({norm}, pixel units)"


AXIS_NOTES = {"l2_norm": "Noise level: the L2 norm of the perturbation, inputs in [0, 1]. The L2 attack runs at ε = "
                         "level; FGSM at ε∞ = level/√d (d: values per input), a sign perturbation of L2 norm = level "
                         "before clipping to [0, 1]."}


def weights_needed(plan: Plan, retrains: Mapping[RetrainKey, Mapping[str, Any]]) -> list[str]:
    """Run ids of the retrains whose weights the plan's ``weights`` figures plot."""
    return list(dict.fromkeys(retrains[k]["run_id"] for rf in plan.figures if rf.spec.kind == "weights"
                              for ks in rf.rows.values() for k in ks))


WEIGHT_BINS = 50  # histogram bins per layer, over the range of that layer's weights in all rows and seeds


def _weight_panels(r: Results, rf: ResolvedFigure, s) -> list[Panel]:
    """One panel per layer: for each row, the share of the layer's weights in each bin (%), mean ± std over seeds;
    the bins span that layer's weights over every row and seed, so the rows' histograms are comparable."""
    import numpy as np

    f = rf.spec
    runs = {row.label: [r.retrains[k]["run_id"] for k in rf.rows[(row.label, s.key)]] for row in f.rows}
    first = r.weights[next(iter(runs.values()))[0]]
    layers = f.layers or list(first)
    panels = []
    for layer in layers:
        per_row: dict[str, list[Any]] = {}
        for lab, ids in runs.items():
            for run_id in ids:
                w = r.weights.get(run_id, {}).get(layer)
                if w is None:
                    raise KeyError(f"figure {f.name}: no weights of layer {layer!r} of retrain run {run_id} (its "
                                   f"conv/linear layers: {', '.join(r.weights.get(run_id, {})) or 'none fetched'})")
                per_row.setdefault(lab, []).append(np.asarray(w, dtype=np.float64))
        lo = min(float(w.min()) for ws in per_row.values() for w in ws)
        hi = max(float(w.max()) for ws in per_row.values() for w in ws)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, WEIGHT_BINS + 1)
        centres = tuple(round(float(c), 6) for c in (edges[:-1] + edges[1:]) / 2)
        series = []
        for lab, ws in per_row.items():
            shares = [np.histogram(w, edges)[0] / w.size * 100 for w in ws]
            agg = [_agg([float(h[i]) for h in shares]) for i in range(WEIGHT_BINS)]
            series.append(Series(lab, centres, tuple(a for a, _ in agg), tuple(b for _, b in agg)))
        panels.append(Panel(f"{s.header}: {layer}", "weight value", "share of the layer's weights (%)",
                            tuple(series)))
    return panels


def _history(r: Results, k: RetrainKey, key: str) -> Mapping[int, float]:
    run_id = r.retrains[k]["run_id"]
    try:
        return r.history[(run_id, key)]
    except KeyError:
        raise KeyError(f"no {key} history of retrain run {run_id} in the results (fetch history_needed(...) first)")


def build_figure(r: Results, rf: ResolvedFigure) -> Figure:
    f = rf.spec
    panels: list[Panel] = []
    flags: list[str] = []
    for s in rf.settings:
        if f.kind in ("curves", "budget"):
            suite = f.kind
            for atk in rf.attacks:
                series = []
                norms: set[str] = set()
                for row in f.rows:
                    pts: dict[float, list[float]] = {}
                    for u in rf.evals[(row.label, s.key)]:
                        for rec in r.evals[u.key]["records"]:
                            if rec["suite"] == suite and rec["key"] == str(atk):
                                x = round(rec["eps"] * rf.x_scale.get((s.key, rec["norm"]), 1.0), 6)
                                pts.setdefault(x, []).append(rec["accuracy"] * 100)
                                norms.add(rec["norm"])
                                flags += rec.get("flags", [])
                    xs = sorted(pts)
                    agg = [_agg(pts[x]) for x in xs]
                    series.append(Series(row.label, tuple(xs), tuple(a for a, _ in agg), tuple(b for _, b in agg)))
                panels.append(Panel(f"{s.header}: {atk.header}", axis_label(f.axis.x, norms, s.dataset),
                                    "accuracy (%)", tuple(series), ylim=(0, 100)))
        elif f.kind == "bars":
            series = []
            for row in f.rows:
                groups = []
                for atk in rf.attacks:
                    vals = []
                    for u in rf.evals[(row.label, s.key)]:
                        rec = find_record(r.evals[u.key]["records"], atk, "whitebox")
                        if rec is not None:
                            vals.append(rec["accuracy"] * 100)
                            flags += rec.get("flags", [])
                    groups.append(vals)
                series.append(_bar_series(row.label, groups))
            panels.append(Panel(s.header, "attack", "accuracy (%)", tuple(series), kind="bar",
                                xticklabels=tuple(a.header for a in rf.attacks), ylim=(0, 100)))
        elif f.kind == "epochs":
            for pair in (f.pairs or [[row.label for row in f.rows]]):
                series = []
                for lab in pair:
                    for name, style in (("train", "dashed"), ("test", "solid")):
                        if name not in f.epoch_curves:
                            continue
                        per_epoch: dict[int, list[float]] = {}
                        for k in rf.rows[(lab, s.key)]:
                            for ep, v in _history(r, k, f"{name}_acc").items():
                                per_epoch.setdefault(ep, []).append((1 - v if f.epoch_y == "error" else v) * 100)
                        xs = sorted(per_epoch)
                        agg = [_agg(per_epoch[x]) for x in xs]
                        series.append(Series(f"{lab} {name}" if len(f.epoch_curves) > 1 else lab,
                                             tuple(float(x) for x in xs), tuple(a for a, _ in agg),
                                             tuple(b for _, b in agg), style))
                ylabel = ("" if len(f.epoch_curves) > 1 else f"{f.epoch_curves[0]} ") + f"{f.epoch_y} (%)"
                panels.append(Panel(f"{s.header}: {' vs '.join(pair)}", "epoch", ylabel, tuple(series)))
        elif f.kind == "epochs_to_reach":
            series: list[Series] = []
            never: list[str] = []
            thresholds = rf.thresholds.get(s.key, f.thresholds)
            for row in f.rows:
                groups = []
                for thr in thresholds:
                    eps_needed = []
                    keys = rf.rows[(row.label, s.key)]
                    for k in keys:
                        h = _history(r, k, "test_acc")
                        hit = [ep for ep in sorted(h) if h[ep] * 100 >= thr]
                        if hit:
                            eps_needed.append(float(hit[0]))
                    if len(eps_needed) < len(keys):
                        never.append(f"{row.label} {thr:g}% ({len(keys) - len(eps_needed)}/{len(keys)} seeds)")
                    groups.append(eps_needed)
                series.append(_bar_series(row.label, groups))
            panels.append(Panel(s.header, "test accuracy reached (%)", "epochs needed", tuple(series), kind="bar",
                                xticklabels=tuple(f"{t:g}" for t in thresholds)))
            if never:
                flags.append(f"{s.header}: not reached within the budget (bars average the seeds that reached it; "
                             "no bar when none did): " + ", ".join(never))
        elif f.kind == "weights":
            panels += _weight_panels(r, rf, s)
    notes = list(rf.footnotes) + ([f"Paper: {f.paper}."] if f.paper else [])
    notes += [AXIS_NOTES[f.axis.x]] if f.axis.x in AXIS_NOTES and f.kind in ("curves", "budget") else []
    notes += [x if "not reached within the budget" in x else _audit_note(x) for x in dict.fromkeys(flags)]
    notes.append(f"Mean ± sample std over seeds {rf.seeds}.")
    return Figure(f.name, rf.title, tuple(panels), tuple(f"[{i}] {n}" for i, n in enumerate(notes, 1)))


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Rendered:
    """The pipeline's outputs as values: per table its texts by format (md, csv, tex), per figure the ``Figure`` and
    its data CSV, and the texts of ``lineage.json``, ``REPRODUCTION.md`` and ``index.md``; ``cell_metrics``: each
    cell's mean and std as MLflow metrics of the pipeline run (``table/row/column/mean``), so tables can be compared
    across pipeline runs; ``notes``: the Markdown note of the pipeline run and of each retrain run (by run id)."""
    tables: dict[str, dict[str, str]]
    figures: dict[str, Figure]
    figure_data: dict[str, str]
    lineage: str
    reproduction: str
    index: str
    cell_metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def render(r: Results, previous_lineage: Mapping[str, Any] | None = None,
           present: tuple[set[str], set[str]] = (set(), set())) -> Rendered:
    """Every output of the plan. ``previous_lineage``: the lineage of an earlier run in the same output folder (a run
    with ``--only`` updates its own entries and keeps the others'); ``present``: names of the tables and figures
    already in that folder (the index lists them along with the ones rendered now)."""
    tables: dict[str, dict[str, str]] = {}
    figures: dict[str, Figure] = {}
    data: dict[str, str] = {}
    lineage: dict[str, Any] = {
        "pipeline_run_id": r.pipeline_run_id, "tracking_uri": r.tracking_uri, "experiment": r.experiment,
        "selections": {n: {"sweep_run_id": s.sweep_run_id, "trial_run_id": s.trial_run_id, "metric": s.metric,
                           "value": None if math.isnan(s.value) else s.value}
                       for n, s in r.selections.items()},
        "tables": {}, "figures": {}, "reproduction": {}}
    cell_metrics: dict[str, float] = {}
    feeds: dict[str, list[str]] = {}  # retrain run id -> the table cells it feeds
    for rt in r.plan.tables:
        table = build_table(r, rt)
        for row in table.rows:
            for header, cell in zip(table.columns, row.cells):
                if cell.values:
                    cell_metrics[metric_key(rt.spec.name, row.label, header, "mean")] = cell.mean
                    cell_metrics[metric_key(rt.spec.name, row.label, header, "std")] = cell.std
        for (row_label, j), ref in rt.cells.items():
            for k in ref.retrains:
                feeds.setdefault(r.retrains[k]["run_id"], []).append(
                    f"{rt.spec.name}: {row_label} / {rt.columns[j].header}")
        lineage["reproduction"][rt.spec.name] = table_record(table, table_path(rt.spec.name))
        tables[rt.spec.name] = {"md": render_markdown(table), "csv": render_csv(table), "tex": render_latex(table)}
        lineage["tables"][rt.spec.name] = {
            row.label: {rc.header: _lineage(r, rt.cells[(row.label, j)]) for j, rc in enumerate(rt.columns)}
            for row in rt.spec.rows}
    for rf in r.plan.figures:
        figures[rf.spec.name] = fig = build_figure(r, rf)
        data[rf.spec.name] = figure_csv(fig)
        lineage["figures"][rf.spec.name] = {
            f"{lab} | {sk}": [r.retrains[k]["run_id"] for k in ks] for (lab, sk), ks in rf.rows.items()}
    for key in ("selections", "tables", "figures", "reproduction"):
        lineage[key] = {**(previous_lineage or {}).get(key, {}), **lineage[key]}
    title = r.spec.name + (f" ({r.spec.title_suffix})" if r.spec.title_suffix else "")
    repro = render_reproduction(title, lineage["reproduction"], [t.name for t in r.spec.tables])
    index = render_index(r, present[0] | set(tables), present[1] | set(figures))
    notes = {r.pipeline_run_id: pipeline_note(r, lineage["reproduction"], set(tables), set(figures))}
    for k, job in r.retrains.items():
        if job.get("reused") or job["run_id"] not in feeds:
            continue  # a reused run keeps the note of the pipeline run that trained it
        notes[job["run_id"]] = retrain_note(r, k, feeds[job["run_id"]])
    return Rendered(tables, figures, data, json.dumps(lineage, indent=2), repro, index, cell_metrics, notes)


def pipeline_note(r: Results, reproduction: Mapping[str, Any], tables: set[str], figures: set[str]) -> str:
    """The pipeline run's note in the MLflow UI: what it made, the verdicts, where to look."""
    lines = [f"**Pipeline `{r.spec.name}`**" + (f" ({r.spec.title_suffix})" if r.spec.title_suffix else "") + ": "
             f"{len(tables)} table(s), {len(figures)} figure(s). Did each result match the paper? Artifact "
             "`REPRODUCTION.md`; the tables are under `tables/`, figures under `figures/`, every cell's runs in "
             "`lineage.json`. Each cell's mean and std are metrics of this run (`table/row/column/mean`), to compare "
             "pipeline runs.", ""]
    for name, rec in reproduction.items():
        if name in tables:
            lines.append(f"- `{name}`: {rec.get('summary', '')}".rstrip(": "))
    sweeps = {s.sweep: s for s in r.selections.values() if s.sweep_run_id}
    if sweeps:
        exp = r.experiment_id
        lines += ["", "Sweeps: " + ", ".join(run_link(exp, s.sweep_run_id, name) for name, s in sorted(sweeps.items()))]
    return "\n".join(lines)


def retrain_note(r: Results, k: RetrainKey, cells: list[str]) -> str:
    """A retrain run's note: the sweep and trial its configuration comes from, and the table cells it feeds."""
    sel, exp = r.selections[k.source], r.experiment_id
    src = ("the sweep's base config (no sweep)" if not sel.trial_run_id else
           f"trial {run_link(exp, sel.trial_run_id)} of sweep {run_link(exp, sel.sweep_run_id, sel.sweep)} "
           f"(best by `{sel.metric}` = {sel.value:.4f})")
    over = f", with {json.dumps(k.set)}" if k.set else ""
    return "\n".join([f"**Retrain** of `{k.source}`, seed {k.seed}: the configuration of {src}{over}, trained on the "
                      f"full training set and tested once (pipeline {run_link(exp, r.pipeline_run_id, r.spec.name)}).",
                      "", "Feeds the cells:"] + [f"- {c}" for c in dict.fromkeys(cells)])


def render_index(r: Results, tables: set[str], figures: set[str]) -> str:
    """``index.md``: the pipeline's tables and figures named in ``tables`` / ``figures`` (those in the output folder,
    so ``--only`` keeps the others listed), in the spec's order."""
    suffix = f" ({r.spec.title_suffix})" if r.spec.title_suffix else ""
    lines = [f"# {r.spec.name}", "", f"MLflow: experiment `{r.experiment}` at `{r.tracking_uri}`, last pipeline run "
                                     f"`{r.pipeline_run_id}`.", ""]
    tabs = [t for t in r.spec.tables if t.name in tables]
    figs = [f for f in r.spec.figures if f.name in figures]
    lines += ["Did each result match the paper? [REPRODUCTION.md](REPRODUCTION.md): every cell with a published "
              "value, its verdict, and a summary per table.", ""]
    if tabs:
        lines += ["## Tables", ""] + [f"- [{t.title}{suffix}]({table_path(t.name)}) ([csv]("
                                      f"{table_path(t.name, 'csv')}), [tex]({table_path(t.name, 'tex')}))" for t in tabs]
    if figs:
        lines += ["", "## Figures", ""] + [f"- [{f.title}{suffix}]({figure_path(f.name)}) ([pdf]("
                                           f"{figure_path(f.name, 'pdf')}), [data]({figure_path(f.name, 'csv')}))"
                                           for f in figs]
    c = r.counts
    lines += ["", f"Lineage of every cell and point: [lineage.json](lineage.json). Last run: trained "
                  f"{c.get('trained', 0)} model(s), reused {c.get('reused', 0)}; ran {c.get('evaluated', 0)} "
                  f"evaluation(s), reused {c.get('evals_reused', 0)}.", ""]
    return "\n".join(lines)


def _lineage(r: Results, ref: CellRef) -> dict[str, Any]:
    """Where one cell comes from: sweep → selected trial → retrain run per seed (→ evaluation run per seed)."""
    sel = r.selections[ref.retrains[0].source]
    d: dict[str, Any] = {"sweep": sel.sweep, "sweep_run_id": sel.sweep_run_id, "trial_run_id": sel.trial_run_id,
                         "selection": {sel.metric: None if math.isnan(sel.value) else sel.value},
                         "set": ref.retrains[0].set,
                         "retrain_run_ids": {str(k.seed): r.retrains[k]["run_id"] for k in ref.retrains}}
    if any(u is not None for u in ref.evals):
        d["eval_run_ids"] = {str(u.target.seed): r.evals[u.key]["run_id"] for u in ref.evals if u is not None}
        d["attack"] = str(ref.attack)
    if ref.reference:
        d["reference_run_ids"] = {str(k.seed): r.retrains[k]["run_id"] for k in ref.reference}
    return d


__all__ = ["Rendered", "Results", "build_figure", "build_table", "find_record", "history_needed", "render",
           "render_index", "weights_needed"]

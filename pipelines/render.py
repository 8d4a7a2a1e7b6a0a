"""Turn finished retrains and evaluations into the pipeline's outputs: tables (Markdown, CSV, LaTeX), figures (PNG,
PDF and the plotted numbers as CSV), ``lineage.json`` and ``index.md``, all also logged to the pipeline's MLflow run.

Cells and points are read only from the runs the plan names (retrain metrics, evaluation records); masking-audit
flags of the records behind a cell become its footnotes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import TYPE_CHECKING, Any

from pipelines.figures import Figure, Panel, Series, figure_csv, render_figure
from pipelines.plan import CellRef, ResolvedFigure, ResolvedTable
from pipelines.reproduction import render_reproduction, table_record
from pipelines.tables import Cell, Row, Table, render_csv, render_latex, render_markdown
from robust_core.attacks.key import AttackKey

if TYPE_CHECKING:
    from pipelines.final import Runner


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


def _cell(r: "Runner", rt: ResolvedTable, row_label: str, j: int) -> Cell:
    rc = rt.columns[j]
    col, ref = rc.spec, rt.cells[(row_label, j)]
    vals: list[float] = []
    ids: list[str] = []
    eval_ids: list[str] = []
    notes: list[str] = []
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
                eval_ids.append(ev["run_id"])
        if v is not None and not math.isnan(v):
            vals.append(v)
            ids.append(job["run_id"])
    note = ""
    if not vals:
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


def build_table(r: "Runner", rt: ResolvedTable) -> Table:
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


def _history(r: "Runner", run_id: str, key: str) -> dict[int, float]:
    from robust_core.tracking import client

    cache = r.__dict__.setdefault("_hist", {})
    if (run_id, key) not in cache:
        hist = client(r.uri).get_metric_history(run_id, key)
        cache[(run_id, key)] = {int(m.step): m.value for m in hist}
    return cache[(run_id, key)]


def build_figure(r: "Runner", rf: ResolvedFigure) -> Figure:
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
                                pts.setdefault(rec["eps"], []).append(rec["accuracy"] * 100)
                                norms.add(rec["norm"])
                                flags += rec.get("flags", [])
                    xs = sorted(pts)
                    agg = [_agg(pts[x]) for x in xs]
                    series.append(Series(row.label, tuple(xs), tuple(a for a, _ in agg), tuple(b for _, b in agg)))
                norm = " / ".join(NORM_TEXT.get(n, n) for n in sorted(norms)) or "?"
                panels.append(Panel(f"{s.header}: {atk.header}", f"ε ({norm}, pixel units)",
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
                    for key, name, style in (("train_acc", "train", "dashed"), ("test_acc", "test", "solid")):
                        per_epoch: dict[int, list[float]] = {}
                        for k in rf.rows[(lab, s.key)]:
                            for ep, v in _history(r, r.retrains[k]["run_id"], key).items():
                                per_epoch.setdefault(ep, []).append((1 - v) * 100)
                        xs = sorted(per_epoch)
                        agg = [_agg(per_epoch[x]) for x in xs]
                        series.append(Series(f"{lab} {name}", tuple(float(x) for x in xs),
                                             tuple(a for a, _ in agg), tuple(b for _, b in agg), style))
                panels.append(Panel(f"{s.header}: {' vs '.join(pair)}", "epoch", "error (%)", tuple(series)))
        elif f.kind == "epochs_to_reach":
            series: list[Series] = []
            never: list[str] = []
            for row in f.rows:
                groups = []
                for thr in f.thresholds:
                    eps_needed = []
                    keys = rf.rows[(row.label, s.key)]
                    for k in keys:
                        h = _history(r, r.retrains[k]["run_id"], "test_acc")
                        hit = [ep for ep in sorted(h) if h[ep] * 100 >= thr]
                        if hit:
                            eps_needed.append(float(hit[0]))
                    if len(eps_needed) < len(keys):
                        never.append(f"{row.label} {thr:g}% ({len(keys) - len(eps_needed)}/{len(keys)} seeds)")
                    groups.append(eps_needed)
                series.append(_bar_series(row.label, groups))
            panels.append(Panel(s.header, "test accuracy reached (%)", "epochs needed", tuple(series), kind="bar",
                                xticklabels=tuple(f"{t:g}" for t in f.thresholds)))
            if never:
                flags.append(f"{s.header}: not reached within the budget (bars average the seeds that reached it; "
                             "no bar when none did): " + ", ".join(never))
    notes = list(rf.footnotes) + ([f"Paper: {f.paper}."] if f.paper else [])
    notes += [x if "not reached within the budget" in x else _audit_note(x) for x in dict.fromkeys(flags)]
    notes.append(f"Mean ± sample std over seeds {rf.seeds}.")
    return Figure(f.name, rf.title, tuple(panels), tuple(f"[{i}] {n}" for i, n in enumerate(notes, 1)))


# ---------------------------------------------------------------------------------------------------- outputs
def render_outputs(r: "Runner") -> dict[str, Any]:
    from robust_core.tracking import log_artifact_file, log_artifact_text

    out = Path(r.spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict[str, str]] = {}
    figures: dict[str, dict[str, str]] = {}
    lineage: dict[str, Any] = {
        "pipeline_run_id": r.parent, "tracking_uri": r.uri, "experiment": r.exp,
        "selections": {n: {"sweep_run_id": s.sweep_run_id, "trial_run_id": s.trial_run_id, "metric": s.metric,
                           "value": None if math.isnan(s.value) else s.value}
                       for n, s in r.selections.items()},
        "tables": {}, "figures": {}, "reproduction": {}}
    for rt in r.plan.tables:
        table = build_table(r, rt)
        lineage["reproduction"][rt.spec.name] = table_record(table, f"{rt.spec.name}.md")
        files = {"md": render_markdown(table), "csv": render_csv(table), "tex": render_latex(table)}
        tables[rt.spec.name] = {}
        for ext, text in files.items():
            p = out / f"{rt.spec.name}.{ext}"
            p.write_text(text)
            tables[rt.spec.name][ext] = str(p)
            log_artifact_text(r.uri, r.parent, f"tables/{rt.spec.name}.{ext}", text)
        lineage["tables"][rt.spec.name] = {
            row.label: {rc.header: _lineage(r, rt.cells[(row.label, j)]) for j, rc in enumerate(rt.columns)}
            for row in rt.spec.rows}
    for rf in r.plan.figures:
        fig = build_figure(r, rf)
        paths = render_figure(fig, out)
        csv_path = out / f"{rf.spec.name}.csv"
        csv_path.write_text(figure_csv(fig))
        figures[rf.spec.name] = {"png": str(paths["png"]), "pdf": str(paths["pdf"]), "csv": str(csv_path)}
        for p in (paths["png"], paths["pdf"], csv_path):
            log_artifact_file(r.uri, r.parent, str(p), "figures")
        lineage["figures"][rf.spec.name] = {
            f"{lab} | {sk}": [r.retrains[k]["run_id"] for k in ks] for (lab, sk), ks in rf.rows.items()}
    old = out / "lineage.json"
    if old.is_file():  # a run with --only updates its own entries and keeps the others'
        prev = json.loads(old.read_text())
        for key in ("selections", "tables", "figures", "reproduction"):
            lineage[key] = {**prev.get(key, {}), **lineage[key]}
    text = json.dumps(lineage, indent=2)
    old.write_text(text)
    log_artifact_text(r.uri, r.parent, "lineage.json", text)
    title = r.spec.name + (f" ({r.spec.title_suffix})" if r.spec.title_suffix else "")
    repro = render_reproduction(title, lineage["reproduction"], [t.name for t in r.spec.tables])
    (out / "REPRODUCTION.md").write_text(repro)
    log_artifact_text(r.uri, r.parent, "REPRODUCTION.md", repro)
    index = write_index(r, out)
    log_artifact_text(r.uri, r.parent, "index.md", index)
    return {"tables": tables, "figures": figures, "index": str(out / "index.md"),
            "reproduction": str(out / "REPRODUCTION.md")}


def write_index(r: "Runner", out: Path) -> str:
    """``index.md``: every table and figure of the pipeline that exists in ``out`` (so ``--only`` keeps the others)."""
    suffix = f" ({r.spec.title_suffix})" if r.spec.title_suffix else ""
    lines = [f"# {r.spec.name}", "", f"MLflow: experiment `{r.exp}` at `{r.uri}`, last pipeline run `{r.parent}`.", ""]
    tabs = [t for t in r.spec.tables if (out / f"{t.name}.md").is_file()]
    figs = [f for f in r.spec.figures if (out / f"{f.name}.png").is_file()]
    if (out / "REPRODUCTION.md").is_file():
        lines += ["Did each result match the paper? [REPRODUCTION.md](REPRODUCTION.md): every cell with a published "
                  "value, its verdict, and a summary per table.", ""]
    if tabs:
        lines += ["## Tables", ""] + [f"- [{t.title}{suffix}]({t.name}.md) ([csv]({t.name}.csv), [tex]({t.name}.tex))"
                                      for t in tabs]
    if figs:
        lines += ["", "## Figures", ""] + [f"- [{f.title}{suffix}]({f.name}.png) ([pdf]({f.name}.pdf), "
                                           f"[data]({f.name}.csv))" for f in figs]
    lines += ["", f"Lineage of every cell and point: [lineage.json](lineage.json). Last run: trained {r.trained} "
                  f"model(s), reused {r.reused}; ran {r.evaluated} evaluation(s), reused {r.evals_reused}.", ""]
    text = "\n".join(lines)
    (out / "index.md").write_text(text)
    return text


def _lineage(r: "Runner", ref: CellRef) -> dict[str, Any]:
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


__all__ = ["build_figure", "build_table", "find_record", "render_outputs"]

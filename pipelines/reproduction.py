"""``REPRODUCTION.md``: every table's cells against the papers' published values, the page a reviewer reads first.

Pure: ``table_record`` turns a rendered ``Table`` into plain data (kept in ``lineage.json``, so a run with ``--only``
keeps the other tables' records), ``render_reproduction`` turns the records into Markdown. The verdict itself is
``pipelines.tables.verdict``.
"""
from __future__ import annotations

from typing import Any

from pipelines.tables import Table, md_escape, plural, signed, summarize, t_half_width, verdict

POLICY = (
    "A cell *reproduces* its published value (✓) when that value lies inside the 95 % Student-t interval of our mean "
    "over seeds, mean ± t(0.975, n−1)·s/√n; otherwise (✗) the signed gap ours − paper is given, in the column's "
    "unit. With one seed there is no interval, only the gap (Δ). Few seeds make the interval wide (± 8.98 s with 2 "
    "seeds, ± 2.48 s with 3, ± 1.24 s with 5, s the sample std), so ✓ says the paper's value is not distinguishable "
    "from ours, not that they are equal.\n\n"
    "Stand-ins. Where a profile runs other data or attacks in a paper column's place (the laptop profile's mnist5k — "
    "4,000 real MNIST training digits — for MNIST, a smoke profile's tiny generated data, fewer PGD steps), the cell "
    "is still compared with the paper's value and the column names both (`ours ← paper's`): the question such a "
    "profile answers is how far it lands from the paper, and a ✗ there measures that distance under the profile's "
    "data and budget (see its title), not a failed reproduction of the paper's setting. Where a profile runs one "
    "dataset in place of another (mnist5k in a CIFAR-10 table), nothing is compared: the paper's value belongs to "
    "another task, and the table says so. Seconds per epoch are shown for reference, not judged: they depend on the "
    "hardware."
)
_MARK = {"reproduced": "✓", "not reproduced": "✗", "gap only (n=1)": "Δ"}


def table_record(t: Table, file: str) -> dict[str, Any]:
    """What ``REPRODUCTION.md`` shows of table ``t`` (rendered to ``file``): its summary and every cell that has a
    published value beside it, as plain JSON-able data."""
    s = summarize(t)
    cells = []
    for r in t.rows:
        for j, c in enumerate(r.cells):
            if c.paper is None:
                continue
            v = verdict(c)
            cells.append({"row": r.label, "column": t.columns[j],
                          "paper_column": t.paper_columns[j] if t.paper_columns else t.columns[j],
                          "n": len(c.values), "mean": c.mean if c.values else None,
                          "half": t_half_width(c.values), "paper": c.paper,
                          "gap": None if v is None else v.gap,
                          "verdict": v.word if v else ("reference only" if c.values else "no result")})
    return {"title": t.title, "file": file, "decimals": t.decimals, "summary": s.line(t.decimals),
            "reproduced": s.reproduced, "judged": s.judged, "compared": len(s.verdicts),
            "mean_gap": s.mean_gap, "cells": cells}


def _ours(c: dict[str, Any], d: int) -> str:
    if c["mean"] is None:
        return "—"
    if c["half"] is None:
        return f"{c['mean']:.{d}f} (n={c['n']})"
    return f"{c['mean']:.{d}f} ± {c['half']:.{d}f} (n={c['n']})"


def render_reproduction(title: str, records: dict[str, dict[str, Any]], order: list[str]) -> str:
    """The page: the policy, one overview line per table (in ``order``), then each table's cells."""
    names = [n for n in order if n in records]
    lines = [f"# Reproduction: {title}", "", POLICY, "", "| table | reproduced | gap only (n=1) | mean signed gap |",
             "|---|---|---|---|"]
    tot_rep = tot_judged = tot_n1 = 0
    for n in names:
        r = records[n]
        gap = "—" if r["mean_gap"] is None else signed(r["mean_gap"], r["decimals"])
        judged = f"{r['reproduced']} of {r['judged']}" if r["judged"] else "—"
        lines.append(f"| [{md_escape(r['title'])}]({r['file']}) | {judged} | {r['compared'] - r['judged']} | {gap} |")
        tot_rep, tot_judged = tot_rep + r["reproduced"], tot_judged + r["judged"]
        tot_n1 += r["compared"] - r["judged"]
    lines += ["", f"**Overall: {tot_rep} of {tot_judged} judged cells reproduced, over {plural(len(names), 'table')}"
                  + (f"; {tot_n1} more cells with one seed give only their gap" if tot_n1 else "") + ".**"]
    for n in names:
        r, d = records[n], records[n]["decimals"]
        lines += ["", f"## [{r['title']}]({r['file']})", ""]
        if not r["cells"]:
            lines.append("No published value beside any cell in this profile (the table's footnotes say why).")
            continue
        lines += [r["summary"], "", "| method | column | ours: mean ± 95 % interval | paper | gap | verdict |",
                  "|---|---|---|---|---|---|"]
        for c in r["cells"]:
            col = c["column"] if c["column"] == c["paper_column"] else f"{c['column']} ← {c['paper_column']}"
            gap = "" if c["gap"] is None else signed(c["gap"], d)
            verdict_text = f"{_MARK[c['verdict']]} {c['verdict']}" if c["verdict"] in _MARK else c["verdict"]
            lines.append(f"| {md_escape(c['row'])} | {md_escape(col)} | {_ours(c, d)} | {c['paper']:.{d}f} | {gap} "
                         f"| {verdict_text} |")
    return "\n".join(lines) + "\n"

"""Result tables: ``ours ± std (paper)`` per cell, best in bold, rendered as Markdown, CSV and LaTeX.

Pure functions of a ``Table`` (no MLflow, no Ray) so rendering is golden-tested on fixed inputs.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from statistics import mean, stdev


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]  # one per seed, in the table's unit (e.g. accuracy in %)
    run_ids: tuple[str, ...] = ()  # MLflow runs that produced the values (lineage)
    note: str = ""  # why a cell is missing, or a warning; becomes a footnote
    paper: float | None = None  # the published value, shown in parentheses (not part of the bolding)
    notes: tuple[str, ...] = ()  # more footnotes (e.g. masking-audit warnings of the records behind the cell)
    suspect: bool = False  # a masking-audit warning concerns this number: shown, footnoted, never bold as "best"

    @property
    def all_notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(((self.note,) if self.note else ()) + self.notes))

    @property
    def mean(self) -> float:
        return mean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return stdev(self.values) if len(self.values) > 1 else 0.0  # sample std (n − 1)


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell, ...]
    source: str = ""  # e.g. the sweep and trial the configuration came from


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    higher_is_better: bool = True
    decimals: int = 2
    footnotes: tuple[str, ...] = field(default_factory=tuple)
    column_higher: tuple[bool, ...] | None = None  # per-column direction (e.g. accuracy next to error); None: table's

    def best_rows(self, col: int) -> set[int]:
        vals = [(i, r.cells[col].mean) for i, r in enumerate(self.rows)
                if r.cells[col].values and not r.cells[col].suspect]
        if not vals:
            return set()
        higher = self.higher_is_better if self.column_higher is None else self.column_higher[col]
        target = (max if higher else min)(v for _, v in vals)
        fmt = f"{{:.{self.decimals}f}}"
        return {i for i, v in vals if fmt.format(v) == fmt.format(target)}  # ties as displayed are all bold


def _pm(cell: Cell, d: int, pm: str = " ± ") -> str:
    if len(cell.values) == 1:  # no spread from one run: say so instead of printing ± 0
        return f"{cell.mean:.{d}f} (n=1)"
    return f"{cell.mean:.{d}f}{pm}{cell.std:.{d}f}"


def _paper(cell: Cell, d: int) -> str:
    return "" if cell.paper is None else f" ({cell.paper:.{d}f})"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def _cell_notes(t: Table) -> tuple[dict[tuple[int, int], str], list[str]]:
    """Footnote number for each cell that has a note; returns the mapping and the footnote texts."""
    marks: dict[tuple[int, int], str] = {}
    notes: list[str] = list(t.footnotes)
    for i, r in enumerate(t.rows):
        for j, c in enumerate(r.cells):
            ks = []
            for n in c.all_notes:
                if n not in notes:
                    notes.append(n)
                ks.append(str(notes.index(n) + 1))
            if ks:
                marks[(i, j)] = ",".join(ks)
    return marks, notes


def _cell_texts(t: Table, pm: str, missing: str, bold: str, mark: str) -> tuple[list[list[str]], list[str]]:
    """Every cell's text in one format (``pm`` between mean and std, ``missing`` for an empty cell, ``bold`` and
    ``mark`` as format strings for the best value and the footnote numbers); returns (rows of cells, footnotes)."""
    marks, notes = _cell_notes(t)
    best = {j: t.best_rows(j) for j in range(len(t.columns))}
    rows = []
    for i, r in enumerate(t.rows):
        cells = []
        for j, c in enumerate(r.cells):
            s = _pm(c, t.decimals, pm) if c.values else missing
            if i in best[j]:
                s = bold.format(s)
            s += _paper(c, t.decimals)
            if (i, j) in marks:
                s += mark.format(marks[(i, j)])
            cells.append(s)
        rows.append(cells)
    return rows, notes


def render_markdown(t: Table) -> str:
    texts, notes = _cell_texts(t, " ± ", "—", "**{}**", " [{}]")
    lines = [f"### {t.title}", "", "| Method | " + " | ".join(map(_md, t.columns)) + " |",
             "|---|" + "---|" * len(t.columns)]
    for r, cells in zip(t.rows, texts):
        lines.append(f"| {_md(r.label)} | " + " | ".join(cells) + " |")
    n = sorted({len(c.values) for r in t.rows for c in r.cells if c.values})
    paper = " (published value in parentheses)" if any(c.paper is not None for r in t.rows for c in r.cells) else ""
    seeds = "seed" if n == [1] else "seeds"
    suspect = (" (not given to cells with a masking-audit footnote)"
               if any(c.suspect for r in t.rows for c in r.cells) else "")
    lines += ["", f"Mean ± sample std over {'/'.join(map(str, n)) or 0} {seeds}; best in bold{suspect}{paper}."]
    lines += [f"[{k}] {note}" for k, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def render_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "method", "column", "mean", "std", "n", "values", "run_ids", "source", "note", "paper"])
    for r in t.rows:
        for col, c in zip(t.columns, r.cells):
            w.writerow([t.name, r.label, col, f"{c.mean:.6f}" if c.values else "", f"{c.std:.6f}" if c.values else "",
                        len(c.values), ";".join(f"{v:.6f}" for v in c.values), ";".join(c.run_ids), r.source,
                        " | ".join(c.all_notes), "" if c.paper is None else f"{c.paper:.6f}"])
    return buf.getvalue()


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def render_latex(t: Table) -> str:
    texts, notes = _cell_texts(t, " $\\pm$ ", "---", "\\textbf{{{}}}", "$^{{{}}}$")
    out = [r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(t.title)}}}",
           f"\\label{{tab:{tex_escape(t.name)}}}", r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
           "Method & " + " & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for r, cells in zip(t.rows, texts):
        out.append(tex_escape(r.label) + " & " + " & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    for k, note in enumerate(notes, 1):
        out.append(f"\\par{{\\footnotesize $^{{{k}}}$ {tex_escape(note)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"

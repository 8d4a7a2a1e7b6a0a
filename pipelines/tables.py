"""Result tables: ``ours ± std (paper verdict)`` per cell, best in bold, rendered as Markdown, CSV and LaTeX.

The reproduction verdict of a cell with a published value: *reproduced* (✓) when the published value lies inside
the 95 % Student-t interval of our mean over seeds, mean ± t(0.975, n−1)·s/√n; otherwise the signed gap ours − paper
(✗). With one seed there is no interval, only the gap (Δ). Each table's summary line counts the reproduced cells and
averages the signed gap. Cells whose published value is shown for reference only (``compare=False``, e.g. seconds
measured on other hardware) get no verdict.

Pure functions of a ``Table`` (no MLflow, no Ray) so rendering is golden-tested on fixed inputs. The LaTeX needs
``\\usepackage{booktabs}`` (rules) and ``\\usepackage{amssymb}`` (✓); every non-ASCII character of our texts is
written as a LaTeX command, so ``pdflatex`` compiles it.
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
    compare: bool = True  # False: the published value is shown for reference only, without a verdict

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
    paper_columns: tuple[str, ...] = ()  # the paper's label of each column (ours differs for stand-in data)

    def best_rows(self, col: int) -> set[int]:
        vals = [(i, r.cells[col].mean) for i, r in enumerate(self.rows)
                if r.cells[col].values and not r.cells[col].suspect]
        if not vals:
            return set()
        higher = self.higher_is_better if self.column_higher is None else self.column_higher[col]
        target = (max if higher else min)(v for _, v in vals)
        fmt = f"{{:.{self.decimals}f}}"
        return {i for i, v in vals if fmt.format(v) == fmt.format(target)}  # ties as displayed are all bold


@dataclass(frozen=True)
class Verdict:
    """Our cell against its published value. ``half``: half-width of the 95 % t-interval (None with one seed)."""

    paper: float
    mean: float
    n: int
    half: float | None

    @property
    def gap(self) -> float:  # signed, ours − paper, in the column's unit
        return self.mean - self.paper

    @property
    def reproduced(self) -> bool | None:  # None: one seed, no interval to judge by
        return None if self.half is None else abs(self.gap) <= self.half

    @property
    def word(self) -> str:
        return {True: "reproduced", False: "not reproduced", None: "gap only (n=1)"}[self.reproduced]


def t_half_width(values: tuple[float, ...], level: float = 0.95) -> float | None:
    """Half-width of the Student-t confidence interval of the mean of ``values`` (None for fewer than 2)."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2, n - 1)) * stdev(values) / math.sqrt(n)


def verdict(cell: Cell) -> Verdict | None:
    """The cell's verdict; None when it has no result, no published value, or the value is for reference only."""
    if cell.paper is None or not cell.values or not cell.compare:
        return None
    return Verdict(cell.paper, cell.mean, len(cell.values), t_half_width(cell.values))


@dataclass(frozen=True)
class Summary:
    verdicts: tuple[Verdict, ...]  # every cell with a result and a compared published value
    reference_only: int = 0  # published values shown without a verdict
    no_result: int = 0  # published values beside a cell we have no result for

    @property
    def judged(self) -> int:
        return sum(v.reproduced is not None for v in self.verdicts)

    @property
    def reproduced(self) -> int:
        return sum(v.reproduced is True for v in self.verdicts)

    @property
    def mean_gap(self) -> float | None:
        return mean(v.gap for v in self.verdicts) if self.verdicts else None

    def line(self, d: int = 2) -> str:
        """One sentence for under the table (empty when the table shows no published value)."""
        if not self.verdicts and not self.reference_only and not self.no_result:
            return ""
        parts = []
        if self.verdicts:
            n1 = len(self.verdicts) - self.judged
            parts.append(f"Reproduced {self.reproduced} of {plural(self.judged, 'cell')} (published value inside "
                         "our mean's 95 % t-interval over seeds)"
                         + (f", {n1} more with one seed (gap only)" if n1 else "")
                         + f"; mean signed gap ours − paper {signed(self.mean_gap or 0.0, d)} over "
                         f"{plural(len(self.verdicts), 'cell')}")
        else:
            parts.append("No cell compared with its published value")
        if self.reference_only:
            parts.append(f"{plural(self.reference_only, 'published value')} shown for reference only (no verdict)")
        if self.no_result:
            parts.append(f"{plural(self.no_result, 'published value')} beside cells without a result")
        return "; ".join(parts) + "."


def summarize(t: Table) -> Summary:
    cells = [c for r in t.rows for c in r.cells if c.paper is not None]
    return Summary(tuple(v for c in cells for v in [verdict(c)] if v is not None),
                   sum(1 for c in cells if c.values and not c.compare), sum(1 for c in cells if not c.values))


def plural(k: int, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"


def signed(x: float, d: int, minus: str = "−") -> str:
    return f"{x:+.{d}f}".replace("-", minus)


def _pm(cell: Cell, d: int, pm: str = " ± ") -> str:
    if len(cell.values) == 1:  # no spread from one run: say so instead of printing ± 0
        return f"{cell.mean:.{d}f} (n=1)"
    return f"{cell.mean:.{d}f}{pm}{cell.std:.{d}f}"


@dataclass(frozen=True)
class _Marks:
    """How one format writes the parts of a cell: ``pm`` between mean and std, ``missing`` for an empty cell,
    ``bold``/``mark`` format strings for the best value and the footnote numbers, ``ok``/``bad``/``delta`` for the
    verdict beside the published value, ``gap`` a format string for the signed gap and ``minus`` its minus sign."""

    pm: str
    missing: str
    bold: str
    mark: str
    ok: str
    bad: str
    delta: str
    gap: str
    minus: str


_MD = _Marks(" ± ", "—", "**{}**", " [{}]", "✓", "✗", "Δ", "{}", "−")
_TEX = _Marks(" $\\pm$ ", "---", "\\textbf{{{}}}", "$^{{{}}}$", "\\checkmark", "$\\times$", "$\\Delta$", "${}$", "-")


def _paper(cell: Cell, d: int, m: _Marks) -> str:
    """`` (paper ✓)``, `` (paper ✗ gap)``, `` (paper Δ gap)`` with one seed, `` (paper)`` when not compared."""
    if cell.paper is None:
        return ""
    v = verdict(cell)
    s = f"{cell.paper:.{d}f}"
    if v is not None:
        gap = m.gap.format(signed(v.gap, d, m.minus))
        s += {True: f" {m.ok}", False: f" {m.bad} {gap}", None: f" {m.delta} {gap}"}[v.reproduced]
    return f" ({s})"


def md_escape(s: str) -> str:
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


def _cell_texts(t: Table, m: _Marks) -> tuple[list[list[str]], list[str]]:
    """Every cell's text in one format; returns (rows of cells, footnotes)."""
    marks, notes = _cell_notes(t)
    best = {j: t.best_rows(j) for j in range(len(t.columns))}
    rows = []
    for i, r in enumerate(t.rows):
        cells = []
        for j, c in enumerate(r.cells):
            s = _pm(c, t.decimals, m.pm) if c.values else m.missing
            if i in best[j]:
                s = m.bold.format(s)
            s += _paper(c, t.decimals, m)
            if (i, j) in marks:
                s += m.mark.format(marks[(i, j)])
            cells.append(s)
        rows.append(cells)
    return rows, notes


LEGEND = ("In parentheses: the published value, then ✓ when it lies inside our mean's 95 % t-interval over seeds, "
          "✗ and the signed gap ours − paper when it does not, Δ and the gap with one seed (no interval); no mark: "
          "shown for reference only.")


def render_markdown(t: Table) -> str:
    texts, notes = _cell_texts(t, _MD)
    lines = [f"### {t.title}", "", "| Method | " + " | ".join(map(md_escape, t.columns)) + " |",
             "|---|" + "---|" * len(t.columns)]
    for r, cells in zip(t.rows, texts):
        lines.append(f"| {md_escape(r.label)} | " + " | ".join(cells) + " |")
    lines += ["", _legend(t)]
    summary = summarize(t).line(t.decimals)
    if summary:
        lines += [LEGEND, f"**{summary}**"]
    lines += [f"[{k}] {note}" for k, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def _legend(t: Table) -> str:
    n = sorted({len(c.values) for r in t.rows for c in r.cells if c.values})
    seeds = "seed" if n == [1] else "seeds"
    suspect = (" (not given to cells with a masking-audit footnote)"
               if any(c.suspect for r in t.rows for c in r.cells) else "")
    return f"Mean ± sample std over {'/'.join(map(str, n)) or 0} {seeds}; best in bold{suspect}."


def render_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "method", "column", "mean", "std", "n", "values", "run_ids", "source", "note", "paper",
                "ci_low", "ci_high", "gap", "verdict"])
    f6 = "{:.6f}".format
    for r in t.rows:
        for col, c in zip(t.columns, r.cells):
            v = verdict(c)
            ci = ["", ""] if v is None or v.half is None else [f6(v.mean - v.half), f6(v.mean + v.half)]
            why = v.word if v else ("reference only" if c.paper is not None and c.values else "")
            w.writerow([t.name, r.label, col, f6(c.mean) if c.values else "", f6(c.std) if c.values else "",
                        len(c.values), ";".join(map(f6, c.values)), ";".join(c.run_ids), r.source,
                        " | ".join(c.all_notes), "" if c.paper is None else f6(c.paper), *ci,
                        "" if v is None else f6(v.gap), why])
    return buf.getvalue()


_TEX_CHARS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
              "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
              "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",  # OT1 would print — ¡ ¿
              # what our titles, labels and notes use beyond ASCII; pdflatex's utf8 input knows none of these
              "ε": r"$\varepsilon$", "ϵ": r"$\epsilon$", "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$",
              "λ": r"$\lambda$", "ζ": r"$\zeta$", "ξ": r"$\xi$", "Δ": r"$\Delta$", "∞": r"$\infty$",
              "−": r"$-$", "±": r"$\pm$", "×": r"$\times$", "÷": r"$\div$", "·": r"$\cdot$", "≤": r"$\leq$",
              "≥": r"$\geq$", "≈": r"$\approx$", "→": r"$\to$", "←": r"$\leftarrow$", "∪": r"$\cup$",
              "√": r"$\surd$", "✓": r"\checkmark{}", "✗": r"$\times$", "—": "---", "–": "--", "…": r"\dots{}",
              "§": r"\S{}", "⁰": r"$^0$", "’": "'", "‘": "`", "“": "``", "”": "''"}
PREAMBLE = "% needs \\usepackage{booktabs} (rules) and \\usepackage{amssymb} (\\checkmark) in the document preamble"


def tex_escape(s: str) -> str:
    return "".join(_TEX_CHARS.get(ch, ch) for ch in s)


TEX_MAX_COLUMNS = 6  # value columns per tabular: wider tables are split into blocks stacked on the page


def render_latex(t: Table) -> str:
    """One ``table`` float; a table with more than ``TEX_MAX_COLUMNS`` value columns (ATLD's white-box table has 30)
    is split into blocks of at most that many columns, each a tabular with the row labels, stacked under the one
    caption, so that it fits a page instead of running off it."""
    texts, notes = _cell_texts(t, _TEX)
    out = [PREAMBLE, r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(t.title)}}}",
           f"\\label{{tab:{t.name}}}"]
    n = len(t.columns)
    blocks = [range(i, min(i + TEX_MAX_COLUMNS, n)) for i in range(0, n, TEX_MAX_COLUMNS)] or [range(0)]
    for b, cols in enumerate(blocks):
        if b:
            out.append(r"\par\medskip")
        out += [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
                "Method & " + " & ".join(tex_escape(t.columns[j]) for j in cols) + r" \\", r"\midrule"]
        for r, cells in zip(t.rows, texts):
            out.append(tex_escape(r.label) + " & " + " & ".join(cells[j] for j in cols) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
    out.append(f"\\par{{\\footnotesize {tex_escape(_legend(t))}}}")
    summary = summarize(t).line(t.decimals)
    if summary:
        out += [f"\\par{{\\footnotesize {tex_escape(LEGEND)}}}", f"\\par{{\\footnotesize {tex_escape(summary)}}}"]
    for k, note in enumerate(notes, 1):
        out.append(f"\\par{{\\footnotesize $^{{{k}}}$ {tex_escape(note)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"

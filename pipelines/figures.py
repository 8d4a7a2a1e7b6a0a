"""Figures of the final pipeline: pure functions of a Figure, rendered to PNG and PDF; the numbers also go to CSV so
every plotted point is auditable.

No MLflow, no Ray, no pyplot: a ``matplotlib.figure.Figure`` is drawn on its own Agg canvas, so rendering touches no
global figure registry and leaks nothing. Missing values are ``math.nan``: they are skipped when drawn (a line breaks
at them, a bar is left out), never plotted as 0; a panel with no finite value says "no data". The PDF is byte-for-byte
reproducible (no creation date), and so is the PNG (no software stamp).

Colours are assigned per method over the whole figure, in order of first appearance, keyed by the label without a
trailing " (paper)": "VAT" and its dashed "VAT (paper)" share a colour, in every panel.
"""
from __future__ import annotations

import csv
import io
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
KINDS = ("line", "bar")
STYLES = ("solid", "dashed")
PAPER_SUFFIX = " (paper)"
MAX_COLS = 3
DPI = 150
CSV_HEADER = ("figure", "panel", "series", "x", "xticklabel", "y", "yerr", "style")


@dataclass(frozen=True)
class Series:
    label: str  # legend entry, e.g. "VAT" or "VAT (paper)"
    x: tuple[float, ...]  # numeric x positions (for bar panels: category index 0..n-1)
    y: tuple[float, ...]  # values; math.nan = missing (skipped when drawn, never plotted as 0)
    yerr: tuple[float, ...] | None = None  # ± error bars (sample std over seeds); None = none
    style: str = "solid"  # "solid" | "dashed" (dashed = the paper's published values)


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    kind: str = "line"  # "line" | "bar" (grouped bars, one group per category, one bar per series)
    xticklabels: tuple[str, ...] | None = None  # category names for bar panels (len = number of categories)
    ylim: tuple[float, float] | None = None


@dataclass(frozen=True)
class Figure:
    name: str  # file stem, [A-Za-z0-9_.-]+
    title: str  # suptitle
    panels: tuple[Panel, ...]  # laid out in a grid of at most 3 columns
    notes: tuple[str, ...] = ()  # footnotes printed under the figure (small font), e.g. "[1] masking audit: ..."


# ---------------------------------------------------------------------------------------------------- validation


def _validate(fig: Figure) -> None:
    """Raise ValueError naming the first problem found in ``fig``."""
    if not isinstance(fig.name, str) or not NAME_RE.fullmatch(fig.name):
        raise ValueError(f"figure name {fig.name!r} is not a valid file stem: it must match [A-Za-z0-9_.-]+")
    if not fig.panels:
        raise ValueError(f"figure {fig.name!r}: at least one panel is required")
    for p in fig.panels:
        where = f"figure {fig.name!r}, panel {p.title!r}"
        if p.kind not in KINDS:
            raise ValueError(f"{where}: kind {p.kind!r} is not one of {'|'.join(KINDS)}")
        if p.ylim is not None:
            if len(p.ylim) != 2 or not all(math.isfinite(v) for v in p.ylim) or not p.ylim[0] < p.ylim[1]:
                raise ValueError(f"{where}: ylim {p.ylim!r} must be two finite numbers (low, high) with low < high")
        for s in p.series:
            sw = f"{where}, series {s.label!r}"
            if s.style not in STYLES:
                raise ValueError(f"{sw}: style {s.style!r} is not one of {'|'.join(STYLES)}")
            if len(s.x) != len(s.y):
                raise ValueError(f"{sw}: length mismatch, {len(s.x)} x values but {len(s.y)} y values")
            if s.yerr is not None and len(s.yerr) != len(s.y):
                raise ValueError(f"{sw}: length mismatch, {len(s.yerr)} yerr values but {len(s.y)} y values")
            if not all(math.isfinite(v) for v in s.x):
                raise ValueError(f"{sw}: x values must be finite numbers, got {tuple(s.x)!r}")
            if any(math.isinf(v) for v in s.y):
                raise ValueError(f"{sw}: y values must be finite or nan (missing), got {tuple(s.y)!r}")
            if s.yerr is not None and any(not math.isnan(e) and not (math.isfinite(e) and e >= 0) for e in s.yerr):
                raise ValueError(f"{sw}: yerr values must be >= 0 or nan (missing), got {tuple(s.yerr)!r}")
            if p.kind == "bar" and any(v != int(v) or v < 0 for v in s.x):
                raise ValueError(f"{sw}: bar panel x values must be category indices 0..n-1, got {tuple(s.x)!r}")
            if p.xticklabels is not None:
                n = len(p.xticklabels)
                bad = [v for v in s.x if v != int(v) or not 0 <= v < n]
                if bad:
                    raise ValueError(f"{sw}: {n} xticklabels do not cover the x positions {bad!r} "
                                     f"(x must be category indices 0..{n - 1})")


def _tick_label(p: Panel, x: float) -> str:
    if p.xticklabels is None:
        return ""
    return p.xticklabels[int(x)]


# ---------------------------------------------------------------------------------------------------- CSV


def _num(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.6f}"


def figure_csv(fig: Figure) -> str:
    """The plotted numbers, one line per point: header ``figure,panel,series,x,xticklabel,y,yerr,style``, floats with
    6 decimals, empty string for nan / missing yerr / missing ticklabel; rows in panel, series, point order."""
    _validate(fig)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for p in fig.panels:
        for s in p.series:
            for i, (x, y) in enumerate(zip(s.x, s.y)):
                e = None if s.yerr is None else s.yerr[i]
                w.writerow((fig.name, p.title, s.label, _num(x), _tick_label(p, x), _num(y), _num(e), s.style))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- rendering


def _base_label(label: str) -> str:
    return label[: -len(PAPER_SUFFIX)] if label.endswith(PAPER_SUFFIX) else label


def _colours(fig: Figure) -> dict[str, str]:
    from matplotlib import rcParams

    cycle = rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    out: dict[str, str] = {}
    for p in fig.panels:
        for s in p.series:
            b = _base_label(s.label)
            if b not in out:
                out[b] = cycle[len(out) % len(cycle)]
    return out


def _has_data(p: Panel) -> bool:
    return any(not math.isnan(v) for s in p.series for v in s.y)


def _draw_line(ax, p: Panel, colours: dict[str, str]) -> None:
    for s in p.series:
        dashed = s.style == "dashed"
        ax.errorbar(
            list(s.x), list(s.y), yerr=None if s.yerr is None else list(s.yerr),
            color=colours[_base_label(s.label)], linestyle="--" if dashed else "-",
            marker="s" if dashed else "o", markersize=4, capsize=3, linewidth=1.3, label=s.label,
        )  # nan y breaks the line there (no interpolation across a missing point); nan yerr draws no bar


def _draw_bar(ax, p: Panel, colours: dict[str, str]) -> None:
    n = len(p.series)
    width = 0.8 / max(n, 1)
    for j, s in enumerate(p.series):
        off = (j - (n - 1) / 2) * width
        keep = [i for i, v in enumerate(s.y) if not math.isnan(v)]  # missing bars are left out, not drawn at 0
        xs = [s.x[i] + off for i in keep]
        ys = [s.y[i] for i in keep]
        es = None if s.yerr is None else [s.yerr[i] for i in keep]
        c = colours[_base_label(s.label)]
        style = (dict(facecolor="none", edgecolor=c, hatch="//", linestyle="--", linewidth=1.0)
                 if s.style == "dashed" else dict(color=c))
        ax.bar(xs, ys, width=width, yerr=es, capsize=3, ecolor="black", label=s.label,
               error_kw=dict(elinewidth=1.0), **style)
    if p.xticklabels is None:
        cats = sorted({int(v) for s in p.series for v in s.x})
        ax.set_xticks(cats)


def _draw_panel(ax, p: Panel, colours: dict[str, str]) -> None:
    ax.set_title(p.title, fontsize=10)
    ax.set_xlabel(p.xlabel, fontsize=9)
    ax.set_ylabel(p.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    if p.xticklabels is not None:
        ax.set_xticks(range(len(p.xticklabels)))
        ax.set_xticklabels(p.xticklabels)
    if not _has_data(p):
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")
        ax.set_yticks([])
        if p.xticklabels is None:
            ax.set_xticks([])
        return
    (_draw_bar if p.kind == "bar" else _draw_line)(ax, p, colours)
    ax.grid(True, axis="y", alpha=0.3)
    if p.ylim is not None:
        ax.set_ylim(*p.ylim)
    if len(p.series) > 1:
        ax.legend(fontsize=7)


def render_figure(fig: Figure, out_dir: Path) -> dict[str, Path]:
    """Write out_dir/<name>.png (dpi 150) and out_dir/<name>.pdf; return {"png": path, "pdf": path}."""
    _validate(fig)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    n = len(fig.panels)
    ncols = min(MAX_COLS, n)
    nrows = math.ceil(n / ncols)
    width, panel_h = max(4.6 * ncols, 6.4), 3.6
    title_lines = textwrap.wrap(fig.title, max(30, int(width * 72 / (12 * 0.6)))) or [""]  # chars/line at 12 pt
    title_h = 0.2 + 0.22 * len(title_lines)
    wrap = max(40, int(width * 72 / (7 * 0.6)))  # characters per line at 7 pt
    note_lines = [ln for note in fig.notes for ln in (textwrap.wrap(note, wrap, subsequent_indent="    ") or [""])]
    notes_h = (len(note_lines) * 7 * 1.35 / 72 + 0.15) if note_lines else 0.0
    height = nrows * panel_h + title_h + notes_h

    mfig = MplFigure(figsize=(width, height))
    FigureCanvasAgg(mfig)  # attaches itself to mfig; no pyplot, so nothing is registered globally
    try:
        colours = _colours(fig)
        for k, p in enumerate(fig.panels):
            _draw_panel(mfig.add_subplot(nrows, ncols, k + 1), p, colours)
        mfig.suptitle("\n".join(title_lines), fontsize=12)
        if note_lines:
            mfig.text(0.01, 0.05 / height, "\n".join(note_lines), ha="left", va="bottom", fontsize=7,
                      linespacing=1.35)
        mfig.tight_layout(rect=(0, notes_h / height, 1, 1 - title_h / height))

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"png": out_dir / f"{fig.name}.png", "pdf": out_dir / f"{fig.name}.pdf"}
        mfig.savefig(paths["png"], format="png", dpi=DPI, metadata={"Software": None})
        mfig.savefig(paths["pdf"], format="pdf", metadata={"CreationDate": None})
        return paths
    finally:
        mfig.clear()

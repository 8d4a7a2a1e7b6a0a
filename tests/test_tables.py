"""Golden tests for result tables: a fixed set of runs renders to exact Markdown, CSV and LaTeX, with the
reproduction verdict of every cell that has a published value."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.spec import load_pipeline_spec
from pipelines.tables import (PREAMBLE, Cell, Row, Table, render_csv, render_latex, render_markdown, summarize,
                              t_half_width, tex_escape, verdict)


@pytest.fixture
def table() -> Table:
    # MLE/mnist5k: 81 ± 1 over 3 seeds, interval 81 ± 2.48, paper 98.5 outside (✗ −17.50); its svhn cell has no
    # result beside a published value. VAT/mnist5k: paper 92 inside 91 ± 2.48 (✓); VAT/svhn: one seed (Δ +1.00).
    # xVAT: a published value shown for reference only (compare=False, e.g. seconds on other hardware).
    return Table(
        "ssl_mnist5k_100", "SSL MNIST (100 labels): test accuracy (%), ε = 0.3", ("mnist5k (100)", "svhn_1000"),
        (Row("MLE", (Cell((80.0, 82.0, 81.0), ("r1", "r2", "r3"), paper=98.5),
                     Cell((), (), "not run: no sweep", paper=90.0)), "s1/t1"),
         Row("VAT | x & y", (Cell((90.0, 92.0, 91.0), ("r4", "r5", "r6"), paper=92.0,
                                  notes=("masking audit: pgd-20 weaker than fgsm",)),
                             Cell((50.0,), ("r7",), "not run: no sweep", notes=("masking audit: x",), paper=49.0)),
             "s2/t2"),
         Row("xVAT", (Cell((4.0, 5.0), ("r8", "r9"), paper=30.0, compare=False), Cell(())), "s3/t3")),
        footnotes=("Paper: A et al.",), paper_columns=("MNIST (100)", "SVHN (1000)"),
    )


def test_markdown_golden(table):
    assert render_markdown(table) == (
        "### SSL MNIST (100 labels): test accuracy (%), ε = 0.3\n"
        "\n"
        "| Method | mnist5k (100) | svhn_1000 |\n"
        "|---|---|---|\n"
        "| MLE | 81.00 ± 1.00 (98.50 ✗ −17.50) | — (90.00) [2] |\n"
        "| VAT \\| x & y | **91.00 ± 1.00** (92.00 ✓) [3] | **50.00 (n=1)** (49.00 Δ +1.00) [2,4] |\n"
        "| xVAT | 4.50 ± 0.71 (30.00) | — |\n"
        "\n"
        "Mean ± sample std over 1/2/3 seeds; best in bold.\n"
        "In parentheses: the published value, then ✓ when it lies inside our mean's 95 % t-interval over seeds, ✗ "
        "and the signed gap ours − paper when it does not, Δ and the gap with one seed (no interval); no mark: shown "
        "for reference only.\n"
        "**Reproduced 1 of 2 cells (published value inside our mean's 95 % t-interval over seeds), 1 more with one "
        "seed (gap only); mean signed gap ours − paper −5.83 over 3 cells; 1 published value shown for reference "
        "only (no verdict); 1 published value beside cells without a result.**\n"
        "[1] Paper: A et al.\n"
        "[2] not run: no sweep\n"
        "[3] masking audit: pgd-20 weaker than fgsm\n"
        "[4] masking audit: x\n"
    )


def test_csv_golden_keeps_every_run_id_and_the_verdict(table):
    assert render_csv(table) == (
        "table,method,column,mean,std,n,values,run_ids,source,note,paper,ci_low,ci_high,gap,verdict\n"
        "ssl_mnist5k_100,MLE,mnist5k (100),81.000000,1.000000,3,80.000000;82.000000;81.000000,r1;r2;r3,s1/t1,,"
        "98.500000,78.515862,83.484138,-17.500000,not reproduced\n"
        "ssl_mnist5k_100,MLE,svhn_1000,,,0,,,s1/t1,not run: no sweep,90.000000,,,,\n"
        "ssl_mnist5k_100,VAT | x & y,mnist5k (100),91.000000,1.000000,3,90.000000;92.000000;91.000000,r4;r5;r6,"
        "s2/t2,masking audit: pgd-20 weaker than fgsm,92.000000,88.515862,93.484138,-1.000000,reproduced\n"
        "ssl_mnist5k_100,VAT | x & y,svhn_1000,50.000000,0.000000,1,50.000000,r7,s2/t2,not run: no sweep | masking "
        "audit: x,49.000000,,,1.000000,gap only (n=1)\n"
        "ssl_mnist5k_100,xVAT,mnist5k (100),4.500000,0.707107,2,4.000000;5.000000,r8;r9,s3/t3,,30.000000,,,,"
        "reference only\n"
        "ssl_mnist5k_100,xVAT,svhn_1000,,,0,,,s3/t3,,,,,,\n"
    )


def test_latex_golden_escapes_and_bolds(table):
    assert render_latex(table) == (
        "% needs \\usepackage{booktabs} (rules) and \\usepackage{amssymb} (\\checkmark) in the document preamble\n"
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{SSL MNIST (100 labels): test accuracy (\\%), $\\varepsilon$ = 0.3}\n"
        "\\label{tab:ssl_mnist5k_100}\n"
        "\\begin{tabular}{lcc}\n"
        "\\toprule\n"
        "Method & mnist5k (100) & svhn\\_1000 \\\\\n"
        "\\midrule\n"
        "MLE & 81.00 $\\pm$ 1.00 (98.50 $\\times$ $-17.50$) & --- (90.00)$^{2}$ \\\\\n"
        "VAT \\textbar{} x \\& y & \\textbf{91.00 $\\pm$ 1.00} (92.00 \\checkmark)$^{3}$ & \\textbf{50.00 (n=1)} "
        "(49.00 $\\Delta$ $+1.00$)$^{2,4}$ \\\\\n"
        "xVAT & 4.50 $\\pm$ 0.71 (30.00) & --- \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\par{\\footnotesize Mean $\\pm$ sample std over 1/2/3 seeds; best in bold.}\n"
        "\\par{\\footnotesize In parentheses: the published value, then \\checkmark{} when it lies inside our mean's "
        "95 \\% t-interval over seeds, $\\times$ and the signed gap ours $-$ paper when it does not, $\\Delta$ and "
        "the gap with one seed (no interval); no mark: shown for reference only.}\n"
        "\\par{\\footnotesize Reproduced 1 of 2 cells (published value inside our mean's 95 \\% t-interval over "
        "seeds), 1 more with one seed (gap only); mean signed gap ours $-$ paper $-$5.83 over 3 cells; 1 published "
        "value shown for reference only (no verdict); 1 published value beside cells without a result.}\n"
        "\\par{\\footnotesize $^{1}$ Paper: A et al.}\n"
        "\\par{\\footnotesize $^{2}$ not run: no sweep}\n"
        "\\par{\\footnotesize $^{3}$ masking audit: pgd-20 weaker than fgsm}\n"
        "\\par{\\footnotesize $^{4}$ masking audit: x}\n"
        "\\end{table}\n"
    )


def test_lower_is_better_and_ties_bold_both():
    t = Table("err", "error", ("a",), (Row("x", (Cell((1.004, 1.0)),)), Row("y", (Cell((1.0, 1.0)),)),
                                       Row("z", (Cell((3.0, 3.0)),))), higher_is_better=False)
    assert t.best_rows(0) == {0, 1}  # 1.00 vs 1.00 as displayed: both bold
    md = render_markdown(t)
    assert "| x | **1.00 ± 0.00** |" in md and "| z | 3.00 ± 0.00 |" in md
    assert "Reproduced" not in md and "In parentheses" not in md  # no published value: no verdict lines


def test_t_interval_matches_the_students_t_table():
    # t(0.975, df) from any statistics table: df=1 12.706, df=2 4.303, df=4 2.776; half-width = t·s/√n
    assert t_half_width((0.0, 2.0)) == pytest.approx(12.706 * 2 ** 0.5 / 2 ** 0.5, abs=1e-3)
    assert t_half_width((80.0, 82.0, 81.0)) == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3)
    assert t_half_width((1.0, 2.0, 3.0, 4.0, 5.0)) == pytest.approx(2.776 * 2.5 ** 0.5 / 5 ** 0.5, abs=1e-3)
    assert t_half_width((7.0,)) is None and t_half_width(()) is None


def test_verdict_edges():
    vals = (80.0, 82.0, 81.0)
    half = t_half_width(vals)
    assert verdict(Cell(vals, paper=81.0 + half * (1 - 1e-9))).reproduced is True
    assert verdict(Cell(vals, paper=81.0 - half * (1 + 1e-9))).reproduced is False
    v = verdict(Cell(vals, paper=79.0))
    assert v.gap == pytest.approx(2.0) and v.word == "reproduced"  # signed: ours − paper
    assert verdict(Cell((5.0, 5.0), paper=5.0)).reproduced is True  # zero spread: the interval is the point
    assert verdict(Cell((5.0, 5.0), paper=5.01)).reproduced is False
    assert verdict(Cell((), paper=5.0)) is None and verdict(Cell((1.0, 2.0))) is None
    assert verdict(Cell((1.0, 2.0), paper=1.5, compare=False)) is None


def test_summary_counts_and_mean_gap(table):
    s = summarize(table)
    assert (len(s.verdicts), s.judged, s.reproduced, s.reference_only, s.no_result) == (3, 2, 1, 1, 1)
    assert s.mean_gap == pytest.approx((-17.5 - 1.0 + 1.0) / 3)


# ------------------------------------------------------------------------------------------------------------ LaTeX
BASE = {"begin", "end", "centering", "caption", "label", "par", "footnotesize", "textbf", "pm", "times", "Delta",
        "varepsilon", "epsilon", "alpha", "beta", "gamma", "lambda", "zeta", "xi", "infty", "div", "cdot", "leq",
        "geq", "approx", "to", "leftarrow", "cup", "surd", "dots", "textbar", "textless", "textgreater",
        "textasciitilde", "textasciicircum", "textbackslash", "medskip"}
PACKAGES = {"booktabs": {"toprule", "midrule", "bottomrule"}, "amssymb": {"checkmark"}}


def test_latex_uses_only_the_packages_its_preamble_note_names(table):
    tex = render_latex(table)
    assert tex.splitlines()[0] == PREAMBLE
    named = set(re.findall(r"\\usepackage\{(\w+)\}", PREAMBLE))
    assert named == set(PACKAGES)
    body = "\n".join(tex.splitlines()[1:])
    used = set(re.findall(r"\\([A-Za-z]+)", body))
    assert used <= BASE | set().union(*PACKAGES.values()), used - BASE
    assert used & PACKAGES["booktabs"] and used & PACKAGES["amssymb"]
    assert body.isascii()  # pdflatex's utf8 input has no ε, ±, ✓, −: every one is written as a command
    assert "\\label{tab:ssl_mnist5k_100}" in body  # a label is a name, not text: never escaped (\_ breaks it)


def test_a_wide_table_is_split_into_blocks_that_fit_a_page():
    """30 columns (ATLD's white-box table) in one tabular run off any page: the LaTeX splits the columns into blocks
    of at most TEX_MAX_COLUMNS, each with the row labels, under one caption; every cell appears once, in order."""
    from pipelines.tables import TEX_MAX_COLUMNS

    n = 2 * TEX_MAX_COLUMNS + 2
    cols = tuple(f"c{j}" for j in range(n))
    rows = tuple(Row(name, tuple(Cell((float(10 * i + j),), (f"r{i}{j}",)) for j in range(n)), "s/t")
                 for i, name in enumerate(("A", "B")))
    tex = render_latex(Table("wide", "Wide", cols, rows))
    assert tex.count("\\begin{tabular}") == 3 and tex.count("\\caption{") == 1
    specs = re.findall(r"\\begin\{tabular\}\{l(c+)\}", tex)
    assert [len(x) for x in specs] == [TEX_MAX_COLUMNS, TEX_MAX_COLUMNS, 2]
    headers = [h for line in tex.splitlines() if line.startswith("Method & ")
               for h in line[len("Method & "):-3].split(" & ")]
    assert headers == list(cols)
    a_cells = [c for line in tex.splitlines() if line.startswith("A & ") for c in line[4:-3].split(" & ")]
    assert a_cells == [f"{j:.2f} (n=1)" for j in range(n)]  # row A is below B everywhere: never bold


def test_every_catalogue_text_becomes_ascii_latex():
    """Titles, column and row labels, notes and published-value notes of every catalogue table: a new symbol in the
    catalogue that LaTeX would choke on fails here (add it to tables._TEX_CHARS)."""
    spec = load_pipeline_spec(Path(__file__).resolve().parents[1] / "pipelines" / "laptop.yaml")
    texts = []
    for t in spec.tables:
        texts += [t.title, t.paper, *t.notes, *(c.label for c in t.columns), *(r.label for r in t.rows)]
        texts += [pv.note for r in t.rows for pv in r.paper.values()]
    bad = {s for s in texts if not tex_escape(s).isascii()}
    assert not bad, bad

"""Golden tests for result tables: a fixed set of runs renders to exact Markdown, CSV and LaTeX."""
from __future__ import annotations

import pytest

from pipelines.tables import Cell, Row, Table, render_csv, render_latex, render_markdown


@pytest.fixture
def table() -> Table:
    return Table(
        "ssl", "SSL MNIST (100 labels): test accuracy (%)", ("mnist5k (100)", "svhn_1000"),
        (Row("MLE", (Cell((80.0, 82.0, 81.0), ("r1", "r2", "r3"), paper=98.5), Cell((), (), "not run: no sweep")),
             "s1/t1"),
         Row("VAT | x & y", (Cell((90.0, 92.0, 91.0), ("r4", "r5", "r6"), paper=99.0,
                                  notes=("masking audit: pgd-20 weaker than fgsm",)),
                             Cell((50.0,), ("r7",), "not run: no sweep", notes=("masking audit: x",))), "s2/t2")),
        footnotes=("Paper: A et al.",),
    )


def test_markdown_golden(table):
    assert render_markdown(table) == (
        "### SSL MNIST (100 labels): test accuracy (%)\n"
        "\n"
        "| Method | mnist5k (100) | svhn_1000 |\n"
        "|---|---|---|\n"
        "| MLE | 81.00 ± 1.00 (98.50) | — [2] |\n"
        "| VAT \\| x & y | **91.00 ± 1.00** (99.00) [3] | **50.00 (n=1)** [2,4] |\n"
        "\n"
        "Mean ± sample std over 1/3 seeds; best in bold (published value in parentheses).\n"
        "[1] Paper: A et al.\n"
        "[2] not run: no sweep\n"
        "[3] masking audit: pgd-20 weaker than fgsm\n"
        "[4] masking audit: x\n"
    )


def test_csv_golden_keeps_every_run_id(table):
    assert render_csv(table) == (
        "table,method,column,mean,std,n,values,run_ids,source,note,paper\n"
        "ssl,MLE,mnist5k (100),81.000000,1.000000,3,80.000000;82.000000;81.000000,r1;r2;r3,s1/t1,,98.500000\n"
        "ssl,MLE,svhn_1000,,,0,,,s1/t1,not run: no sweep,\n"
        "ssl,VAT | x & y,mnist5k (100),91.000000,1.000000,3,90.000000;92.000000;91.000000,r4;r5;r6,s2/t2,"
        "masking audit: pgd-20 weaker than fgsm,99.000000\n"
        "ssl,VAT | x & y,svhn_1000,50.000000,0.000000,1,50.000000,r7,s2/t2,not run: no sweep | masking audit: x,\n"
    )


def test_latex_golden_escapes_and_bolds(table):
    assert render_latex(table) == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{SSL MNIST (100 labels): test accuracy (\\%)}\n"
        "\\label{tab:ssl}\n"
        "\\begin{tabular}{lcc}\n"
        "\\toprule\n"
        "Method & mnist5k (100) & svhn\\_1000 \\\\\n"
        "\\midrule\n"
        "MLE & 81.00 $\\pm$ 1.00 (98.50) & ---$^{2}$ \\\\\n"
        "VAT | x \\& y & \\textbf{91.00 $\\pm$ 1.00} (99.00)$^{3}$ & \\textbf{50.00 (n=1)}$^{2,4}$ \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
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

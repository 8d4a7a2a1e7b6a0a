"""Golden tests for the pipeline's rendering: a fixed set of runs (retrain metrics, evaluation records) → exact
Markdown, CSV and LaTeX; plus the figure data of a fixed set of evaluation records."""
from __future__ import annotations

import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml

from pipelines.final import Selection
from pipelines.plan import make_plan
from pipelines.render import build_figure, build_table
from pipelines.figures import figure_csv
from pipelines.spec import load_pipeline_spec
from pipelines.tables import render_csv, render_latex, render_markdown
from robust_core.config import RunConfig

SPEC = {
    "name": "g", "tracking": {"uri": "sqlite:///unused.db"}, "seeds": [0, 1], "sweep": {"mode": "defaults"},
    "title_suffix": "reduced budget",
    "datasets": {"mnist": {"name": "mnist5k", "display": "mnist5k", "eval": {"steps": [5]}}, "svhn": None},
    "methods": {"mle": {"method": "mle"}, "pgd": {"method": "pgd_at"}},
    "tables": [{
        "name": "robust", "title": "Robust accuracy (%)", "paper": "Doe 2020",
        "rows": [{"label": "MLE", "method": "mle", "paper": [99.0, None, 95.0, 1.2]},
                 {"label": "PGD-AT", "method": "pgd", "paper": [98.5, 89.0, None, 0.9]}],
        "columns": [{"label": "MNIST", "dataset": "mnist"},
                    {"label": "MNIST PGD-20", "dataset": "mnist", "value": "attack", "suite": "whitebox",
                     "attack": "pgd-20"},
                    {"label": "SVHN", "dataset": "svhn"},
                    {"label": "MNIST error", "dataset": "mnist", "value": "error"}]}],
    "figures": [{"name": "curve", "title": "FGSM accuracy", "kind": "curves", "settings": [{"dataset": "mnist"}],
                 "rows": [{"label": "MLE", "method": "mle"}, {"label": "PGD-AT", "method": "pgd"}],
                 "attacks": ["fgsm"]}],
}
TEST_ACC = {("mle", 0): 0.98, ("mle", 1): 0.97, ("pgd", 0): 0.95, ("pgd", 1): 0.94}
PGD = {("mle", 0): 0.00, ("mle", 1): 0.01, ("pgd", 0): 0.80, ("pgd", 1): 0.84}
FLAG = "target: pgd-5 linf ε=0.3 (84.00%) weaker than fewer steps"


def _rec(suite, label, acc, eps=0.3, flags=()):
    return {"suite": suite, "key": label, "label": label, "attack": label.split("-")[0], "source": None, "eps": eps,
            "norm": "linf", "accuracy": acc, "flags": list(flags), "options": {}}


@pytest.fixture
def runner(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(SPEC))
    plan = make_plan(load_pipeline_spec(p))
    m = lambda src: "pgd" if "pgd" in src else "mle"  # noqa: E731
    sel = {s: Selection(s, "", "", "defaults (no sweep)", float("nan"), RunConfig()) for s in plan.sources}
    retrains = {k: {"run_id": f"r-{m(k.source)}-{k.seed}", "metrics": {"test_acc": TEST_ACC[(m(k.source), k.seed)]}}
                for k in plan.retrains}
    evals = {}
    for key, u in plan.evals.items():
        who = (m(u.target.source), u.target.seed)
        recs = [_rec(u.suite, "clean", TEST_ACC[who], 0.0),
                _rec(u.suite, "pgd-5", PGD[who], flags=[FLAG] if who == ("pgd", 1) else [])]
        recs += [_rec(u.suite, "fgsm", TEST_ACC[who] - e * (1 if who[0] == "mle" else 0.3) - 0.01 * who[1], e)
                 for e in (0.0, 0.1, 0.3)]
        evals[key] = {"run_id": f"e-{who[0]}-{who[1]}-{u.suite}", "records": recs, "audit": []}
    return SimpleNamespace(plan=plan, spec=plan.spec, selections=sel, retrains=retrains, evals=evals)


def test_table_golden_from_fixed_runs(runner):
    t = build_table(runner, runner.plan.tables[0])
    t = replace(t, rows=tuple(replace(r, source=re.sub(r"-[0-9a-f]{6}/", "-HASH/", r.source)) for r in t.rows))
    assert render_markdown(t) == (
        "### Robust accuracy (%) (reduced budget)\n"
        "\n"
        "| Method | mnist5k | mnist5k PGD-5 | mnist5k error |\n"
        "|---|---|---|---|\n"
        "| MLE | **97.50 ± 0.71** (99.00) | **0.50 ± 0.71** | **2.50 ± 0.71** (1.20) |\n"
        "| PGD-AT | 94.50 ± 0.71 (98.50) | 82.00 ± 2.83 (89.00) [3] | 5.50 ± 0.71 (0.90) |\n"
        "\n"
        "Mean ± sample std over 2 seeds; best in bold (not given to cells with a masking-audit footnote) (published "
        "value in parentheses).\n"
        "[1] Columns not computed in this profile (data not available here): SVHN.\n"
        "[2] In parentheses: published value (Doe 2020); none where the paper reports none or it is not transcribed"
        " in pipelines/catalog.yaml.\n"
        "[3] masking audit: pgd-5 linf ε=0.3 (84.00%) weaker than fewer steps\n"
    )
    assert render_csv(t) == (
        "table,method,column,mean,std,n,values,run_ids,source,note,paper\n"
        "robust,MLE,mnist5k,97.500000,0.707107,2,98.000000;97.000000,r-mle-0;r-mle-1,g-mle-mnist-all-defaults-HASH/"
        "defaults,,99.000000\n"
        "robust,MLE,mnist5k PGD-5,0.500000,0.707107,2,0.000000;1.000000,r-mle-0;r-mle-1;e-mle-0-whitebox;"
        "e-mle-1-whitebox,g-mle-mnist-all-defaults-HASH/defaults,,\n"
        "robust,MLE,mnist5k error,2.500000,0.707107,2,2.000000;3.000000,r-mle-0;r-mle-1,g-mle-mnist-all-defaults-HASH/"
        "defaults,,1.200000\n"
        "robust,PGD-AT,mnist5k,94.500000,0.707107,2,95.000000;94.000000,r-pgd-0;r-pgd-1,g-pgd-mnist-all-defaults-HASH/"
        "defaults,,98.500000\n"
        "robust,PGD-AT,mnist5k PGD-5,82.000000,2.828427,2,80.000000;84.000000,r-pgd-0;r-pgd-1;e-pgd-0-whitebox;"
        "e-pgd-1-whitebox,g-pgd-mnist-all-defaults-HASH/defaults,masking audit: pgd-5 linf ε=0.3 (84.00%) weaker than "
        "fewer steps,89.000000\n"
        "robust,PGD-AT,mnist5k error,5.500000,0.707107,2,5.000000;6.000000,r-pgd-0;r-pgd-1,g-pgd-mnist-all-defaults-HASH/"
        "defaults,,0.900000\n"
    )
    assert render_latex(t) == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{Robust accuracy (\\%) (reduced budget)}\n"
        "\\label{tab:robust}\n"
        "\\begin{tabular}{lccc}\n"
        "\\toprule\n"
        "Method & mnist5k & mnist5k PGD-5 & mnist5k error \\\\\n"
        "\\midrule\n"
        "MLE & \\textbf{97.50 $\\pm$ 0.71} (99.00) & \\textbf{0.50 $\\pm$ 0.71} & \\textbf{2.50 $\\pm$ 0.71} (1.20) "
        "\\\\\n"
        "PGD-AT & 94.50 $\\pm$ 0.71 (98.50) & 82.00 $\\pm$ 2.83 (89.00)$^{3}$ & 5.50 $\\pm$ 0.71 (0.90) \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\par{\\footnotesize $^{1}$ Columns not computed in this profile (data not available here): SVHN.}\n"
        "\\par{\\footnotesize $^{2}$ In parentheses: published value (Doe 2020); none where the paper reports none or "
        "it is not transcribed in pipelines/catalog.yaml.}\n"
        "\\par{\\footnotesize $^{3}$ masking audit: pgd-5 linf ε=0.3 (84.00\\%) weaker than fewer steps}\n"
        "\\end{table}\n"
    )


def test_missing_record_is_a_dash_with_a_footnote(runner):
    for ev in runner.evals.values():
        ev["records"] = [r for r in ev["records"] if r["label"] != "pgd-5"]
    md = render_markdown(build_table(runner, runner.plan.tables[0]))
    assert "| MLE | **97.50 ± 0.71** (99.00) | — [3] |" in md
    assert "[3] no pgd-5 recorded by the runs of this cell (see lineage.json)" in md


def test_figure_points_are_the_records_mean_and_std(runner):
    fig = build_figure(runner, runner.plan.figures[0])
    assert [p.title for p in fig.panels] == ["mnist5k: FGSM"]
    assert figure_csv(fig) == (
        "figure,panel,series,x,xticklabel,y,yerr,style\n"
        "curve,mnist5k: FGSM,MLE,0.000000,,97.000000,1.414214,solid\n"
        "curve,mnist5k: FGSM,MLE,0.100000,,87.000000,1.414214,solid\n"
        "curve,mnist5k: FGSM,MLE,0.300000,,67.000000,1.414214,solid\n"
        "curve,mnist5k: FGSM,PGD-AT,0.000000,,94.000000,1.414214,solid\n"
        "curve,mnist5k: FGSM,PGD-AT,0.100000,,91.000000,1.414214,solid\n"
        "curve,mnist5k: FGSM,PGD-AT,0.300000,,85.000000,1.414214,solid\n"
    )

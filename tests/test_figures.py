"""Figures: PNG and PDF written and reproducible, the CSV of plotted numbers golden-tested, bad inputs rejected."""
from __future__ import annotations

import math

import pytest

from pipelines.figures import Figure, Panel, Series, figure_csv, render_figure

NAN = math.nan


def _line_fig(name: str = "ssl_curve") -> Figure:
    return Figure(
        name, "SSL MNIST: test error vs labels",
        (Panel("mnist5k", "labels", "test error (%)",
               (Series("VAT", (100.0, 1000.0), (2.5, NAN), (0.25, NAN)),
                Series("VAT (paper)", (100.0, 1000.0), (2.33, 1.36), style="dashed"))),),
        notes=("[1] masking audit: labels hidden from the unlabeled loss",),
    )


def _bar_fig(ys: tuple[tuple[float, ...], tuple[float, ...]]) -> Figure:
    cats = ("mnist", "svhn", "cifar10")
    return Figure(
        "bars", "Robustness by dataset",
        (Panel("adv. accuracy", "dataset", "accuracy (%)",
               (Series("MLE", (0.0, 1.0, 2.0), ys[0], (1.0, 2.0, 1.5)),
                Series("VAT", (0.0, 1.0, 2.0), ys[1], (0.5, 0.5, 0.5))),
               kind="bar", xticklabels=cats),),
    )


def test_writes_png_and_pdf(tmp_path):
    paths = render_figure(_line_fig(), tmp_path / "figs")
    assert set(paths) == {"png", "pdf"}
    assert paths["png"] == tmp_path / "figs" / "ssl_curve.png"
    assert paths["pdf"] == tmp_path / "figs" / "ssl_curve.pdf"
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_pdf_is_deterministic(tmp_path):
    a = render_figure(_line_fig(), tmp_path / "a")["pdf"].read_bytes()
    b = render_figure(_line_fig(), tmp_path / "b")["pdf"].read_bytes()
    assert a == b
    assert b"CreationDate" not in a


def test_csv_golden():
    assert figure_csv(_line_fig()) == (
        "figure,panel,series,x,xticklabel,y,yerr,style\n"
        "ssl_curve,mnist5k,VAT,100.000000,,2.500000,0.250000,solid\n"
        "ssl_curve,mnist5k,VAT,1000.000000,,,,solid\n"
        "ssl_curve,mnist5k,VAT (paper),100.000000,,2.330000,,dashed\n"
        "ssl_curve,mnist5k,VAT (paper),1000.000000,,1.360000,,dashed\n"
    )


def test_csv_bar_has_ticklabels():
    lines = figure_csv(_bar_fig(((90.0, 80.0, 70.0), (95.0, NAN, 75.0)))).splitlines()
    assert len(lines) == 1 + 6
    assert lines[5] == "bars,adv. accuracy,VAT,1.000000,svhn,,0.500000,solid"


@pytest.mark.parametrize("fig, match", [
    (Figure("f", "t", (Panel("p", "x", "y", (Series("s", (0.0, 1.0), (1.0,)),)),)), "length mismatch"),
    (Figure("f", "t", (Panel("p", "x", "y", (Series("s", (0.0, 1.0), (1.0, 2.0), (0.1,)),)),)), "yerr"),
    (Figure("bad name/..", "t", (Panel("p", "x", "y", ()),)), "name"),
    (Figure("f", "t", (Panel("p", "x", "y", (), kind="pie"),)), "kind 'pie'"),
    (Figure("f", "t", ()), "at least one panel"),
    (Figure("f", "t", (Panel("p", "x", "y", (Series("s", (0.0, 3.0), (1.0, 2.0)),), kind="bar",
                             xticklabels=("a", "b")),)), "xticklabels"),
])
def test_validation(tmp_path, fig, match):
    with pytest.raises(ValueError, match=match):
        figure_csv(fig)
    with pytest.raises(ValueError, match=match):
        render_figure(fig, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written for an invalid figure


def test_all_nan_panel_renders(tmp_path):
    fig = Figure("empty", "Nothing yet", (
        Panel("missing", "labels", "error", (Series("VAT", (1.0, 2.0), (NAN, NAN), (NAN, NAN)),)),
        Panel("present", "labels", "error", (Series("VAT", (1.0, 2.0), (3.0, 2.0)),)),
    ))
    paths = render_figure(fig, tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_bar_values_reach_the_plot(tmp_path):
    a = render_figure(_bar_fig(((90.0, 80.0, 70.0), (95.0, NAN, 75.0))), tmp_path / "a")["png"].read_bytes()
    same = render_figure(_bar_fig(((90.0, 80.0, 70.0), (95.0, NAN, 75.0))), tmp_path / "b")["png"].read_bytes()
    other = render_figure(_bar_fig(((60.0, 80.0, 70.0), (95.0, 85.0, 75.0))), tmp_path / "c")["png"].read_bytes()
    assert a[:4] == b"\x89PNG"
    assert a == same  # the PNG carries no timestamp or software stamp, so a difference below is the values
    assert a != other


def test_no_pyplot_figures_leak(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_figure(_line_fig(), tmp_path)
    assert plt.get_fignums() == before

"""The x axes of the papers' accuracy-vs-noise figures: the radii the plan evaluates and where render plots them.

ATER Fig. 2 plots FGSM and the L2 gradient attack against one "noise level" (the L2 norm of the perturbation, 0..8
on MNIST); ATLD Fig. 5 plots PGD/CW against ε in 1/255 of the pixel range up to 20. Before ``FigureAxis`` the
figures ran the profile's grids and plotted ε in pixel units, so these tests fail under the old behaviour.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from pipelines.figures import figure_csv
from pipelines.plan import make_plan
from pipelines.render import Results, build_figure, history_needed
from pipelines.spec import load_pipeline_spec
from pipelines.store import Selection
from robust_core.attacks.suites import SUITES
from robust_core.config import RunConfig

LEVELS = [0, 2, 4, 8]
SPEC = {
    "name": "ax", "tracking": {"uri": "sqlite:///unused.db"}, "seeds": [0], "sweep": {"mode": "defaults"},
    "datasets": {"mnist": {"name": "mnist5k", "display": "mnist5k", "eval": {"steps": [5]}},
                 "cifar10": {"name": "cifar10", "display": "CIFAR-10", "eval": {"steps": [5]}}},
    "methods": {"mle": {"method": "mle"}},
    "tables": [],
    "figures": [
        {"name": "noise", "title": "noise", "kind": "curves", "settings": [{"dataset": "mnist"}],
         "rows": [{"label": "MLE", "method": "mle"}], "attacks": ["fgsm", "l2grad"],
         "axis": {"x": "l2_norm", "levels": {"mnist": LEVELS}}},
        {"name": "budget", "title": "budget", "kind": "budget", "settings": [{"dataset": "cifar10"}],
         "rows": [{"label": "MLE", "method": "mle"}], "attacks": ["pgd-20"],
         "axis": {"x": "eps255", "levels": {"cifar10": ["4/255", "20/255"]}}},
    ],
}


def _spec(tmp_path, spec: dict):
    p = tmp_path / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return load_pipeline_spec(p)


def _plan(tmp_path, name: str, datasets: dict, methods: dict, figure: dict, seeds=(0,)):
    """The plan of a one-figure pipeline in the methods' defaults (no sweeps)."""
    return make_plan(_spec(tmp_path, {"name": name, "tracking": {"uri": "sqlite:///unused.db"}, "seeds": list(seeds),
                                      "sweep": {"mode": "defaults"}, "datasets": datasets,
                                      "methods": {m: {"method": m} for m in methods}, "tables": [],
                                      "figures": [figure]}))


MNIST = {"mnist": {"name": "mnist5k", "display": "mnist5k"}}


def _results(tmp_path) -> Results:
    plan = make_plan(_spec(tmp_path, SPEC))
    sel = {s: Selection(s, "", "", "defaults (no sweep)", float("nan"), RunConfig()) for s in plan.sources}
    retrains = {k: {"run_id": f"r-{k.seed}", "metrics": {}} for k in plan.retrains}
    evals = {}
    for key, u in plan.evals.items():  # one record per step the suite runs, accuracy falling with the radius
        recs = [{"suite": u.suite, "key": str(st.key), "label": str(st.key), "attack": type(st.attack).__name__,
                 "source": None, "eps": st.attack.eps, "norm": st.attack.norm,
                 "accuracy": 1 / (1 + st.attack.eps), "flags": [], "options": {}}
                for st in SUITES.get(u.suite).steps(u.settings, ())]
        evals[key] = {"run_id": f"e-{u.suite}", "records": recs, "audit": []}
    return Results(plan, sel, retrains, evals)


def test_noise_level_axis_runs_fgsm_at_the_same_l2_norm_and_plots_the_papers_levels(tmp_path):
    r = _results(tmp_path)
    (u,) = [u for u in r.plan.evals.values() if u.suite == "curves"]
    assert u.settings.l2_curve == tuple(LEVELS)
    assert u.settings.linf_grid == pytest.approx([x / 28 for x in LEVELS])  # mnist: d = 784, √d = 28
    fig = build_figure(r, r.plan.figures[0])
    assert len(fig.panels) == 2  # FGSM, then the L2 gradient attack
    for p in fig.panels:
        (s,) = p.series
        assert s.x == tuple(float(x) for x in LEVELS)  # the paper's x positions, for both attacks
    assert [p.xlabel for p in fig.panels] == ["noise level (L2 norm); ε∞ = level/√784", "noise level (L2 norm)"]
    assert any("Noise level: the L2 norm of the perturbation, inputs in [0, 1]" in n for n in fig.notes)
    fgsm = [ln for ln in figure_csv(fig).splitlines() if ",MLE," in ln][:len(LEVELS)]
    assert [float(ln.split(",")[5]) for ln in fgsm] == pytest.approx([100 / (1 + x / 28) for x in LEVELS])


def test_budget_axis_in_255ths_runs_the_figures_radii(tmp_path):
    r = _results(tmp_path)
    (u,) = [u for u in r.plan.evals.values() if u.suite == "budget"]
    assert u.settings.linf_grid == pytest.approx([4 / 255, 20 / 255])
    fig = build_figure(r, r.plan.figures[1])
    (p,) = fig.panels
    assert p.xlabel == "ε (L∞, in 1/255 of the pixel range)"
    assert p.series[0].x == (4.0, 20.0)


def test_an_axis_level_for_an_unknown_dataset_is_refused(tmp_path):
    bad = {**SPEC, "figures": [{**SPEC["figures"][0], "axis": {"x": "l2_norm", "levels": {"mnsit": [1]}}}]}
    with pytest.raises(Exception, match="mnsit"):
        _spec(tmp_path, bad)


def test_default_axis_keeps_the_profiles_grid_in_pixel_units(tmp_path):
    plain = {**SPEC, "figures": [{**SPEC["figures"][0], "axis": {}}]}
    plan = make_plan(_spec(tmp_path, plain))
    (u,) = plan.evals.values()
    assert u.settings.linf_grid == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # mnist5k's defaults, unchanged
    assert plan.figures[0].x_scale == {}


def test_epochs_to_reach_thresholds_per_panel(tmp_path):
    """FAT Fig. 3: one pre-specified accuracy per panel (98 % MNIST (100), 90 % SVHN (1000), 80 % CIFAR-10 (4000))."""
    plan = _plan(tmp_path, "fat", {**MNIST, "cifar10": {"name": "cifar10", "display": "CIFAR-10"}}, ["vat"],
                 {"name": "reach", "title": "reach", "kind": "epochs_to_reach",
                  "rows": [{"label": "VAT", "method": "vat"}],
                  "settings": [{"dataset": "mnist", "labels": 100, "thresholds": [98]},
                               {"dataset": "cifar10", "labels": 4000, "thresholds": [80]}]})
    retrains = {k: {"run_id": f"r-{k.source}", "metrics": {}} for k in plan.retrains}
    curve = {1: 0.70, 2: 0.85, 3: 0.985}
    history = {(v["run_id"], "test_acc"): curve for v in retrains.values()}
    fig = build_figure(Results(plan, {}, retrains, history=history), plan.figures[0])
    assert [(p.title, p.xticklabels, p.series[0].y) for p in fig.panels] == [
        ("mnist5k (100)", ("98",), (3.0,)), ("CIFAR-10 (4000)", ("80",), (2.0,))]


def test_setting_thresholds_only_for_epochs_to_reach(tmp_path):
    bad = {**SPEC, "figures": [{**SPEC["figures"][1], "settings": [{"dataset": "cifar10", "thresholds": [80]}]}]}
    with pytest.raises(Exception, match="for kind epochs_to_reach only"):
        _spec(tmp_path, bad)


def test_test_accuracy_per_epoch_figure_reads_only_the_test_history(tmp_path):
    """FAT Fig. 2 / Shaham Fig. 5: test accuracy (not error, no train curve) per epoch, one panel for all rows."""
    plan = _plan(tmp_path, "ep", MNIST, ["vat", "fat"],
                 {"name": "acc", "title": "acc", "kind": "epochs", "settings": [{"dataset": "mnist", "labels": 20}],
                  "rows": [{"label": "VAT", "method": "vat"}, {"label": "FAT", "method": "fat"}],
                  "epoch_curves": ["test"], "epoch_y": "accuracy"}, seeds=(0, 1))
    retrains = {k: {"run_id": f"r-{'fat' if 'fat' in k.source else 'vat'}-{k.seed}", "metrics": {}}
                for k in plan.retrains}
    assert {key for _, key in history_needed(plan, retrains)} == {"test_acc"}  # no train history fetched
    history = {(f"r-{m}-{sd}", "test_acc"): {1: 0.5 + 0.1 * sd + (0.2 if m == "fat" else 0), 2: 0.9}
               for m in ("vat", "fat") for sd in (0, 1)}
    fig = build_figure(Results(plan, {}, retrains, history=history), plan.figures[0])
    (panel,) = fig.panels
    assert (panel.title, panel.ylabel) == ("mnist5k (20): VAT vs FAT", "test accuracy (%)")
    assert [(s.label, s.x, s.y) for s in panel.series] == [
        ("VAT", (1.0, 2.0), pytest.approx((55.0, 90.0))), ("FAT", (1.0, 2.0), pytest.approx((75.0, 90.0)))]


def test_epoch_curves_only_for_kind_epochs(tmp_path):
    bad = {**SPEC, "figures": [{**SPEC["figures"][1], "epoch_y": "accuracy"}]}
    with pytest.raises(Exception, match="for kind epochs only"):
        _spec(tmp_path, bad)


def test_weight_histograms_from_known_weights(tmp_path):
    """xAT/xVAT Fig. 6: per layer, each row's share of weights per bin over shared bins (mean ± std over seeds)."""
    import torch

    from pipelines.render import weights_needed
    from pipelines.store import layer_weights

    plan = _plan(tmp_path, "w", MNIST, ["mle", "vat"],
                 {"name": "w", "title": "w", "kind": "weights", "settings": [{"dataset": "mnist"}],
                  "rows": [{"label": "MLE", "method": "mle"}, {"label": "VAT", "method": "vat"}]}, seeds=(0, 1))
    retrains = {k: {"run_id": f"r-{'vat' if 'vat' in k.source else 'mle'}-{k.seed}", "metrics": {}}
                for k in plan.retrains}
    assert sorted(weights_needed(plan, retrains)) == ["r-mle-0", "r-mle-1", "r-vat-0", "r-vat-1"]
    # MLE's 4 weights all at -1 (seed 0) or half at -1, half at 1 (seed 1); VAT's all at 1; a BN scale is left out
    vals = {"r-mle-0": [-1.0, -1, -1, -1], "r-mle-1": [-1.0, -1, 1, 1], "r-vat-0": [1.0, 1, 1, 1],
            "r-vat-1": [1.0, 1, 1, 1]}
    weights = {rid: layer_weights({"fc.weight": torch.tensor(v).reshape(2, 2), "bn.weight": torch.ones(2),
                                   "fc.bias": torch.zeros(2)}) for rid, v in vals.items()}
    assert list(weights["r-mle-0"]) == ["fc.weight"]
    fig = build_figure(Results(plan, {}, retrains, weights=weights), plan.figures[0])
    (panel,) = fig.panels
    assert panel.title == "mnist5k: fc.weight" and panel.xlabel == "weight value"
    mle, vat = panel.series
    assert len(mle.x) == 50 and mle.x[0] == pytest.approx(-1 + 1 / 50) and mle.x[-1] == pytest.approx(1 - 1 / 50)
    assert (mle.y[0], mle.y[-1], sum(mle.y)) == pytest.approx((75.0, 25.0, 100.0))  # (100 + 50) / 2, (0 + 50) / 2
    assert (mle.yerr[0], vat.y[-1], vat.yerr[-1]) == pytest.approx((35.355339, 100.0, 0.0))
    named = plan.figures[0].spec.model_copy(update={"layers": ["fc.bias"]})
    with pytest.raises(KeyError, match="no weights of layer 'fc.bias' of retrain run r-mle-0"):
        build_figure(Results(plan, {}, retrains, weights=weights), replace(plan.figures[0], spec=named))

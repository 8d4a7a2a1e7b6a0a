"""Pipeline planning (no Ray, no MLflow): profiles resolve into sweeps, retrains and evaluations; bad profiles fail
with every problem listed before anything starts; the paper profile prints its cost from the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.plan import make_plan, map_attack
from robust_core.attacks.key import AttackKey
from pipelines.spec import load_pipeline_spec
from robust_core.config import ConfigError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
CATALOG_TABLES = {"xvat_ssl", "xvat_supervised", "xvat_time", "ater_supervised", "vater_ssl", "fat_ssl",
                  "fat_sensitivity", "fat_time", "atld_whitebox", "atld_transfer", "atld_autoattack", "atld_adaptive",
                  "shaham_fixed_set"}
CATALOG_FIGURES = {"ater_noise", "ater_epochs", "fat_test_accuracy", "fat_epochs_to_reach", "atld_ablation",
                   "atld_budget", "shaham_fgsm", "shaham_epochs", "xvat_weights"}


def _profile(tmp_path, **over) -> Path:
    raw = {"include": str(PIPELINES / "catalog.yaml"), "name": "t", "tracking": {"uri": "sqlite:///x.db"},
           "datasets": {"mnist": {"name": "mnist5k", "display": "mnist5k"}}, **over}
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return p


@pytest.mark.parametrize("profile", ["paper", "laptop", "smoke"])
def test_every_profile_plans_every_catalogue_output(profile):
    plan = make_plan(load_pipeline_spec(PIPELINES / f"{profile}.yaml"))
    assert {t.spec.name for t in plan.tables} == CATALOG_TABLES
    assert {f.spec.name for f in plan.figures} == CATALOG_FIGURES
    for t in plan.tables:  # a column is named once, also where a profile maps the papers' label counts
        headers = [c.header for c in t.columns]
        assert len(set(headers)) == len(headers), (t.spec.name, headers)


def test_a_profile_that_maps_label_counts_names_the_papers_column():
    plan = make_plan(load_pipeline_spec(PIPELINES / "smoke.yaml"))  # labels: every count -> 20
    fat = next(t for t in plan.tables if t.spec.name == "fat_ssl")
    assert [c.header for c in fat.columns][:2] == ["MNIST (20)", "MNIST (20; paper 100)"]
    assert any("20 labels for the paper's 100" in f for f in fat.footnotes)


def test_paper_profile_keeps_the_papers_columns():
    plan = make_plan(load_pipeline_spec(PIPELINES / "paper.yaml"))
    wb = next(t for t in plan.tables if t.spec.name == "atld_whitebox")
    assert len(wb.columns) == 30 and wb.columns[2].header == "CIFAR-10 PGD-20"  # 24 of the paper's, 6 through IMT
    assert str(wb.columns[2].spec.attack) == "pgd-20@classifier"  # the paper's protocol: made on the classifier
    assert wb.footnotes == wb.spec.notes  # nothing dropped, nothing stood in: only the table's own notes
    fat = next(t for t in plan.tables if t.spec.name == "fat_ssl")
    assert [c.header for c in fat.columns] == ["MNIST (20)", "MNIST (100)", "SVHN (500)", "SVHN (1000)",
                                               "CIFAR-10 (1000)", "CIFAR-10 (4000)"]
    # the ATLD rows differ only at inference (IMT): one sweep and one model per seed, shared by all three
    # (robust tables: their sweeps select on val_robust_acc, named -robust_<attack>)
    atld = {s.rsplit("-", 1)[0] for s in plan.sources if "atld" in s}
    assert atld == {"paper-atld_minus-cifar10-all-robust_pgd", "paper-atld_minus-cifar100-all-robust_pgd",
                    "paper-atld_minus-svhn-all-robust_pgd"}
    raw = {s.rsplit("-", 1)[0]: r for s, r in plan.sweep_raw.items()}  # names end in a hash of the sweep's config
    # the method's model override reaches its sweep (ATLD's WideResNet), the profile's model the others
    assert raw["paper-pgd_at-cifar10-all-robust_pgd"]["base"]["model"]["name"] == "wrn"
    assert raw["paper-vat-cifar10-4000"]["base"]["model"]["name"] == "convlarge"
    assert raw["paper-vat-cifar10-4000"]["base"]["data"]["n_labeled"] == 4000
    # RO-L1: its norm is fixed (not searched) and its ε range is the L1 one
    ro = raw["paper-ro_l1-mnist-all-robust_fgsm"]
    assert ro["base"]["method"]["params"] == {"norm": "l1"}
    assert "method.params.norm" not in ro["search_space"]
    assert ro["search_space"]["method.params.eps"] == {"uniform": [2.0, 10.0]}


def test_laptop_drops_unavailable_columns_and_stands_in_for_tables_without_any():
    plan = make_plan(load_pipeline_spec(PIPELINES / "laptop.yaml"))
    t = {x.spec.name: x for x in plan.tables}
    ater = t["ater_supervised"]
    assert [c.header for c in ater.columns] == ["mnist5k"]
    assert any("CIFAR-10" in f and "not computed" in f for f in ater.footnotes)
    assert ater.columns[0].show_paper  # genuine MNIST column: the paper's MNIST value is shown
    wb = t["atld_whitebox"]
    assert [c.header for c in wb.columns][:3] == ["mnist5k clean", "mnist5k FGSM", "mnist5k PGD-20"]
    assert not any(c.show_paper for c in wb.columns)  # stand-in: no paper value beside it
    assert any("stands in for CIFAR-10" in f for f in wb.footnotes)
    assert all("reduced budget" in x.title for x in plan.tables + plan.figures)
    budget = next(f for f in plan.figures if f.spec.name == "atld_budget")
    assert budget.footnotes == ["mnist5k stands in for CIFAR-10 (not available in this profile).",
                                "CIFAR-100 panel not computed in this profile (data not available here)."]
    noise = next(f for f in plan.figures if f.spec.name == "ater_noise")  # MNIST panel kept, CIFAR-10 one dropped
    assert [s.header for s in noise.settings] == ["mnist5k"]
    assert noise.footnotes == ["CIFAR-10 panel not computed in this profile (data not available here)."]
    # stand-in columns and genuine MNIST columns with the same data share sweeps (no duplicate training)
    assert not any("cifar10" in s for s in plan.sources)
    assert t["fat_sensitivity"].seeds == [0]  # the profile's override of one table


def test_changing_a_budget_names_new_sweeps(tmp_path):
    a = make_plan(load_pipeline_spec(PIPELINES / "laptop.yaml"))
    b = make_plan(load_pipeline_spec(PIPELINES / "laptop.yaml", {"datasets": {"mnist": {"train": {"epochs": 7}}}}))
    assert len(a.sources) == len(b.sources) and not set(a.sources) & set(b.sources)
    again = make_plan(load_pipeline_spec(PIPELINES / "laptop.yaml"))
    assert set(again.sources) == set(a.sources)  # stable: a rerun finds the same sweeps


def test_attack_keys_follow_the_profiles_step_counts():
    def m(text, steps):
        return str(map_attack(AttackKey.parse(text), steps))

    assert m("pgd-40", (2, 3, 4)) == "pgd-3"
    assert m("pgd-20[both]", (5,)) == "pgd-5[both]"
    assert m("pgd-20@standard", (7, 8, 9)) == "pgd-7@standard"
    assert m("fgsm@baseline", (7, 8, 9)) == "fgsm@baseline"
    assert m("cw-100", (20, 40, 100)) == "cw-100" and m("cw-100", (5,)) == "cw-100"  # no third count: kept


def test_bad_profile_lists_every_problem_before_anything_starts(tmp_path):
    p = _profile(tmp_path, datasets={"mnist": {"name": "mnist5k"}, "imagenet": {"name": "nope"}},
                 methods={"vat": {"method": "vatt"}}, stand_in="svhn",
                 overrides={"no_such_table": {"seeds": [1]}, "fat_sensitivity": {"seeds": [0, 0]}})
    with pytest.raises(ConfigError) as e:
        make_plan(load_pipeline_spec(p))
    msg = str(e.value)
    for needle in ("overrides.no_such_table: no table or figure", "datasets.imagenet: not a paper dataset",
                   "unknown dataset 'nope'", "unknown method 'vatt'", "stand_in: 'svhn'",
                   "tables.fat_sensitivity: seeds must be distinct"):
        assert needle in msg, (needle, msg)


def test_bad_row_set_and_paper_values_are_caught(tmp_path):
    src = "xat-xvat-poster.txt semi-supervised table, lines 108-117, row VAT [6], column MNIST, number 1"
    p = _profile(tmp_path, overrides={"fat_sensitivity": {"rows": [
        {"label": "x", "method": "fat", "set": {"method.params.epz": 1.0}}]},
        "xvat_ssl": {"rows": [{"label": "VAT", "method": "vat", "paper": {
            "MNIST (10)": {"value": 98.6, "source": src},  # no such column
            "SVHN (1000)": {"value": 94.2},  # no source
            "CIFAR-10 (4000)": {"value": 85.1, "source": "the poster, somewhere"},  # not the checkable form
            "MNIST (100)": {}}}]}},  # neither a value nor a note saying why not
        figures=[{"name": "f", "title": "f", "kind": "bars", "attacks": ["fgsm"], "settings": [{"dataset": "mnist"}],
                  "rows": [{"label": "VAT", "method": "vat", "paper": {"MNIST": {"value": 1.0, "source": src}}}]}])
    with pytest.raises(ConfigError) as e:
        make_plan(load_pipeline_spec(p))
    msg = str(e.value)
    where = "tables.xvat_ssl: row 'VAT', paper"
    for needle in (f"{where} 'MNIST (10)': not a column label of this table; columns: MNIST (100), SVHN (1000)",
                   f"{where} 'SVHN (1000)': value 94.2 has no `source:`",
                   f"{where} 'CIFAR-10 (4000)': source 'the poster, somewhere' is not of the form",
                   f"{where} 'MNIST (100)': no value and no `note:`",
                   "figures.f: row 'VAT' has `paper:` values; published values belong to table rows"):
        assert needle in msg, (needle, msg)
    p = _profile(tmp_path, overrides={"fat_sensitivity": {"rows": [
        {"label": "x", "method": "fat", "set": {"method.params.epz": 1.0}}]}})
    with pytest.raises(ConfigError, match="epz"):
        make_plan(load_pipeline_spec(p))


def test_every_catalogue_table_carries_the_papers_published_values():
    """Each table of the five papers has published values, each with a checkable source (validated on load); the
    values themselves are verified against the papers' text by `python -m pipelines.check_published`."""
    spec = load_pipeline_spec(PIPELINES / "paper.yaml")
    per_table = {t.name: sum(pv.value is not None for r in t.rows for pv in r.paper.values()) for t in spec.tables}
    assert set(per_table) == CATALOG_TABLES and all(per_table.values()), per_table
    # every value the papers print for a catalogued row and column: 300, then 41 moved in from the pending file with
    # issue 11's columns (Shaham's fixed sets: 7; ATLD table III's FGSM and CW-20 columns: 34)
    assert sum(per_table.values()) == 341
    ater = next(t for t in spec.tables if t.name == "ater_supervised")
    vater = next(r for r in ater.rows if r.label == "VATER").paper
    assert (vater["MNIST"].value, vater["CIFAR-10"].value) == (0.55, 5.20)  # Tables 1 and 2, error in %


def test_only_unknown_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--only 'nope': no such table or figure; have: xvat_ssl"):
        make_plan(load_pipeline_spec(_profile(tmp_path)), only="nope")


def test_paper_dry_run_prints_cost_and_starts_nothing(tmp_path, capsys, monkeypatch):
    from robust_core.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["final", str(PIPELINES / "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[estimate]" in out and "GPU-hours" in out
    total = float(next(line for line in out.splitlines() if line.strip().startswith("total")).split()[1])
    assert total > 100  # 63 sweeps of the papers' schedules: hundreds of GPU-hours, not zero
    assert "nothing was started" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("profile", ["paper", "laptop"])
def test_standard_training_is_never_selected_on_robust_accuracy(profile):
    """Every standard-training model (the baselines and table III's Standard transfer source) is selected on clean
    validation accuracy: its robust accuracy is about 0 for every configuration, so a robust pick would be arbitrary
    (pipelines/catalog.yaml's `selection: clean`)."""
    plan = make_plan(load_pipeline_spec(PIPELINES / f"{profile}.yaml"))
    plain = {"mle", "standard", "shaham_base", "transfer_standard"}
    picked = {s.name: s.metric for s in plan.sources.values() if s.method_key in plain}
    assert picked and set(picked.values()) == {"val_acc"}, picked


def test_cost_counts_steps_on_the_bare_classifier_only_for_methods_that_transform_at_inference():
    """The white-box suite also attacks the bare classifier (``@classifier``, the paper's protocol); for a model
    without an inference-time transformation that is the plain step's computation, reused by ``run_suite``: the
    estimate does not count it twice."""
    from pipelines.cost import attack_passes, has_inference_transform

    plan = make_plan(load_pipeline_spec(PIPELINES / "laptop.yaml"))
    wb = [u for u in plan.evals.values() if u.suite == "whitebox"]
    assert wb
    assert has_inference_transform("atld") and not has_inference_transform("pgd_at")
    u = wb[0]
    with_cls, without = attack_passes(u, True), attack_passes(u, False)
    assert without < with_cls  # the @classifier steps are real work only with a transformation
    from robust_core.attacks.suites import CLASSIFIER, SUITES

    steps = SUITES.get(u.suite).steps(u.settings, ())
    extra = sum(1 + s.attack.passes for s in steps if s.key.source == CLASSIFIER)
    assert with_cls - without == extra

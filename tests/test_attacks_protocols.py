"""The papers' evaluation protocols on tiny data: Shaham et al.'s fixed adversarial sets (only correctly classified
test points, only examples that fool the baseline) and ATLD table III's black-box transfer (FGSM / PGD / CW from
separately trained source models, 18 columns in the paper profile)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.plan import make_plan
from pipelines.render import fixed_set_note
from pipelines.spec import load_pipeline_spec
from conftest import data_6x6, linear_6x6
from robust_core.attacks import gradient
from robust_core.attacks.base import predict
from robust_core.attacks.evaluate import code_files, evaluate
from robust_core.attacks.fixed_set import FixedSet
from robust_core.attacks.settings import EvalSettings
from robust_core.attacks.suites import SUITES
from robust_core.attacks.threat import norm_of

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def _linear(seed=0):
    return linear_6x6(seed)


def _data(n=200):
    return data_6x6(n)


# ------------------------------------------------------------------------------------------------- fixed sets
def test_fixed_set_holds_only_fooling_examples_of_correctly_classified_points():
    base, (x, y) = _linear(), _data()
    fs = FixedSet(eps=0.05, norm="linf+l2+l1", l2_eps=0.3, l1_eps=1.0)
    adv = fs.run(base, x, y, batch_size=64)
    info = adv.info["fixed_set"]
    correct = predict(base, x) == y
    assert 0 < info["correct"] == int(correct.sum()) < len(y)  # some test points are misclassified: left out
    assert set(info["by_norm"]) == {"linf", "l2", "l1"} and all(k > 0 for k in info["by_norm"].values())
    assert len(adv.x) == len(adv.y) == info["n"] == sum(info["by_norm"].values())
    assert (predict(base, adv.x) != adv.y).all()  # every example fools the net it was made on
    # each example is a one-step perturbation (within its norm's radius) of a correctly classified test point of
    # the same label: the nearest test point is one the baseline got right
    nearest = torch.cdist(adv.x.flatten(1), x.flatten(1)).argmin(1)
    assert correct[nearest].all() and torch.equal(y[nearest], adv.y)
    d = adv.x - x[nearest]
    start = 0
    for n, k in info["by_norm"].items():
        r = {"linf": fs.eps, "l2": fs.l2_eps, "l1": fs.l1_eps}[n]
        assert (norm_of(d[start:start + k], n) <= r + 1e-6).all(), n
        start += k
    assert info["test_points"] == len(set(nearest.tolist())) <= info["correct"]


def test_the_baseline_scores_zero_on_its_own_fixed_set():
    base, other, data = _linear(), _linear(seed=1), _data()
    s = EvalSettings(dataset="mnist5k", eps=0.05, l2_eps=0.3)
    own = {r.key: r for r in evaluate(base, data, "fixed_set", s, baseline=base).records}
    rec = own["fixed-set@baseline"]
    assert rec.accuracy == 0.0 and 0 < rec.n_examples == rec.options["fixed_set"]["n"]
    assert rec.options["fixed_set"]["correct"] == round(own["clean"].accuracy * len(data[1]))
    assert rec.norm == "linf+l2+l1" and rec.source == "baseline" and rec.steps == 1
    # another net sees the same set (same size), and is not fooled by all of it
    theirs = {r.key: r for r in evaluate(other, data, "fixed_set", s, baseline=base).records}["fixed-set@baseline"]
    assert theirs.n_examples == rec.n_examples and theirs.accuracy > 0
    assert theirs.options["fixed_set"] == rec.options["fixed_set"]


def test_fixed_set_norms_follow_the_dataset():
    """Shaham et al.: A_mnist with L1, L2 and L∞ (§5.1), A_cifar10 with L2 and L∞ (§5.2)."""
    def norms(dataset):
        st = SUITES.get("fixed_set").steps(EvalSettings(dataset=dataset), ())
        return next(s.attack for s in st if s.attack is not None).norms

    assert set(norms("mnist")) == set(norms("mnist5k")) == {"linf", "l2", "l1"}
    assert set(norms("cifar10")) == {"linf", "l2"}
    steps = SUITES.get("fixed_set").steps(EvalSettings(dataset="cifar10"), ())
    assert Path(gradient.__file__) in code_files(steps)  # its one-step attacks' code is part of its reuse key
    with pytest.raises(ValueError, match="distinct norms"):
        FixedSet(eps=0.1, norm="linf+linf")


def test_fixed_set_footnote_gives_size_and_composition():
    s = {"n": 7, "by_norm": {"linf": 3, "l2": 4}, "test_points": 5, "correct": 40, "of": 50}
    note = fixed_set_note([s, {**s, "n": 6, "by_norm": {"linf": 2, "l2": 4}}], "Baseline")
    assert note.startswith("fixed set made on the Baseline of the same seed")
    assert "n = 7 (L∞ 3 + L2 4; from 5 of the 40 test points the Baseline classifies correctly, of 50)" in note
    assert "n = 6 (L∞ 2 + L2 4;" in note


# ------------------------------------------------------------------------------------------------- transfer
def test_transfer_makes_fgsm_pgd_and_cw_on_each_source():
    target, plain, robust, data = _linear(), _linear(seed=1), _linear(seed=2), _data(60)
    s = EvalSettings(dataset="cifar10", steps=(3,))
    recs = {r.key: r for r in evaluate(target, data, "transfer", s, sources={"Standard": plain, "PGD-AT": robust})
            .records if r.suite == "transfer"}
    assert set(recs) == {"clean", "pgd-3"} | {f"{a}@{n}" for a in ("fgsm", "pgd-3", "cw-3")
                                              for n in ("Standard", "PGD-AT")}
    assert recs["cw-3@Standard"].options["loss"] == "cw" and recs["fgsm@PGD-AT"].steps == 1
    # a source that is the evaluated net itself gives exactly the white-box numbers (same attack, same seed)
    own = {r.key: r for r in evaluate(target, data, "transfer", s, sources={"self": target}).records}
    assert own["pgd-3@self"].accuracy == own["pgd-3"].accuracy


@pytest.fixture(scope="module")
def plans():
    return {p: make_plan(load_pipeline_spec(PIPELINES / f"{p}.yaml")) for p in ("paper", "smoke")}


def test_transfer_table_has_the_papers_18_columns_from_resnet18_sources(plans):
    plan = plans["paper"]
    t = next(x for x in plan.tables if x.spec.name == "atld_transfer")
    assert len(t.columns) == 18 and len({c.header for c in t.columns}) == 18
    assert [r.label for r in t.spec.rows] == ["PGD-AT", "TRADES", "ATLD", "ATLD+"]  # table III's rows
    assert {str(c.spec.attack) for c in t.columns} == {f"{a}@{n}" for a in ("fgsm", "pgd-20", "cw-20")
                                                       for n in ("Standard", "PGD-AT")}
    # every published value of the table is under one of its columns (none left in the pending file)
    labels = {c.spec.label for c in t.columns}
    assert all(set(r.paper) <= labels for r in t.spec.rows) and sum(len(r.paper) for r in t.spec.rows) == 4 * 18
    # the sources are extra retrains: a ResNet-18 trained plainly and one PGD-trained, never the evaluated net
    for (row, j), cell in t.cells.items():
        for i, u in enumerate(cell.evals):
            got = {}
            for name, rk, _ in u.sources:
                base = plan.sweep_raw[rk.source]["base"]
                got[name] = (base["method"]["name"], base["model"]["name"])
                assert rk.seed != u.target.seed and rk not in cell.retrains
            assert got == {"Standard": ("mle", "resnet18"), "PGD-AT": ("pgd_at", "resnet18")}, (row, j, i)


def test_smoke_transfer_headers_are_unique_and_name_the_source(plans):
    t = next(x for x in plans["smoke"].tables if x.spec.name == "atld_transfer")
    headers = [c.header for c in t.columns]
    assert len(headers) == len(set(headers)) == 18
    assert "CIFAR-10 PGD-2 from Standard" in headers and "SVHN CW-2 from PGD-AT" in headers


def test_shaham_columns_are_the_fixed_sets_with_the_papers_values(plans):
    t = next(x for x in plans["paper"].tables if x.spec.name == "shaham_fixed_set")
    cols = {c.spec.label: c for c in t.columns}
    assert str(cols["MNIST A_mnist"].spec.attack) == str(cols["CIFAR-10 A_cifar10"].spec.attack) \
        == "fixed-set@baseline"
    base = next(r for r in t.spec.rows if r.label == "Baseline")
    assert base.paper["MNIST A_mnist"].value == base.paper["CIFAR-10 A_cifar10"].value == 0

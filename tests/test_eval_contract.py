"""The evaluation contract: one attack-key type; suites as data, run by one runner; a reuse key derived from what a
suite runs (its attacks, their settings and the attack code), never from a hand-bumped version; evaluation settings
and inference overrides validated with the rest of a profile, every problem listed."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.plan import make_plan
from pipelines.render import find_record
from pipelines.spec import load_pipeline_spec
from conftest import data_6x6, linear_6x6
from robust_core.attacks.base import Attack, predict
from robust_core.attacks.evaluate import SuiteModels, code_files, evaluate, fingerprint, run_suite
from robust_core.attacks.gradient import FGSM
from robust_core.attacks.key import AttackKey
from robust_core.attacks.loop import ce_loss, perturb
from robust_core.attacks.settings import EvalSettings
from robust_core.attacks.suites import BASELINE, SUITES, Step, suite
from robust_core.attacks.threat import ThreatModel
from robust_core.cli import main
from robust_core.config import ConfigError
from robust_core.registry import ATTACKS



def test_attack_key_has_one_format_and_one_parse():
    for text in ("clean", "fgsm", "fgm-l2", "pgd-20", "cw-100", "aa", "l2grad", "pgd-20[both]", "fgsm@baseline",
                 "pgd-20[classifier]@standard"):
        key = AttackKey.parse(text)
        assert str(key) == text and AttackKey.parse(str(key)) == key
    assert AttackKey.parse("pgd-20[both]@pgd") == AttackKey("pgd", 20, "both", "pgd")
    assert AttackKey.parse("fgm-l2").steps is None  # "l2" is a word of the name, not a step count
    assert AttackKey.parse("pgd-20[both]").header == "PGD-20 [both]" and AttackKey("aa").header == "AA"
    for bad in ("pgd-", "20", "pgd[both", "pgd-20@", "pgd-20-eot10", "PGD 20"):
        with pytest.raises(ValueError, match="not an attack key"):
            AttackKey.parse(bad)
    with pytest.raises(ValueError, match="steps"):
        AttackKey("pgd", 0)


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made by a test are undone afterwards (the registries are shared by the whole session)."""
    ATTACKS.names(), SUITES.names()  # load the package's own entries first
    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))
    monkeypatch.setattr(SUITES, "_entries", dict(SUITES._entries))


def _linear(seed=0):
    return linear_6x6(seed)


def _data(n=40):
    return data_6x6(n)


def _spec(tmp_path, *, suite="whitebox", attack="pgd-20", **raw) -> Path:
    """A self-contained profile: one table with one attack column on mnist (run as mnist5k, PGD/CW steps 3)."""
    base = {"name": "t", "tracking": {"uri": "sqlite:///x.db"}, "sweep": {"mode": "defaults"},
            "datasets": {"mnist": {"name": "mnist5k", "eval": {"steps": [3]}}},
            "methods": {"mle": {"method": "mle"}},
            "tables": [{"name": "tab", "title": "T", "rows": [{"label": "MLE", "method": "mle"}],
                        "columns": [{"label": "MNIST attacked", "dataset": "mnist", "value": "attack",
                                     "suite": suite, "attack": attack}]}]}
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump({**base, **raw}, allow_unicode=True))
    return p


def test_a_new_white_box_attack_is_its_file_plus_a_suite_entry(scratch_registries, tmp_path):
    # 1. the attack's file: a registered attack (k signed-gradient steps of ε/k from x, no random start)
    @ATTACKS.register("toy")
    @dataclass(frozen=True)
    class Toy(Attack):
        """Toy iterative attack for this test. Threat model: L∞ ball of ``eps``. n_steps: 3."""

        n_steps: int = 3

        @property
        def steps(self) -> int:
            return self.n_steps

        def __call__(self, model, x, y, generator=None):
            return perturb(model, x, ce_loss(y), ThreatModel(self.norm, self.eps), self.n_steps,
                           self.eps / self.n_steps)

    # 2. the suite's entry: what it runs
    @suite("toy_suite")
    def toy_suite(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
        """Clean and the toy attack at the L∞ ε, with as many steps as the first of ``steps``."""
        return [Step(AttackKey("clean")), Step.of(Toy(eps=s.eps_for("linf"), n_steps=s.steps[0]))]

    # evaluated by the one runner: records keyed by the attack's own key, one-step status from its step count
    model, (x, y) = _linear(), _data()
    res = evaluate(model, (x, y), "toy_suite", EvalSettings(dataset="mnist5k", eps=0.2, steps=(3,)))
    recs = {r.key: r for r in res.records if r.suite == "toy_suite"}
    assert set(recs) == {"clean", "toy-3"}
    toy = recs["toy-3"]
    assert (toy.attack, toy.steps, toy.eps, toy.step_size) == ("toy", 3, 0.2, pytest.approx(0.2))
    assert toy.accuracy < recs["clean"].accuracy  # it does attack
    assert toy.options == {"n_steps": 3}
    # a pipeline column names it; the plan keys its evaluation from what it runs; the renderer finds its record
    plan = make_plan(load_pipeline_spec(_spec(tmp_path, suite="toy_suite", attack="toy-20")))
    cell = plan.tables[0].cells[("MLE", 0)]
    assert str(cell.attack) == "toy-3"  # the paper's 20 steps are the profile's first step count, 3
    assert plan.tables[0].columns[0].header == "mnist5k TOY-3"  # the dataset run here, the attack as run
    unit = cell.evals[0]
    assert unit.suite == "toy_suite" and unit.protocol == fingerprint("toy_suite", unit.settings, (), "mle")
    assert find_record([r.to_dict() for r in res.records], cell.attack, "toy_suite")["accuracy"] == toy.accuracy
    # and a column naming an attack the suite does not run is refused before anything starts
    with pytest.raises(ConfigError, match=r"suite toy_suite does not run toy-40 here \(it runs: clean, toy-3\)"):
        make_plan(load_pipeline_spec(_spec(tmp_path, suite="toy_suite", attack="toy-40")))


def test_an_attack_may_evaluate_part_of_the_set(scratch_registries):
    """What a fixed set made of the examples that fool its baseline needs: the attack's ``run`` says which examples
    form the set; the record counts only those."""

    @dataclass(frozen=True)
    class Fooling(FGSM):
        """FGSM, keeping only the examples that fool the model it is run on."""

        def run(self, model, x, y, batch_size=500, generator=None):
            adv = super().run(model, x, y, batch_size, generator)
            keep = predict(model, adv.x) != y
            return adv._replace(keep=keep, info={"kept": int(keep.sum())})

    @suite("fooling", needs=("baseline",))
    def fooling(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
        """The examples that fool the baseline."""
        return [Step.of(Fooling(eps=s.eps_for("linf")), source=BASELINE)]

    base, data, s = _linear(), _data(), EvalSettings(dataset="mnist5k", eps=0.01)
    own = run_suite("fooling", SuiteModels.of(base, baseline=base), data, s)[0]
    assert own.accuracy == 0.0 and 0 < own.n_examples == own.options["kept"] < len(data[1])  # 0 % by construction
    other = run_suite("fooling", SuiteModels.of(_linear(seed=1), baseline=base), data, s)[0]
    assert other.n_examples == own.n_examples and other.source == BASELINE and other.key == "fgsm@baseline"


def test_reuse_key_follows_the_attacks_and_their_settings_and_nothing_else():
    s = EvalSettings(dataset="cifar10", steps=(5, 10))
    wb, cu = fingerprint("whitebox", s), fingerprint("curves", s)
    assert fingerprint("whitebox", EvalSettings(dataset="cifar10", steps=(5, 10))) == wb  # stable
    # a setting a suite does not use leaves its key alone; one it uses changes it
    grid = s.model_copy(update={"eps_grid": (0.0, 0.01)})
    assert fingerprint("whitebox", grid) == wb and fingerprint("curves", grid) != cu
    for change in ({"steps": (5, 11)}, {"step_frac": 0.5}, {"restarts": 2}, {"eps": 0.01}, {"n_examples": 100},
                   {"seed": 1}):
        assert fingerprint("whitebox", s.model_copy(update=change)) != wb, change
    assert fingerprint("whitebox", s.model_copy(update={"model_name": "other", "eot_samples": 3})) == wb
    assert fingerprint("whitebox", EvalSettings(dataset="mnist", steps=(5, 10))) != wb  # MNIST's ε is not CIFAR's
    # transfer: its sources are part of what it runs
    assert fingerprint("transfer", s, ("plain",)) != fingerprint("transfer", s, ("plain", "pgd"))
    # the code that makes the numbers: the loop and the attacks the suite uses, not the others
    wb_files = {p.name for p in code_files(SUITES.get("whitebox").steps(s, ()))}
    assert {"loop.py", "threat.py", "gradient.py", "evaluate.py"} <= wb_files and "autoattack.py" not in wb_files
    assert "autoattack.py" in {p.name for p in code_files(SUITES.get("autoattack").steps(s, ()))}
    # adaptive objectives live in the method's file: part of the adaptive suite's key, not of white-box's
    assert fingerprint("adaptive", s, (), "atld") != fingerprint("adaptive", s, (), "mle")
    assert fingerprint("whitebox", s, (), "atld") == fingerprint("whitebox", s, (), "mle") == wb


ATTACK_FILE = '''
from dataclasses import dataclass
from robust_core.attacks.base import Attack
from robust_core.attacks.loop import ce_loss, perturb
from robust_core.attacks.threat import ThreatModel


@dataclass(frozen=True)
class Edited(Attack):
    """A one-step attack whose code this test edits."""

    def __call__(self, model, x, y, generator=None):
        return perturb(model, x, ce_loss(y), ThreatModel(self.norm, self.eps), 1, STEP * self.eps)
'''


def test_changing_an_attacks_code_changes_the_key(scratch_registries, tmp_path, monkeypatch):
    (tmp_path / "edited_attack.py").write_text(ATTACK_FILE + "\nSTEP = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("edited_attack")
    monkeypatch.setitem(sys.modules, "edited_attack", mod)

    @suite("edited")
    def edited(s: EvalSettings, sources: tuple[str, ...]) -> list[Step]:
        """Clean and the edited attack."""
        return [Step(AttackKey("clean")), Step(AttackKey("edited"), mod.Edited(eps=s.eps_for("linf")))]

    s = EvalSettings(dataset="mnist5k")
    before = fingerprint("edited", s)
    assert fingerprint("edited", s) == before
    (tmp_path / "edited_attack.py").write_text(ATTACK_FILE + "\nSTEP = 0.5\n")  # the attack now steps half as far
    importlib.reload(mod)
    assert fingerprint("edited", s) != before
    assert fingerprint("whitebox", s) == fingerprint("whitebox", EvalSettings(dataset="mnist5k"))


def test_dry_run_refuses_typos_in_eval_and_inference_settings_listing_every_one(tmp_path, capsys, monkeypatch):
    p = _spec(tmp_path, suite="whitebx",
              datasets={"mnist": {"name": "mnist5k", "eval": {"stepz": [3], "eps": 8,
                                                              "autoattack": {"version": "standart"}}}},
              methods={"mle": {"method": "mle"}, "atld": {"method": "atld", "inference": {"imtt": "none"}},
                       "atld_plus": {"method": "atld", "inference": {"imt": "imt_pluss"}}})
    monkeypatch.chdir(tmp_path)
    assert main(["final", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "6 problems" in err, err
    for needle in ("datasets.mnist.eval.stepz: unknown key", "datasets.mnist.eval.eps: 8.0 > 1: ε is in pixel units",
                   "datasets.mnist.eval.autoattack: AutoAttack.version='standart'",
                   "methods.atld: inference.imtt: unknown key", "methods.atld_plus: inference.imt: Input should be",
                   "tables.0.columns.0.suite: unknown suite 'whitebx'. Did you mean 'whitebox'?"):
        assert needle in err, (needle, err)
    # a malformed attack is refused with the rest; a well-formed one the suite does not run, by the plan
    assert main(["final", str(_spec(tmp_path, attack="pgd-2O")), "--dry-run"]) == 2
    assert "'pgd-2O' is not an attack key" in capsys.readouterr().err
    assert main(["final", str(_spec(tmp_path, attack="pgd-21")), "--dry-run"]) == 2
    runs = "clean, fgsm, pgd-3, cw-3, fgsm@classifier, pgd-3@classifier, cw-3@classifier"
    assert f"suite whitebox does not run pgd-21 here (it runs: {runs})" in capsys.readouterr().err

"""Selection for robust rows (issue 11): the robust validation metric ``val_robust_acc`` (``train.robust_val``) is
computed on the validation split only, at its epochs, without changing training; sweeps on it are validated before
Ray starts (ASHA's rungs must have it); the pipeline gives rows of robust tables a sweep that searches and selects on
it, and those tables read the robust-selected models while clean tables keep ``val_acc``."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from robust_core.config import ROBUST_VAL_METRIC, ConfigError, dump_yaml, load_run_config
from robust_core.registry import METHODS

RV = ["train.robust_val.steps=2", "train.robust_val.n_examples=40"]


# ------------------------------------------------------------------------------------------------ the run config
def test_robust_val_config_is_typed_and_lists_every_problem():
    cfg = load_run_config(overrides=["train.robust_val.eps=8/255", "train.robust_val.epochs=[4, 2, 2]"])
    rv = cfg.train.robust_val
    assert rv.eps == pytest.approx(8 / 255) and rv.epochs == (2, 4) and rv.attack == "pgd" and rv.steps == 10
    assert load_run_config().train.robust_val is None  # off unless asked for
    assert rv.attack_for("mnist5k").key.steps == 10 and rv.attack_for("mnist5k").eps == pytest.approx(8 / 255)
    assert load_run_config(overrides=["train.robust_val.norm=l2"]).train.robust_val.radius("mnist5k") == 2.0  # source
    # the evaluations' rules: an L∞ radius above 1 is refused (pixel units), an L2 one is not
    assert load_run_config(overrides=["train.robust_val.norm=l2", "train.robust_val.eps=3"]).train.robust_val.eps == 3
    with pytest.raises(ConfigError) as e:
        load_run_config(overrides=["train.robust_val.stpes=3", "train.robust_val.attack=pgdd",
                                   "train.robust_val.eps=8", "train.robust_val.epochs=[0]"])
    text = str(e.value)
    assert "4 problems" in text
    for key in ("robust_val.stpes: unknown key", "robust_val.attack", "robust_val.eps: 8.0 > 1",
                "robust_val.epochs.0"):
        assert key in text


def test_due_at_its_epochs_and_the_last():
    rv = load_run_config(overrides=["train.robust_val.epochs=[2, 4]"]).train.robust_val
    assert [e for e in range(1, 7) if rv.due(e, 6)] == [2, 4, 6]
    every = load_run_config(overrides=["train.robust_val.steps=1"]).train.robust_val
    assert [e for e in range(1, 4) if every.due(e, 3)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ fit
def test_fit_reports_it_from_the_validation_split_only(tiny_cfg, monkeypatch):
    from robust_core.attacks.evaluate import select
    from robust_core.attacks.gradient import PGD
    from robust_core.attacks.settings import EvalSettings
    from robust_core.data import prepare_data
    from robust_core.train import fit, robust_validation

    cfg = tiny_cfg(["train.epochs=3", "train.steps_per_epoch=2", "train.robust_val.epochs=[1]", *RV])
    data = prepare_data(cfg.data)
    seen: list[torch.Tensor] = []
    run = PGD.run

    def spy(self, model, x, y, batch_size=500, generator=None):
        seen.append(x.clone())
        return run(self, model, x, y, batch_size, generator)

    monkeypatch.setattr(PGD, "run", spy)
    res = fit(cfg, data=data)
    assert [ROBUST_VAL_METRIC in h for h in res.history] == [True, False, True]  # epoch 1 and the last
    assert all("val_robust_time_s" in h for h in res.history if ROBUST_VAL_METRIC in h)
    # the attacked examples are the seeded 40 of the validation split, every time (never test or training data)
    xv, _, _ = select(data.val, EvalSettings(n_examples=40, seed=0))
    assert len(seen) == 2 and all(torch.equal(x, xv) for x in seen)
    # the reported number is that attack's accuracy on those examples (same seeded starts), at the ε of the dataset
    again = robust_validation(res.inference_model, *data.val, cfg.train.robust_val, "mnist5k", 500)
    assert again[ROBUST_VAL_METRIC] == res.history[-1][ROBUST_VAL_METRIC]


def test_it_does_not_change_training(tiny_cfg):
    """Computing it (eval mode, forked RNG, its own generator) leaves the trained model (with batch norm, and a
    method with random starts) and the other metrics as they are without it."""
    from robust_core.train import fit

    base = ["train.epochs=2", "train.steps_per_epoch=2", "method.name=pgd_at"]
    plain, robust = fit(tiny_cfg(base)), fit(tiny_cfg(base + RV))
    drop = {"epoch_time_s", ROBUST_VAL_METRIC, "val_robust_time_s"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in plain.history] == \
           [{k: v for k, v in h.items() if k not in drop} for h in robust.history]
    a, b = plain.model.state_dict(), robust.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(ROBUST_VAL_METRIC in h for h in robust.history)


# ------------------------------------------------------------------------------------------------ sweeps
def _sweep_raw(**over):
    raw = {"name": "rs", "base": {"data": {"name": "mnist5k"}, "method": {"name": "at_fgsm"},
                                  "train": {"epochs": 6}},
           "search_space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "num_trials": 2, "max_concurrent": 1,
           "metric": ROBUST_VAL_METRIC, "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
           "tracking": {"uri": "sqlite:///x.db"}}
    for k, v in over.items():
        raw[k] = v
    return raw


def test_sweep_on_it_needs_robust_val_and_every_asha_rung(tmp_path):
    from sweeps.spec import build_sweep_config

    with pytest.raises(ConfigError) as e:  # not computed at all; and a typo elsewhere: both listed
        build_sweep_config(_sweep_raw(num_trails=3), cwd=tmp_path)
    assert "val_robust_acc is computed only when base.train.robust_val" in str(e.value)
    assert "num_trails" in str(e.value)
    train = {"epochs": 6, "robust_val": {"epochs": [2]}}
    with pytest.raises(ConfigError) as e:  # ASHA compares at 2 and 4: 4 is missing
        build_sweep_config(_sweep_raw(base={"method": {"name": "at_fgsm"}, "train": train}), cwd=tmp_path)
    assert "compares trials on val_robust_acc at epochs [2, 4]" in str(e.value) and "add [4]" in str(e.value)
    for rv, sched in (({"epochs": [2, 4]}, "asha"), ({}, "asha"), ({"epochs": []}, "none")):
        cfg = build_sweep_config(_sweep_raw(base={"method": {"name": "at_fgsm"},
                                                  "train": {"epochs": 6, "robust_val": rv}},
                                            scheduler={"type": sched, "grace_period": 2, "reduction_factor": 2}),
                                 cwd=tmp_path)
        assert cfg.metric == ROBUST_VAL_METRIC and cfg.mode == "max"
        assert cfg.sparse_metric == (rv.get("epochs") is not None)
    with pytest.raises(ConfigError, match="improves with mode=max"):
        build_sweep_config(_sweep_raw(mode="min", base={"train": {"robust_val": {}}}), cwd=tmp_path)


@pytest.mark.parametrize("grace,rf,max_t", [(1, 2, 3), (2, 2, 6), (10, 3, 100), (1, 1.5, 10), (2, 2, 4), (1, 3, 9),
                                            (3, 2, 50), (1, 4, 64), (5, 2, 5)])
def test_asha_rungs_are_rays(grace, rf, max_t):
    """The epochs the pipeline computes the metric at are exactly where Ray's ASHA bracket compares trials."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from sweeps.spec import asha_rungs

    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    ray_rungs = sorted({math.ceil(m) for m, _ in bracket._rungs if m < max_t})
    assert asha_rungs(grace, rf, max_t) == ray_rungs


# ------------------------------------------------------------------------------------------------ the pipeline
def _profile(tmp_path, uri="sqlite:///x.db", **over):
    raw = {"name": "rs", "tracking": {"uri": uri, "experiment": tmp_path.name}, "seeds": [0],
           "output_dir": str(tmp_path / "out"),
           "sweep": {"mode": "sweep", "num_trials": 2, "max_concurrent": 1,
                     "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}},
           "datasets": {"mnist": {"name": "mnist5k", "model": {"name": "mlp", "params": {"hidden": [16]}},
                                  "train": {"epochs": 6, "steps_per_epoch": 2}, "n_val": 100,
                                  "eval": {"eps": 0.2, "steps": [2]}, "robust_val": {"steps": 3, "n_examples": 50}}},
           "methods": {"at": {"method": "at_fgsm"}, "base": {"method": "mle", "selection": "clean"}},
           "tables": [
               {"name": "clean_tab", "title": "C", "rows": [{"label": "AT", "method": "at"}],
                "columns": [{"label": "MNIST", "dataset": "mnist"}]},
               {"name": "robust_tab", "title": "R",
                "rows": [{"label": "AT", "method": "at"}, {"label": "Base", "method": "base"},
                         {"label": "AT (clean)", "method": "at", "selection": "clean"}],
                "columns": [{"label": "MNIST PGD-20", "dataset": "mnist", "value": "attack", "suite": "whitebox",
                             "attack": "pgd-20"}]}]}
    raw.update(over)
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return p


def _sources_of(plan, table):
    t = next(t for t in plan.tables if t.spec.name == table)
    return {lab: ref.retrains[0].source for (lab, _), ref in t.cells.items()}


def test_plan_gives_robust_rows_their_own_sweep_on_the_robust_metric(tmp_path):
    from pipelines.plan import make_plan
    from pipelines.spec import load_pipeline_spec

    plan = make_plan(load_pipeline_spec(_profile(tmp_path)))
    clean, robust = _sources_of(plan, "clean_tab"), _sources_of(plan, "robust_tab")
    assert robust["AT"] != clean["AT"] and robust["AT (clean)"] == clean["AT"]  # shared row: one sweep per selection
    assert plan.sources[robust["Base"]].metric == "val_acc"  # the method's `selection: clean`
    r, c = plan.sweep_raw[robust["AT"]], plan.sweep_raw[clean["AT"]]
    assert (r["metric"], r["mode"], c["metric"]) == (ROBUST_VAL_METRIC, "max", "val_acc")
    assert "robust_val" not in c["base"]["train"]
    # the profile's robust_val, at the profile's evaluation ε (0.2, not MNIST's default 0.3), at ASHA's rungs
    assert r["base"]["train"]["robust_val"] == {"attack": "pgd", "norm": "linf", "steps": 3, "step_frac": 0.25,
                                                "n_examples": 50, "seed": 0, "eps": 0.2, "epochs": [2, 4]}
    assert plan.sources[robust["AT"]].metric == ROBUST_VAL_METRIC
    # a table whose threat is one-step attacks says so: its robust rows are selected on FGSM, in a sweep of their own
    raw = yaml.safe_load(_profile(tmp_path).read_text())
    raw["tables"].append({**raw["tables"][1], "name": "fgsm_tab", "robust_attack": "fgsm"})
    plan = make_plan(load_pipeline_spec(_profile(tmp_path, tables=raw["tables"])))
    fgsm, pgd = _sources_of(plan, "fgsm_tab")["AT"], _sources_of(plan, "robust_tab")["AT"]
    assert fgsm != pgd and plan.sweep_raw[fgsm]["base"]["train"]["robust_val"]["attack"] == "fgsm"
    assert plan.sweep_raw[pgd]["base"]["train"]["robust_val"]["attack"] == "pgd"
    # without sweeps nothing is selected: robust and clean rows share the method's defaults
    plan = make_plan(load_pipeline_spec(_profile(tmp_path, sweep={"mode": "defaults"})))
    assert _sources_of(plan, "robust_tab")["AT"] == _sources_of(plan, "clean_tab")["AT"]
    # an existing sweep named by a row of a robust table is read on the robust metric
    rows = [{"label": "X", "sweep": "ext"}]
    cols = [{"label": "MNIST PGD-20", "dataset": "mnist", "value": "attack", "suite": "whitebox", "attack": "pgd-20"}]
    plan = make_plan(load_pipeline_spec(_profile(tmp_path, tables=[{"name": "x", "title": "X", "rows": rows,
                                                                    "columns": cols}])))
    (src,) = plan.sources.values()
    assert (src.sweep, src.metric, src.explicit) == ("ext", ROBUST_VAL_METRIC, True)


def test_dry_run_refuses_bad_robust_val_settings(tmp_path, capsys):
    from robust_core.cli import main

    p = _profile(tmp_path)
    raw = yaml.safe_load(p.read_text())
    raw["datasets"]["mnist"]["robust_val"] = {"stpes": 3, "attack": "pgdd", "n_examples": 0}
    p.write_text(yaml.safe_dump(raw))
    assert main(["final", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(p) in err
    for key in ("datasets.mnist.robust_val.stpes", "datasets.mnist.robust_val.attack",
                "datasets.mnist.robust_val.n_examples"):
        assert key in err


def test_clean_and_robust_selection_pick_different_trials(tmp_path):
    """Two trials: A is more accurate, B more robust (on validation). The clean table gets A, the robust table B."""
    from pipelines.final import Runner
    from pipelines.plan import make_plan
    from pipelines.spec import load_pipeline_spec
    from robust_core import tracking
    from sweeps.spec import build_sweep_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_pipeline_spec(_profile(tmp_path, uri=uri))
    plan = make_plan(spec)
    exp_id = tracking.prepare_store(uri, spec.tracking.experiment)
    trials = {"A": (0.1, {"val_acc": 0.90, ROBUST_VAL_METRIC: 0.10}),
              "B": (0.3, {"val_acc": 0.80, ROBUST_VAL_METRIC: 0.50})}
    for name, raw in plan.sweep_raw.items():  # finished sweeps in MLflow: the runner reuses them and selects
        sc = build_sweep_config(raw, source=name)
        parent = tracking.start_run(uri, exp_id, name, {"robust_sweep.kind": "sweep", "robust_sweep.sweep": name,
                                                        "robust_sweep.sweep_fingerprint": sc.fingerprint()})
        for label, (eps, metrics) in trials.items():
            rid = tracking.start_run(uri, exp_id, label, {"robust_sweep.kind": "trial"}, parent_run_id=parent)
            cfg = sc.base.with_values({"method.params.eps": eps} if sc.base.method.name == "at_fgsm" else {})
            tracking.log_artifact_text(uri, rid, "config.yaml", dump_yaml(cfg))
            tracking.log_metrics(uri, rid, metrics, step=6)
            tracking.set_status(uri, rid, "FINISHED")
        tracking.set_status(uri, parent, "FINISHED")
    runner = Runner(plan, log=lambda _: None)
    runner.run_sources()
    clean, robust = _sources_of(plan, "clean_tab"), _sources_of(plan, "robust_tab")
    assert runner.selections[robust["AT"]].metric == ROBUST_VAL_METRIC
    assert runner.selections[robust["AT"]].value == pytest.approx(0.50)
    assert runner.selections[clean["AT"]].metric == "val_acc"
    eps = {(t, lab): runner.retrain_config(ref.retrains[0]).method.params["eps"]
           for t in ("clean_tab", "robust_tab") for (lab, _), ref in
           next(x for x in plan.tables if x.spec.name == t).cells.items() if lab != "Base"}
    assert eps == {("clean_tab", "AT"): 0.1, ("robust_tab", "AT"): 0.3, ("robust_tab", "AT (clean)"): 0.1}
    # the robust model's retrain keeps computing the metric (on validation), at the sweep's epochs
    assert runner.retrain_config(next(k for k in plan.retrains if k.source == robust["AT"])) \
        .train.robust_val.epochs == (2, 4)


def test_cost_estimate_counts_it():
    from pipelines.cost import robust_val_steps

    base = {"data": {"n_val": 500}, "train": {"epochs": 6, "batch_size": 64,
                                              "robust_val": {"attack": "pgd", "steps": 10, "n_examples": 200,
                                                             "epochs": [2, 4]}}}
    assert robust_val_steps(base) == 3 * 11 * 4  # epochs 2, 4, 6 × (10 steps + 1 scoring pass) × ⌈200/64⌉ batches
    base["train"]["robust_val"]["epochs"] = None
    assert robust_val_steps(base) == 6 * 11 * 4
    base["train"]["robust_val"].update(attack="fgsm", n_examples=None)
    assert robust_val_steps(base) == 6 * 2 * 8  # the whole validation split
    assert robust_val_steps({"train": {"epochs": 6}}) == 0


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_deployed_model_is_validated_without_side_effects(name, mnist5k_100):
    """For every registered method's deployed model (e.g. ATLD's test-time transformation): a number in [0, 1], the
    modes restored, no parameter gradients, the global RNG untouched."""
    from conftest import tiny_model
    from robust_core.config import MethodConfig
    from robust_core.methods import build_method
    from robust_core.train import robust_validation

    data = mnist5k_100
    model = tiny_model("mlp", data.info).train()
    method = build_method(MethodConfig(name=name), model=model, info=data.info, n_train=len(data.arrays.y_train))
    mods = [model, *method.modules().values()]
    for m in mods:
        m.train()
    rv = load_run_config(overrides=["train.robust_val.steps=2", "train.robust_val.n_examples=16"]).train.robust_val
    rng = torch.get_rng_state()
    out = robust_validation(method.inference_model(model), *data.val, rv, "mnist5k", 8)
    assert 0.0 <= out[ROBUST_VAL_METRIC] <= 1.0 and out["val_robust_time_s"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for mod in mods for m in mod.modules())
    assert all(p.grad is None for mod in mods for p in mod.parameters())

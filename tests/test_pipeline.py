"""Final-pipeline selection and config validation (no Ray): selection reads validation metrics only."""
from __future__ import annotations

import pytest
import yaml

from pipelines.final import seeded, select_best
from pipelines.spec import PublishedValue, load_pipeline_spec, value_problems
from robust_core import tracking
from robust_core.config import ConfigError, dump_yaml, load_run_config, read_yaml


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite store for the module (creating the schema is the slow part); each test has its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking.prepare_store(uri, "warmup")
    return uri


def _spec(tmp_path, db, **over):
    raw = {"name": "t", "output_dir": str(tmp_path / "out"),
           "tracking": {"uri": db, "experiment": tmp_path.name},
           "tables": [{"name": "tab", "title": "T", "rows": [{"label": "VAT", "sweep": "sw"}]}]}
    raw.update(over)
    p = tmp_path / "pipe.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_pipeline_spec(p)


def _fake_sweep(uri, exp_id, trials):
    """A sweep parent run with trial children: (lr, final val_acc, test_acc or None, stopped_early)."""
    parent = tracking.start_run(uri, exp_id, "sw", {"robust_sweep.kind": "sweep", "robust_sweep.sweep": "sw"})
    ids = []
    for lr, val, test, stopped in trials:
        rid = tracking.start_run(uri, exp_id, f"trial-{lr}", {"robust_sweep.kind": "trial",
                                 "robust_sweep.stopped_early": str(stopped).lower()}, parent_run_id=parent)
        cfg = load_run_config(overrides=[f"train.lr={lr}", "method.name=vat"])
        tracking.log_artifact_text(uri, rid, "config.yaml", dump_yaml(cfg))
        tracking.log_metrics(uri, rid, {"val_acc": val - 0.1}, step=1)
        tracking.log_metrics(uri, rid, {"val_acc": val, **({"test_acc": test} if test is not None else {})}, step=2)
        tracking.set_status(uri, rid, "FINISHED")
        ids.append(rid)
    return parent, ids


def test_selection_uses_validation_not_test(tmp_path, db):
    spec = _spec(tmp_path, db)
    exp_id = tracking.prepare_store(spec.tracking.uri, spec.tracking.experiment)
    # the trial with the best *test* accuracy has the worse validation accuracy: it must not be chosen
    parent, ids = _fake_sweep(spec.tracking.uri, exp_id, [(0.001, 0.80, 0.99, False), (0.002, 0.85, 0.50, False)])
    sel = select_best(spec, "sw")
    assert sel.trial_run_id == ids[1]
    assert sel.sweep_run_id == parent
    assert sel.value == pytest.approx(0.85)  # the last epoch's value, not the earlier 0.75
    assert sel.config.train.lr == 0.002 and sel.config.method.name == "vat"


def test_selection_prefers_full_budget_trials(tmp_path, db):
    spec = _spec(tmp_path, db)
    exp_id = tracking.prepare_store(spec.tracking.uri, spec.tracking.experiment)
    _, ids = _fake_sweep(spec.tracking.uri, exp_id, [(0.001, 0.90, None, True), (0.002, 0.85, None, False)])
    assert select_best(spec, "sw").trial_run_id == ids[1]


def test_missing_sweep_is_a_clear_error(tmp_path, db):
    spec = _spec(tmp_path, db)
    tracking.prepare_store(spec.tracking.uri, spec.tracking.experiment)
    with pytest.raises(LookupError, match="sweep 'sw' not found .* run its sweep first"):
        select_best(spec, "sw")


def test_spec_refuses_test_metric_selection_and_bad_keys(tmp_path, db):
    with pytest.raises(ConfigError) as e:
        _spec(tmp_path, db, selection_metric="test_acc", seedz=[1], seeds=[1, 1])
    msg = str(e.value)
    assert "3 problems" in msg
    assert "selection_metric" in msg and "validation metric" in msg
    assert "seedz: unknown key" in msg
    assert "seeds must be distinct" in msg


def test_seeded_changes_init_and_split_only():
    cfg = load_run_config(overrides=["method.name=vat", "train.lr=0.01"])
    s3 = seeded(cfg, 3, ["train.seed", "data.split_seed"])
    assert (s3.train.seed, s3.data.split_seed, s3.train.lr) == (3, 3, 0.01)
    assert s3.fingerprint() != cfg.fingerprint() and seeded(cfg, 3, ["train.seed", "data.split_seed"]) == s3


def test_repo_pipeline_configs_validate():
    from pathlib import Path

    from pipelines.plan import make_plan

    files = sorted(Path(__file__).resolve().parents[1].joinpath("pipelines").glob("*.yaml"))
    assert {f.name for f in files} >= {"demo.yaml", "smoke.yaml", "laptop.yaml", "paper.yaml", "catalog.yaml"}
    catalog = {t["name"] for t in read_yaml(files[0].parent / "catalog.yaml")["tables"]}
    for p in files:
        if p.name == "catalog.yaml":  # the shared catalogue, included by the profiles; not a pipeline itself
            continue
        if p.name == "published_pending.yaml":  # values waiting for their columns: TABLE: {ROW: {COLUMN: value}}
            pending = read_yaml(p)
            assert set(pending) <= catalog, set(pending) - catalog
            problems = [x for t, rows in pending.items() for r, cols in rows.items() for c, e in cols.items()
                        for x in value_problems(PublishedValue.model_validate(e), f"{t}/{r}/{c}")]
            assert not problems  # empty since issue 11 moved the last values into their columns
            continue
        plan = make_plan(load_pipeline_spec(p))  # includes building every sweep config the profile would run
        assert plan.tables, p

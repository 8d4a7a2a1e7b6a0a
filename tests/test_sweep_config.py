"""Sweep configs: every YAML in sweeps/ validates; every kind of mistake is reported, all at once, before Ray."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robust_core.config import ConfigError
from sweeps.spec import SPACES_DIR, build_sweep_config, check_space_file, load_sweep_config, parse_space

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "sweeps" / "configs").glob("*.yaml"))


def good(**over):
    raw = {
        "name": "t",
        "base": {"data": {"name": "mnist5k", "n_labeled": 100}, "model": {"name": "mlp"}, "method": {"name": "vat"},
                 "train": {"epochs": 6, "steps_per_epoch": 10}},
        "search_space": None, "num_trials": 4, "max_concurrent": 2, "metric": "val_acc", "mode": "max",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "tracking": {"uri": "sqlite:///runs/mlflow.db", "experiment": "x"}, "storage": "./runs/ray",
    }
    raw.update(over)
    return raw


def problems(raw, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_sweep_config(raw, cwd=tmp_path)
    return e.value.problems


def test_repo_configs_validate():
    assert {p.name for p in CONFIGS} >= {"demo_mle.yaml", "demo_vat.yaml"}
    for p in CONFIGS:
        cfg = load_sweep_config(p)
        assert cfg.max_t == cfg.base.train.epochs
        assert cfg.base.data.name == "mnist5k" and cfg.base.data.n_labeled == 100
        assert cfg.search_space  # null -> the method's space file
        # the dumped resolved config loads back to the same sweep
        assert build_sweep_config(yaml.safe_load(cfg.dump_yaml())).fingerprint() == cfg.fingerprint()


def test_space_files_validate_and_vat_space():
    for f in sorted(SPACES_DIR.glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        assert check_space_file(data, f) == []
        for entry in data["spaces"].values():
            errs: list[str] = []
            assert parse_space(entry, errs) and errs == []
    cfg = load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml")
    eps = cfg.search_space["method.params.eps"]
    assert (eps.kind, eps.args) == ("loguniform", (4.0, 8.0))  # the demo's own: the exact direction needs eps >= 4
    assert set(cfg.search_space) == {"method.params.eps"}
    mle = load_sweep_config(ROOT / "sweeps/configs/demo_mle.yaml")
    assert set(mle.search_space) == {"train.lr", "train.weight_decay"}


def test_relative_paths_resolved_against_cwd(tmp_path):
    cfg = build_sweep_config(good(optuna_storage="sqlite:///o.db"), cwd=tmp_path)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    assert cfg.optuna_storage == f"sqlite:///{tmp_path.resolve()}/o.db"
    assert cfg.storage == str(tmp_path.resolve() / "runs" / "ray")
    assert cfg.base.data.root == str(tmp_path.resolve() / "data")
    uri = build_sweep_config(good(storage="s3://bucket/ray", tracking={"uri": "http://h:5000"}), cwd=tmp_path)
    assert (uri.storage, uri.tracking.uri) == ("s3://bucket/ray", "http://h:5000")


def test_trial_config_merges_sampled_values(tmp_path):
    cfg = build_sweep_config(good(), cwd=tmp_path)
    rc = cfg.trial_config({"method.params.eps": 1.5, "train.lr": 0.01})
    assert rc.method.typed_params().eps == 1.5 and rc.train.lr == 0.01 and rc.train.epochs == 6


def test_all_problems_reported_at_once(tmp_path):
    raw = good(num_trails=4, metric="accuracy", resources={"cpu": 1, "gpu": -1}, storage=3.5)
    raw["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factr": 2}
    raw["search_space"] = {
        "method.params.epss": {"uniform": [0.1, 1.0]},        # path that does not exist
        "train.lr": {"loguniform": [0.0, 1.0]},               # loguniform lo <= 0
        "train.weight_decay": {"uniform": [1.0, 0.5]},        # lo >= hi
        "train.batch_size": {"gaussian": [1, 2]},             # unknown distribution
        "train.momentum": {"uniform": [0.5, 1.5]},            # upper corner invalid (momentum < 1)
        "train.optimizer": {"choice": ["adam", "lion"]},      # one choice invalid
        "model.params.hidden": {"choice": [[32], [64]]},      # non-scalar choice
    }
    ps = problems(raw, tmp_path)
    text = "\n".join(ps)
    for needle in ("num_trails: unknown key", "scheduler.reduction_factr",
                   "resources.gpu", "storage", "metric: 'accuracy'",
                   "search_space.method.params.epss: 'epss' is not a vat param; did you mean eps? valid: eps, ",
                   "search_space.train.lr: loguniform needs lo > 0",
                   "search_space.train.weight_decay: uniform needs lo < hi", "search_space.train.batch_size",
                   "search_space.train.momentum=1.5", "search_space.train.optimizer='lion'",
                   "search_space.model.params.hidden: choice values"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert "search_space.train.momentum=0.5" not in text  # the valid corner is not reported


def test_bad_base_reported_with_other_problems(tmp_path):
    raw = good(metric="accuracy", max_concurrent=0)
    raw["base"] = {**raw["base"], "train": {"epochz": 6, "lr": -1}}
    text = "\n".join(problems(raw, tmp_path))
    for needle in ("base.train.epochz: unknown key", "base.train.lr",
                   "metric: 'accuracy'", "max_concurrent"):
        assert needle in text, f"{needle!r} missing from:\n{text}"


def test_cross_field_checks(tmp_path):
    ps = problems(good(scheduler={"type": "asha", "grace_period": 7}, mode="min"), tmp_path)
    assert any(p.startswith("scheduler.grace_period: 7 epochs exceeds max_t = base.train.epochs = 6") for p in ps)
    assert any(p.startswith("mode: val_acc improves with mode=max") for p in ps)
    ps = problems(good(search_space={"train.epochs": {"int": [1, 5]}}), tmp_path)
    assert ps == ["search_space.train.epochs: the epoch budget cannot be searched (ASHA's max_t is "
                  "base.train.epochs)"]
    ps = problems(good(tracking={"uri": "runs/mlruns", "experiment": "x"}), tmp_path)
    assert any("tracking.uri" in p and "file store" in p for p in ps)
    ps = problems(good(name="bad name/with slash"), tmp_path)
    assert any(p.startswith("name:") for p in ps)


def test_combined_corners_checked(tmp_path):
    # each value valid alone; n_labeled=105 cannot be balanced over 10 classes -> corner error names the values
    ps = problems(good(search_space={"data.n_labeled": {"int": [100, 105]}}), tmp_path)
    assert any("search_space.data.n_labeled=105" in p and "multiple of 10" in p for p in ps)


def test_space_falls_back_to_default_entry(tmp_path):
    raw = good()
    raw["base"] = {**raw["base"], "data": {"name": "mnist5k"}}
    cfg = build_sweep_config(raw, cwd=tmp_path)
    assert "method.params.eps" in cfg.search_space
    ps = problems({**good(), "base": {"method": {"name": "nosuch"}}}, tmp_path)
    assert any(p.startswith("base.method.name") for p in ps)


def test_cli_invalid_config_exits_2_and_launches_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(good(num_trails=3)))
    r = subprocess.run([sys.executable, str(ROOT / "sweeps/run.py"), str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "num_trails: unknown key" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing created: no MLflow DB, no Ray storage
    r = subprocess.run([sys.executable, str(ROOT / "sweeps/run.py"), str(ROOT / "sweeps/configs/demo_vat.yaml"),
                        "--check", "--set", "num_trials=7"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["num_trials"] == 7
    assert not (tmp_path / "runs").exists()


def test_cluster_yaml_validates_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "sweeps/cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert any("pip install" in c for c in cfg["setup_commands"])
    assert cfg["head_node_type"] in cfg["available_node_types"] and len(cfg["available_node_types"]) >= 2
    bad = {**cfg, "available_node_types": {**cfg["available_node_types"],
                                           "head": {**cfg["available_node_types"]["head"], "node_confg": {}}}}
    with pytest.raises(Exception, match="node_confg"):
        validate_config(prepare_config(bad))


def test_fingerprint_ignores_where_results_go_but_not_what_is_searched(tmp_path):
    """A resumed sweep may talk to a restarted MLflow server (another port) or a moved storage path; changing the
    budget or the space is a different sweep and must be refused on resume."""
    cfg = load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml", cwd=tmp_path)
    moved = load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml", cwd=tmp_path, overrides=[
        "tracking.uri=http://127.0.0.1:5123", f"storage={tmp_path / 'elsewhere'}"])
    assert moved.fingerprint() == cfg.fingerprint()
    for over in ("num_trials=7", "base.train.lr=0.001", "seed=3"):
        assert load_sweep_config(ROOT / "sweeps/configs/demo_vat.yaml", [over], cwd=tmp_path).fingerprint() \
            != cfg.fingerprint(), over


def test_problems_that_need_no_valid_base_are_listed_with_base_errors(tmp_path):
    """An invalid base must not hide search-space path typos or a grace period beyond the budget."""
    from robust_core.config import ConfigError
    from sweeps.spec import build_sweep_config

    with pytest.raises(ConfigError) as e:
        build_sweep_config({
            "name": "bad", "num_trials": 2, "max_concurrent": 1,
            "base": {"data": {"name": "mnist5kk"}, "method": {"name": "vat"}, "train": {"epochs": 3, "lrr": 1}},
            "search_space": {"train.momentm": {"uniform": [0.1, 0.9]}, "method.params.epss": {"uniform": [1, 2]},
                             "trian.lr": {"uniform": [0.1, 0.2]}, "method.params.alpha": {"uniform": [0.5, 1]}},
            "scheduler": {"type": "asha", "grace_period": 5},
            "tracking": {"uri": "sqlite:///x.db", "experiment": "e"}}, cwd=tmp_path)
    msg = str(e.value)
    assert "base.data.name" in msg and "base.train.lrr" in msg
    assert "search_space.train.momentm: 'momentm' is not a train key; did you mean momentum? valid: " in msg
    assert "search_space.method.params.epss: 'epss' is not a vat param; did you mean eps? valid: " in msg
    assert "search_space.trian.lr: 'trian' is not a section" in msg
    assert "method.params.alpha" not in msg  # a valid path is not reported
    assert "scheduler.grace_period: 5 epochs exceeds max_t = base.train.epochs = 3" in msg
    assert "(6 problems)" in msg  # 2 base + 3 paths + grace


def test_a_bad_search_space_key_is_one_problem_with_the_valid_keys(tmp_path):
    """With a valid base too: one problem per bad key (not one per range end), "did you mean" and the valid ones."""
    from robust_core.config import ConfigError
    from robust_core.registry import METHODS
    from sweeps.spec import build_sweep_config

    with pytest.raises(ConfigError) as e:
        build_sweep_config({
            "name": "bad", "num_trials": 2, "max_concurrent": 1, "base": {"method": {"name": "vat"}},
            "search_space": {"method.params.epss": {"uniform": [1, 2]}, "train.lr": {"loguniform": [1e-4, 1e-2]}},
            "tracking": {"uri": "sqlite:///x.db", "experiment": "e"}}, cwd=tmp_path)
    assert e.value.problems == [f"search_space.method.params.epss: 'epss' is not a vat param; did you mean eps? "
                                f"valid: {', '.join(METHODS.get('vat').Params.model_fields)}"]

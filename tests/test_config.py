"""Config validation: each kind of bad input gives a clear error naming its key; every search-space file is valid."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from robust_core.config import ConfigError, RunConfig, load_run_config, parse_overrides
from robust_core.registry import DATASETS, METHODS

SPACES = sorted((Path(__file__).parents[1] / "sweeps" / "spaces").glob("*.yaml"))


def problems_of(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_run_config(overrides=overrides)
    assert str(e.value).count("\n  - ") == len(e.value.problems)  # the message lists every problem
    return e.value.problems


def test_defaults_build():
    cfg = load_run_config()
    assert isinstance(cfg, RunConfig) and cfg.method.name == "mle" and cfg.data.name == "mnist5k"


def test_unknown_top_level_key():
    (p,) = problems_of(["trian.lr=0.1"])
    assert p.startswith("trian: unknown key")


def test_misspelt_nested_key():
    (p,) = problems_of(["train.lrr=0.1"])
    assert p.startswith("train.lrr: unknown key")


@pytest.mark.parametrize("key,bad,good", [("method.name", "vatt", "vat"), ("model.name", "mpl", "mlp"),
                                          ("data.name", "mnist5", "mnist5k")])
def test_unknown_registry_name_suggests(key, bad, good):
    (p,) = problems_of([f"{key}={bad}"])
    assert p.startswith(f"{key}: unknown") and f"Did you mean '{good}'" in p and repr(bad) in p


def test_bad_method_param_value():
    (p,) = problems_of(["method.name=vat", "method.params.eps=-1"])
    assert p.startswith("method.params.eps:") and "greater than 0" in p and "-1" in p


def test_unknown_method_param():
    (p,) = problems_of(["method.name=vat", "method.params.epz=1"])
    assert p.startswith("method.params.epz: unknown key")


def test_unknown_model_param():
    (p,) = problems_of(["model.params.hiden=[3]"])
    assert p.startswith("model.params.hiden: unknown parameter") and "hidden" in p


def test_fraction_parsed_to_float():
    cfg = load_run_config(overrides=["method.name=vat", "method.params.eps=8/255"])
    eps = cfg.method.typed_params().eps
    assert isinstance(eps, float) and eps == 8 / 255
    from_yaml = load_run_config(overrides={"method": {"name": "vat", "params": {"xi": "1/1000"}}})
    assert from_yaml.method.typed_params().xi == pytest.approx(1e-3)


def test_n_labeled_not_multiple_of_classes():
    k = DATASETS.get("mnist5k").info.num_classes
    (p,) = problems_of(["data.n_labeled=105"])
    assert p.startswith("data.n_labeled:") and f"multiple of {k}" in p


@pytest.mark.parametrize("over, says", [
    (["train.schedule=step"], "needs the epochs at which to decay"),
    (["train.milestones=[3]"], "only used by schedule 'step'"),
    (["train.schedule=step", "train.epochs=10", "train.milestones=[6,4]"], "strictly increasing"),
    (["train.schedule=step", "train.epochs=10", "train.milestones=[4,10]"], "[1, 9]"),
    (["train.schedule=step", "train.decay_factor=1.5", "train.milestones=[4]"], "less than 1"),
])
def test_step_schedule_is_validated(over, says):
    probs = problems_of(over)
    assert any(p.startswith("train") and says in p for p in probs), probs
    ok = load_run_config(overrides=["train.schedule=step", "train.epochs=100", "train.milestones=[60,90]"]).train
    assert ok.milestones == (60, 90) and ok.decay_factor == 0.1


def test_several_problems_in_one_error():
    probs = problems_of(["trian.lr=1", "train.lrr=1", "method.name=vat", "method.params.eps=-1",
                         "model.name=mpl", "data.n_labeled=105", "train.epochs=0"])
    keys = sorted(p.split(":")[0] for p in probs)
    assert keys == sorted(["trian", "train.lrr", "method.params.eps", "model.name", "data.n_labeled",
                           "train.epochs"]), probs
    with pytest.raises(ConfigError, match=r"\(6 problems\)"):
        load_run_config(overrides=["trian.lr=1", "train.lrr=1", "method.name=vat", "method.params.eps=-1",
                                   "model.name=mpl", "data.n_labeled=105", "train.epochs=0"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match=r"override 'train.lr': expected key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError) as e:
        load_run_config(overrides=["train.lr", "train.epochs"])
    assert len(e.value.problems) == 2


def test_yaml_not_found_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_run_config(f)
    g = tmp_path / "bad.yaml"
    g.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(g)
    h = tmp_path / "ok.yaml"
    h.write_text("train:\n  lr: 0.01\nmethod:\n  name: vat\n  params: {eps: 8/255}\n")
    cfg = load_run_config(h, overrides=["train.lr=0.02"])
    assert cfg.train.lr == 0.02 and cfg.method.typed_params().eps == 8 / 255  # override wins over file


def test_config_is_frozen():
    cfg = load_run_config()
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_fingerprint_stable_and_sensitive():
    a = load_run_config(overrides=["method.name=vat", "method.params.eps=2.0"])
    b = load_run_config(overrides={"method": {"params": {"eps": 2.0}, "name": "vat"}})  # other order, same config
    assert a.fingerprint() == b.fingerprint() and re.fullmatch(r"[0-9a-f]{16}", a.fingerprint())
    changes = ["train.lr=0.0011", "train.seed=1", "data.split_seed=1", "method.params.eps=2.5",
               "model.params.hidden=[32]", "train.amp=bf16", "data.n_labeled=100", "train.schedule=cosine"]
    prints = {load_run_config(overrides=["method.name=vat", "method.params.eps=2.0", c]).fingerprint()
              for c in changes}
    assert len(prints) == len(changes) and a.fingerprint() not in prints


def test_every_space_file_is_found():
    assert SPACES, "no sweeps/spaces/*.yaml found"
    assert {"mle", "vat"} <= {p.stem for p in SPACES}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_file_valid_and_corners_build(path):
    from sweeps.spec import check_corners, check_space_file, parse_space
    from robust_core.config import read_yaml

    data = read_yaml(path)
    assert check_space_file(data, path) == []
    assert path.stem in METHODS, f"{path.name}: no registered method {path.stem!r}"
    for dataset, raw_space in data["spaces"].items():
        problems: list[str] = []
        space = parse_space(raw_space, problems)
        assert problems == [], problems
        ds = dataset if dataset in DATASETS else "mnist5k"
        k = DATASETS.get(ds).info.num_classes
        for n_labeled in (None, 10 * k):  # supervised and semi-supervised base configs
            base = load_run_config(overrides={"data": {"name": ds, "n_labeled": n_labeled},
                                              "method": {"name": path.stem}})
            assert check_corners(base, space) == [], f"{path.name} [{dataset}]"
            # each corner really gives that value in the typed params
            for key, d in space.items():
                if key.startswith("method.params."):
                    for v in d.corners():
                        cfg = load_run_config(overrides={"data": {"name": ds}, "method": {
                            "name": path.stem, "params": {key.split(".", 2)[2]: v}}})
                        got = getattr(cfg.method.typed_params(), key.split(".", 2)[2])
                        assert got == pytest.approx(v) if isinstance(v, float) else got == v


def test_check_corners_catches_a_bad_corner():
    """The corner check has teeth: a range reaching an invalid value is reported with its path."""
    from sweeps.spec import check_corners, parse_space

    problems: list[str] = []
    space = parse_space({"method.params.eps": {"uniform": [-1.0, 1.0]}}, problems)
    base = load_run_config(overrides=["method.name=vat"])
    out = check_corners(base, space)
    assert out and "method.params.eps" in out[0] and "-1.0" in out[0]

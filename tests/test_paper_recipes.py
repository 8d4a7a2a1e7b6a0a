"""The `paper` profile trains what the papers trained: ATLD's recipe of §V (atld.txt), Feature Scattering's, the
papers' networks (Shaham §5.1/§5.2, FAT table 4, ResNet-18), and the smaller catalogue fixes (xAT's supervised row is
inductive, ATER's convergence "AT" is the L2 one, ATER's CIFAR-10 cells retrain on train ∪ validation)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.plan import make_plan
from pipelines.spec import load_pipeline_spec
from robust_core.config import ConfigError, build_run_config
from sweeps.spec import build_sweep_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.fixture(scope="module")
def paper():
    plan = make_plan(load_pipeline_spec(PIPELINES / "paper.yaml"))
    # sweep name -> raw config, keyed without the fingerprint and the robust-selection suffix (``-robust_pgd``): a
    # row's recipe is the same whichever metric selects it
    return plan, {re.sub(r"-robust_\w+$", "", s.rsplit("-", 1)[0]): r for s, r in plan.sweep_raw.items()}


@pytest.mark.parametrize("ds", ["svhn", "cifar10", "cifar100"])
def test_atld_recipe_is_section_v(paper, ds):
    """§V: "initial learning rate ... 0.1 for all three datasets", "400 epochs ... transition epoch 60, 90 and decay
    rate 0.1", "ε = 8", "label smoothing rate as 0.5", WideResNet classifier; fixed, not searched."""
    _, raw = paper
    r = raw[f"paper-atld_minus-{ds}-all"]
    cfg = build_sweep_config(r)
    t = cfg.base.train
    assert (t.optimizer, t.lr, t.epochs, t.schedule, t.milestones, t.decay_factor) == \
        ("sgd", 0.1, 400, "step", (60, 90), 0.1)
    p = cfg.base.method.typed_params()
    assert (p.label_smoothing, p.manifold_weight, p.class_weight) == (0.5, 1.0, 1.0)
    assert (cfg.base.model.name, cfg.base.model.params) == ("wrn", {"depth": 28, "widen_factor": 10})
    assert (p.disc_depth, p.disc_widen, p.disc_input) == (28, 5, "logits")
    space = cfg.search_space
    assert "train.lr" not in space and "method.params.label_smoothing" not in space
    assert space["method.params.eps"].to_yaml() == {"choice": [8 / 255]}
    assert set(space) == {"method.params.eps", "method.params.disc_lr"}  # only what the paper leaves open


def test_feature_scattering_rows_and_recipe(paper):
    plan, raw = paper
    wb = next(t for t in plan.tables if t.spec.name == "atld_whitebox")
    assert [r.label for r in wb.spec.rows] == ["Standard", "PGD-AT", "TRADES", "FS", "ATLD", "ATLD+"]
    for name in ("atld_autoattack", "atld_budget", "atld_ablation"):
        out = next(o for o in [*plan.tables, *plan.figures] if o.spec.name == name)
        assert "FS" in [r.label for r in out.spec.rows], name
    tr = next(t for t in plan.tables if t.spec.name == "atld_transfer")
    assert "FS" not in [r.label for r in tr.spec.rows]  # the paper's table III has none
    cfg = build_sweep_config(raw["paper-feature_scatter-cifar10-all"])
    t = cfg.base.train
    assert (cfg.base.model.name, t.epochs, t.batch_size, t.schedule, t.milestones) == ("wrn", 200, 60, "step", (60, 90))
    assert cfg.base.method.typed_params().label_smoothing == 0.5


def test_papers_networks_in_the_paper_profile(paper):
    _, raw = paper
    model = {k: (r["base"]["model"]["name"], r["base"]["model"].get("params", {})) for k, r in raw.items()}
    assert model["paper-shaham_base-mnist-all"] == ("shaham_cnn", {})
    assert model["paper-ro_linf-mnist-all"] == ("shaham_cnn", {})
    assert model["paper-shaham_base-cifar10-all"] == ("vgg_bn_drop", {})
    assert model["paper-fat-svhn-1000"] == ("convsmall", {"width": 64})
    assert model["paper-fat-cifar10-4000"] == ("convsmall", {"width": 96})
    assert model["paper-vat_fat-cifar10-4000"] == ("convsmall", {"width": 96})  # VAT in FAT's table: FAT's nets
    assert model["paper-vat-cifar10-4000"][0] == "convlarge"  # VAT in the other papers' tables keeps Conv-Large


def test_xat_supervised_row_is_the_inductive_variant(paper):
    _, raw = paper
    r = raw["paper-xat-cifar10-all"]
    assert r["base"]["method"]["params"] == {"mode": "inductive"}
    assert "method.params.mode" not in (r["search_space"] or {})


def test_ater_convergence_at_is_the_l2_one(paper):
    plan, _ = paper
    fig = next(f for f in plan.figures if f.spec.name == "ater_epochs")
    at = next(r for r in fig.spec.rows if r.label == "AT")
    assert plan.spec.methods[at.method].method == "at_l2"


def test_ater_cifar10_cells_retrain_on_train_and_validation(paper):
    """Selection runs on a validation split (the sweep's base keeps n_val); the CIFAR-10 cells' retrains set
    data.n_val = 0, i.e. train on all 50,000 images as the paper does; MNIST's keep the split."""
    plan, raw = paper
    t = next(t for t in plan.tables if t.spec.name == "ater_supervised")
    by_ds = {c.setting.dataset: j for j, c in enumerate(t.columns)}
    for (label, j), cell in t.cells.items():
        sets = {k.set_json for k in cell.retrains}
        assert sets == ({'{"data.n_val": 0}'} if j == by_ds["cifar10"] else {"{}"}), (label, j)
        src = cell.retrains[0].source
        assert raw[src.rsplit("-", 1)[0]]["base"]["data"]["n_val"] >= 1  # the sweep selects on a validation split
    assert any("train ∪ validation" in n for n in t.footnotes)


def test_no_validation_split_trains_on_all_and_reports_no_val_metrics(tiny_cfg, mnist5k_arrays):
    from robust_core.data import PreparedData, make_splits
    from robust_core.registry import DATASETS
    from robust_core.train import fit

    cfg = tiny_cfg(["data.n_val=0", "data.n_labeled=null", "train.epochs=1", "train.steps_per_epoch=2"])
    info = DATASETS.get("mnist5k").info
    data = PreparedData(info, mnist5k_arrays, make_splits(mnist5k_arrays.y_train, 10, cfg.data.n_val, None, 0))
    assert len(data.splits.val) == 0 and len(data.splits.labeled) == len(mnist5k_arrays.y_train)
    h = fit(cfg, data=data).history[0]
    assert "val_acc" not in h and "val_loss" not in h and h["epoch"] == 1


def test_a_sweep_without_validation_split_is_refused():
    raw = {"name": "s", "base": build_run_config({"data": {"n_val": 0}}).to_dict(), "search_space":
           {"train.lr": {"loguniform": [1e-4, 1e-3]}}, "tracking": {"uri": "sqlite:///x.db"}}
    with pytest.raises(ConfigError, match="base.data.n_val: 0 leaves no validation split"):
        build_sweep_config(raw)

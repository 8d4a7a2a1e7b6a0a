"""VAT, VATER, FAT and ATER's search spaces and defaults against their papers (issue 14): the rows of one table
search the same ranges for what they share, the ranges hold the papers' values, λ's grid is ATER/VATER's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.plan import make_plan
from pipelines.spec import load_pipeline_spec
from robust_core.registry import METHODS
from sweeps.spec import default_space_raw

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
VAT_FAMILY = ("vat", "vater", "fat")
SHARED = ("method.params.eps", "train.lr")  # what VAT, VATER and FAT have in common (alpha is fixed to 1)
DATASETS = ("mnist5k", "mnist", "svhn", "cifar10", "cifar100")
LAM_GRID = [0.1, 0.2, 0.5, 0.7, 1.0]  # ater-vater.txt l. 180


def space(method: str, dataset: str) -> dict:
    problems: list[str] = []
    entry = default_space_raw(method, dataset, problems)
    assert not problems, problems
    return dict(entry)


@pytest.mark.parametrize("dataset", DATASETS)
def test_vat_vater_fat_search_the_same_eps_and_lr_and_not_alpha(dataset):
    spaces = {m: space(m, dataset) for m in VAT_FAMILY}
    for key in SHARED:
        assert spaces["vat"][key] == spaces["vater"][key] == spaces["fat"][key], (dataset, key)
    for m, s in spaces.items():
        assert "method.params.alpha" not in s, m  # weight 1: fat.txt eq. (2) and (8), ater-vater.txt Algorithm 2
        assert METHODS.get(m).Params().alpha == 1.0


@pytest.mark.parametrize("dataset", ["mnist5k", "mnist"])
def test_mnist_eps_range_holds_the_papers_values_and_the_defaults(dataset):
    lo, hi = space("vat", dataset)["method.params.eps"]["loguniform"]
    assert lo <= 1.0 and hi >= 10.0  # issue 14: MNIST [1, 10]
    for m in VAT_FAMILY:
        assert lo <= METHODS.get(m).Params().eps <= hi, m
    assert lo <= 1.5 <= hi  # FAT's optimum, fat.txt Table 2
    fat = space("fat", dataset)
    c_lo, c_hi = fat["method.params.bad_scale"]["loguniform"]
    a_lo, a_hi = fat["method.params.bad_alpha"]["loguniform"]
    assert c_lo <= 1.0 and c_hi >= 6.0 and a_lo <= 0.001 and a_hi >= 0.2  # Table 2's C and α values


def test_fat_lambda_is_not_searched():
    for ds in DATASETS:
        assert not {"method.params.lam_max", "method.params.lam_step"} & set(space("fat", ds)), ds


@pytest.mark.parametrize("method", ["ater", "vater"])
def test_energy_weight_default_and_grid_are_the_papers(method):
    """ater-vater.txt l. 180: λ = 0.1 on MNIST (0.5 on CIFAR-10 and SVHN), chosen from {0.1, 0.2, 0.5, 0.7, 1.0}."""
    assert METHODS.get(method).Params().lam == 0.1
    for ds in DATASETS:
        assert space(method, ds)["method.params.lam"] == {"choice": LAM_GRID}, ds
    assert 0.5 in LAM_GRID


@pytest.mark.parametrize("profile", ["laptop", "paper"])
def test_rows_of_one_table_search_the_same_shared_ranges(profile):
    """Within each table column, every VAT/VATER/FAT row's sweep has the same ε and lr distributions and base lr, so
    a difference between rows is the method's, not the search's."""
    plan = make_plan(load_pipeline_spec(PIPELINES / f"{profile}.yaml"))
    checked = 0
    for t in plan.tables:
        for j, col in enumerate(t.columns):
            seen: dict[str, str] = {}
            for (label, jj), ref in t.cells.items():
                src = plan.sources[ref.retrains[0].source]
                if jj != j or src.method_key is None or plan.spec.methods[src.method_key].method not in VAT_FAMILY:
                    continue
                raw = plan.sweep_raw[src.name]
                shared = {k: (raw["search_space"] or {}).get(k) for k in SHARED}
                shared["fixed"] = {k: raw["base"]["method"]["params"].get(k.rpartition(".")[2]) for k in SHARED}
                shared["base_lr"] = raw["base"]["train"].get("lr")
                seen[label] = json.dumps(shared, sort_keys=True)
            assert len(set(seen.values())) <= 1, (t.spec.name, col.header, seen)
            checked += len(seen) > 1
    assert checked >= 2  # fat_ssl, vater_ssl and ater_supervised have VAT-family rows side by side

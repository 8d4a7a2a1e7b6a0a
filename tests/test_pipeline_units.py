"""Pieces the final pipeline adds to the core: per-epoch test accuracy (retrains only), the attack-budget suite,
evaluation-time method overrides, and the tiny generated datasets of the smoke profile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_core.attacks.evaluate import SuiteModels, run_suite
from robust_core.attacks.settings import EvalSettings
from robust_core.data import load_arrays
from robust_core.data.tiny import tiny_datasets, write_tiny_dataset
from robust_core.registry import DATASETS
from robust_core.train import fit
from robust_core.trial import load_trained, run_trial


def test_test_accuracy_per_epoch_only_when_asked(tiny_cfg, mnist5k_100):
    cfg = tiny_cfg(["train.epochs=2", "train.steps_per_epoch=3"])
    plain = fit(cfg, data=mnist5k_100)
    assert all("test_acc" not in h for h in plain.history)  # what sweeps (selection) see: no test metric
    curves = fit(cfg, data=mnist5k_100, test_each_epoch=True)
    assert [h["epoch"] for h in curves.history] == [1, 2] and all(0 <= h["test_acc"] <= 1 for h in curves.history)
    # the extra test pass changes nothing about training
    assert [h["val_acc"] for h in curves.history] == [h["val_acc"] for h in plain.history]


def test_run_trial_records_mean_epoch_time_and_final_test(tiny_cfg, mnist5k_100, tmp_path):
    final, res = run_trial(tiny_cfg(["train.epochs=2", "train.steps_per_epoch=2"]), data=mnist5k_100,
                           out_dir=tmp_path, test_each_epoch=True)
    assert final["mean_epoch_time_s"] == pytest.approx(sum(h["epoch_time_s"] for h in res.history) / 2)
    assert final["test_acc"] == pytest.approx(res.history[-1]["test_acc"])


def test_budget_suite_attacks_pgd_and_cw_at_every_positive_radius(tiny_cfg, mnist5k_100, tmp_path):
    _, res = run_trial(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=20"]), data=mnist5k_100)
    x, y = res.data.test
    s = EvalSettings(dataset="mnist5k", n_examples=100, steps=(3,), eps_grid=(0.0, 0.1, 0.3))
    recs = run_suite("budget", SuiteModels.of(res.inference_model), (x, y), s)
    assert [(r.label, r.eps) for r in recs] == [("pgd-3", 0.1), ("cw-3", 0.1), ("pgd-3", 0.3), ("cw-3", 0.3)]
    assert all(r.suite == "budget" and r.subset for r in recs)
    pgd = [r.accuracy for r in recs if r.label == "pgd-3"]
    assert pgd[0] >= pgd[1]  # a larger ball never helps the model


def test_load_trained_applies_inference_only_overrides(tiny_cfg, mnist5k_100, tmp_path):
    cfg = tiny_cfg(["method.name=atld", "train.epochs=1", "train.steps_per_epoch=2", "data.n_labeled=null"])
    run_trial(cfg, data=mnist5k_100, out_dir=tmp_path)
    c0, clf, m0 = load_trained(tmp_path)
    c1, clf1, m1 = load_trained(tmp_path, inference={"imt": "none"})
    assert c0.method.params.get("imt", "imt_plus") != "none" and c1.method.params["imt"] == "none"
    assert m1.inference_model(clf1) is clf1 and m0.inference_model(clf) is not clf  # ATLD− is the bare classifier
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), clf1.state_dict().values()))


@pytest.mark.parametrize("name", tiny_datasets())
def test_tiny_datasets_load_through_the_real_loaders_and_are_learnable(name, tmp_path):
    write_tiny_dataset(name, tmp_path)
    a = load_arrays(name, tmp_path, download=False)
    assert (len(a.x_train), len(a.x_test)) == DATASETS.get(name).tiny.sizes
    # class templates + noise: nearest class mean of the training images classifies the test images well
    xtr, ytr = a.x_train.flatten(1), a.y_train
    k = int(ytr.max()) + 1
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(k)])
    pred = torch.cdist(a.x_test.flatten(1), means).argmin(1)
    assert (pred == a.y_test).float().mean() > 0.9


def test_tiny_data_never_overwrites_real_files(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_tiny_dataset("cifar10", tmp_path)
    write_tiny_dataset("mnist", tmp_path)
    before = (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes()
    write_tiny_dataset("mnist", tmp_path, seed=5)  # idempotent: the marker keeps the first copy
    assert (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes() == before
    assert np.frombuffer(before[8:], np.uint8).max() == 9


def test_autoattack_dynamic_flag_does_not_leak_to_the_next_model():
    """pyautoattack counts autograd calls in a global it never resets; a plain model attacked after a model that
    differentiates inside its forward (ATLD's IMT) must not be flagged as a dynamic defense."""
    from torch import nn

    from robust_core.attacks.autoattack import AutoAttack

    torch.manual_seed(0)
    x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()

    class Dynamic(nn.Module):
        def forward(self, z):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(plain(zz).sum(), zz)
            return plain(z - 0.01 * g.sign())

    aa = AutoAttack(eps=0.1, version="custom", attacks=("apgd-ce",), n_iter=2)
    assert any("dynamic defense" in f for f in aa.run(Dynamic(), x, y, 20)[1])
    assert not any("dynamic defense" in f for f in aa.run(plain, x, y, 20)[1])

"""Evaluation against the authors' AutoAttack, records/MLflow, and the CLI end to end on a briefly trained model."""
from __future__ import annotations

import argparse
import importlib.metadata
import json

import pytest
import torch
from torch import nn

from robust_core.attacks.autoattack import AutoAttack
from robust_core.attacks.base import eps_str
from robust_core.attacks.cli import add_arguments, run
from robust_core.attacks.gradient import PGD
from robust_core.attacks.evaluate import SuiteModels, run_suite, select
from robust_core.attacks.settings import EvalSettings
from robust_core.config import ConfigError


@pytest.fixture(scope="module")
def mnist():
    from robust_core.config import load_run_config
    from robust_core.data import prepare_data

    return prepare_data(load_run_config(None, ["data.name=mnist5k"]).data)


def _linear_exact_robust(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact L∞ robustness of a linear classifier on [0,1] inputs: for each wrong class j the worst margin
    min_δ (w_y−w_j)·(x+δ) + b_y−b_j over the box ∩ ball is separable per pixel (each pixel to the cheaper end)."""
    f = x.flatten(1).double()
    lo, hi = (-f).clamp(min=-eps), (1 - f).clamp(max=eps)
    W, b = lin.weight.double(), lin.bias.double()
    robust = torch.ones(len(y), dtype=torch.bool)
    for j in range(W.shape[0]):
        c = W[y] - W[j]  # (n, d)
        worst = (c * f).sum(1) + (b[y] - b[j]) + torch.minimum(c * lo, c * hi).sum(1)
        robust &= (y == j) | (worst > 0)
    return robust


@pytest.mark.slow  # the authors AutoAttack on real digits (< 60 s)
def test_autoattack_and_our_pgd_agree_on_a_linear_mnist_model(mnist):
    torch.manual_seed(0)
    xl, yl = mnist.labeled
    lin = nn.Linear(784, 10)
    model = nn.Sequential(nn.Flatten(), lin)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xl), yl).backward()
        opt.step()
    model.eval()
    x, y = mnist.test[0][:100], mnist.test[1][:100]
    eps = 0.05
    exact = _linear_exact_robust(lin, x, y, eps).float().mean().item()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert clean > 0.8 and 0.1 < exact < clean - 0.1  # an interesting regime: the attack has work to do
    aa = AutoAttack(eps=eps, version="custom", attacks=("apgd-ce", "apgd-t"), n_iter=20)
    xa, flags = aa.run(model, x, y)[:2]
    acc_aa = (model(xa).argmax(1) == y).float().mean().item()
    ours = PGD(eps=eps, n_steps=50, step_frac=0.1)(model, x, y, generator=torch.Generator().manual_seed(0))
    acc_ours = (model(ours).argmax(1) == y).float().mean().item()
    assert flags == []
    assert abs(acc_aa - acc_ours) <= 0.01 + 1e-9, (acc_aa, acc_ours, exact)
    assert acc_aa >= exact - 1e-9 and acc_ours >= exact - 1e-9  # no attack beats the exact answer
    assert acc_ours <= exact + 0.02  # and ours reaches it


def test_records_carry_the_full_protocol():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(30, 1, 4, 4), torch.randint(0, 3, (30,))
    s = EvalSettings(dataset="cifar10", n_examples=20, steps=(2,), seed=5, model_name="lin")
    recs = run_suite("whitebox", SuiteModels.of(model), (x, y), s)
    assert [r.label for r in recs] == ["clean", "fgsm", "pgd-2", "cw-2", "fgsm", "pgd-2", "cw-2"]
    assert [r.key for r in recs] == ["clean", "fgsm", "pgd-2", "cw-2", "fgsm@classifier", "pgd-2@classifier",
                                     "cw-2@classifier"]  # no wrapper: the paper's protocol is the plain number
    installed = importlib.metadata.version("robust-sweep")
    for r in recs[1:]:
        assert r.eps_str == "8/255" and r.eps == pytest.approx(8 / 255) and r.n_examples == 20 and r.subset
        assert r.seed == 5 and r.library == "robust_core" and r.norm == "linf" and r.model == "lin"
        assert r.library_version == installed != "0"  # the package's real version
    assert recs[2].step_size == pytest.approx(2 / 255) and recs[2].steps == 2 and recs[2].restarts == 1
    aa = run_suite("autoattack", SuiteModels.of(model), (x, y), EvalSettings(
        dataset="cifar10", autoattack={"version": "custom", "attacks": ("apgd-ce",), "n_iter": 3}))
    assert aa[1].library == "pyautoattack" and aa[1].library_version == "0.2.0" and not aa[1].subset
    assert aa[1].label == "aa-custom(apgd-ce)-it3" and aa[1].key == "aa"  # a column names it "aa"
    # a subset is a seeded, labelled choice
    xs1, _, sub = select((x, y), s)
    xs2, _, _ = select((x, y), s)
    assert sub and torch.equal(xs1, xs2)
    assert [eps_str(e) for e in (8 / 255, 0.3, 2.0, 10 / 255)] == ["8/255", "3/10", "2", "10/255"]
    with pytest.raises(ValueError, match="pixel units"):
        EvalSettings(eps=8)
    with pytest.raises(ValueError, match="epz"):
        EvalSettings(epz=0.1)  # unknown keys are refused
    with pytest.raises(ValueError, match="version='custom'"):
        AutoAttack(eps=0.1, attacks=("apgd-ce",))


def test_adaptive_suite_takes_pluggable_objectives_and_uses_eot_for_random_models():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()

    class Noisy(nn.Module):  # an inference-time wrapper that samples: EOT must kick in
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            return self.m((z + 0.01 * torch.randn_like(z)).clamp(0, 1))

    class Method:
        calls = 0

        def inference_model(self, m):
            return Noisy(m)

        def modules(self):
            return {}

        def adaptive_objectives(self, m):
            def disc(z, y):
                Method.calls += 1
                return -(z.flatten(1) ** 2).sum(1)  # stand-in for a discriminator loss

            return {"discriminator": disc}

    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    s = EvalSettings(dataset="cifar10", steps=(2,), eot_samples=3)
    models = SuiteModels.of(base, Method(), objectives={"both": lambda z, y: -z.sum((1, 2, 3))})
    recs = run_suite("adaptive", models, (x, y), s)
    assert [r.label for r in recs] == ["clean", "pgd-2[classifier]-eot3", "pgd-2[discriminator]-eot3",
                                       "pgd-2[both]-eot3"]
    assert [r.key for r in recs] == ["clean", "pgd-2[classifier]", "pgd-2[discriminator]", "pgd-2[both]"]
    assert [r.options.get("loss") for r in recs[1:]] == ["classifier", "discriminator", "both"]
    assert Method.calls == 2 * 3  # steps × EOT samples


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist):
    from robust_core.config import load_run_config
    from robust_core.trial import run_trial

    out = tmp_path_factory.mktemp("mle")
    cfg = load_run_config(None, ["data.name=mnist5k", "model.name=mlp", "model.params.hidden=[64]",
                                 "method.name=mle", "train.epochs=2", "train.steps_per_epoch=30"])
    run_trial(cfg, out_dir=out, data=mnist)
    return out


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_cli_runs_every_suite_on_a_saved_model(trained, capsys):
    argv = [str(trained), "--suite", "whitebox,curves,autoattack,fixed_set,transfer,adaptive", "--n-examples", "40",
            "--steps", "3,6", "--eps", "3/10", "--eps-grid", "0,0.1,0.3", "--l2-grid", "0,2", "--aa-attacks",
            "apgd-ce", "--aa-iters", "5", "--source", f"plain={trained}", "--baseline", str(trained)]
    assert run(_parse(argv)) == 0
    out = capsys.readouterr().out
    blob = json.loads((trained / "eval_whitebox+curves+autoattack+fixed_set+transfer+adaptive.json").read_text())
    suites = {r["suite"] for r in blob["records"]}
    assert suites == {"whitebox", "curves", "autoattack", "fixed_set", "transfer", "adaptive", "audit"}
    for r in blob["records"]:
        assert r["subset"] is True and r["seed"] == 0
        if r["key"] == "fixed-set@baseline":  # made of the 40: the one-step examples that fool the baseline (itself)
            fs = r["options"]["fixed_set"]
            assert 0 < r["n_examples"] == fs["n"] <= 3 * fs["correct"] and fs["of"] == 40 and r["accuracy"] == 0.0
        else:
            assert r["n_examples"] == 40
        assert {"attack", "norm", "eps", "eps_str", "steps", "step_size", "restarts", "library",
                "library_version", "accuracy"} <= set(r)
    wb = {r["label"]: r["accuracy"] for r in blob["records"] if r["suite"] == "whitebox"}
    assert wb["clean"] > 0.5 and wb["pgd-6"] <= wb["fgsm"] + 0.05  # a plain model at ε=0.3 breaks
    assert any(r["eps_str"] == "3/10" for r in blob["records"])
    assert "pgd-3" in out and "masking audit" in out and blob["meta"]["subset"] is True


def test_cli_reads_an_mlflow_run_and_logs_a_linked_evaluation_run(trained, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    model_run = c.create_run(exp).info.run_id
    c.log_artifact(model_run, str(trained / "model.pt"), "model")
    argv = [model_run, "--suite", "whitebox", "--tracking-uri", uri, "--n-examples", "20", "--steps", "2"]
    assert run(_parse(argv)) == 0
    runs = c.search_runs([exp], f"tags.robust_sweep.model_run_id = '{model_run}'")
    assert len(runs) == 1
    ev = runs[0]
    assert ev.data.tags["mlflow.parentRunId"] == model_run
    assert any(k.startswith("whitebox.pgd-2.linf.eps_3_10") for k in ev.data.metrics)
    assert ev.data.params["suite"] == "whitebox" and ev.data.params["env.pyautoattack"] == "0.2.0"
    with pytest.raises(FileNotFoundError, match="tracking-uri"):
        run(_parse(["no-such-run", "--suite", "whitebox"]))
    with pytest.raises(ConfigError, match="--source"):
        run(_parse([str(trained), "--suite", "transfer"]))
    with pytest.raises(ConfigError, match="unknown suite"):
        run(_parse([str(trained), "--suite", "whitebx"]))

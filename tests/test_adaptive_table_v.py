"""ATLD Table V's adaptive attacks on the contract (``../shared/papers/atld.txt`` §V-F): the suite's steps, 'D' is
the discriminator's BINARY head (the class head does not enter), (Cla+D) sums the two losses, 'Cla-step-k + D-step1'
is the classifier attack followed by exactly one step on D's loss, and everything is scored on the deployed model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_model
from robust_core.attacks.evaluate import SuiteModels, _bind, _Identity, run_suite
from robust_core.attacks.gradient import PGD, Then
from robust_core.attacks.loop import perturb
from robust_core.attacks.settings import EvalSettings
from robust_core.attacks.suites import SUITES
from robust_core.attacks.threat import ThreatModel
from robust_core.config import MethodConfig
from robust_core.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")
S = EvalSettings(dataset="cifar10", eps=0.1, steps=(3,), step_frac=0.25, eot_samples=2)


class TwoHeads:
    """A method with a linear binary head a(x) = w·x (what 'd' must use) and a class head (what it must not)."""

    def __init__(self, d: int) -> None:
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(d, generator=g, dtype=torch.float64)
        self.cls = nn.Linear(d, 3).double()
        self.cls_calls = 0

    def inference_model(self, m):
        return m

    def modules(self):
        return {}

    def discriminator_logit(self, model, x):
        return x.flatten(1) @ self.w

    def class_logits(self, x):  # never to be used by the adaptive suite
        self.cls_calls += 1
        return self.cls(x.flatten(1))


def _setup():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    method = TwoHeads(16)
    return clf, method, SuiteModels.of(clf, method), x, y


def _step(key: str):
    return next(st for st in SUITES.get("adaptive").steps(S, ()) if str(st.key) == key)


def test_the_suite_runs_every_column_of_table_v_and_ours_beside():
    keys = [str(st.key) for st in SUITES.get("adaptive").steps(S, ())]
    assert keys == ["clean", "fgsm[cla+d]", "pgd-3[cla+d]", "cw-3[cla+d]", "fgsm[cla-then-d]", "pgd-3[cla-then-d]",
                    "cw-3[cla-then-d]", "pgd-1[d]", "pgd-3[d]", "pgd-3[classifier]", "pgd-3[discriminator]",
                    "pgd-3[both]"]
    clf, method, models, x, y = _setup()
    recs = run_suite("adaptive", models, (x, y), S)
    assert [r.key for r in recs] == keys[:-2]  # this method has no 'discriminator' / 'both' objectives
    assert method.cls_calls == 0


def test_d_step1_is_one_signed_step_on_the_binary_heads_loss():
    clf, method, models, x, y = _setup()
    atk = _bind(_step("pgd-1[d]").attack, "d", models, 1)
    xa = atk(_Identity(), x, y)
    # −log D⁰ = softplus(−w·x) grows as w·x falls: one step of ε/4 against sign(w) (the input looks natural to D)
    torch.testing.assert_close(xa, (x - 0.025 * method.w.sign().view(1, 1, 4, 4)).clamp(0, 1))
    with torch.no_grad():
        method.cls.weight.add_(1.0)  # the class head does not enter
    torch.testing.assert_close(atk(_Identity(), x, y), xa)


def test_cla_plus_d_ascends_the_sum_of_the_classifiers_and_ds_losses():
    clf, method, models, x, y = _setup()
    atk = _bind(_step("fgsm[cla+d]").attack, "cla+d", models, 1)
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(clf(xr), y, reduction="none") + F.softplus(-(xr.flatten(1) @ method.w))
    (g,) = torch.autograd.grad(loss.sum(), xr)
    torch.testing.assert_close(atk(_Identity(), x, y), (x + 0.1 * g.sign()).clamp(0, 1))
    cw = _bind(_step("cw-3[cla+d]").attack, "cla+d", models, 1)  # CW: its margin is the 'Cla' term
    logits = clf(x)
    zy = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, 3).bool(), float("-inf")).amax(1)
    torch.testing.assert_close(cw.loss(y)(x), (other - zy).clamp(max=0.0) + F.softplus(-(x.flatten(1) @ method.w)))


def test_cla_then_d_is_the_classifier_attack_then_exactly_one_step_on_d():
    clf, method, models, x, y = _setup()
    step = _step("pgd-3[cla-then-d]")
    assert isinstance(step.attack, Then) and step.attack.second.n_steps == 1
    atk = _bind(step.attack, "cla-then-d", models, 1)
    out = atk(_Identity(), x, y, generator=torch.Generator().manual_seed(7))
    # by hand: PGD-3 on the bare classifier's CE (same random start), then one ε/4 step on softplus(−w·x)
    x1 = PGD(eps=0.1, n_steps=3, step_frac=0.25)(clf, x, y, generator=torch.Generator().manual_seed(7))
    x2 = (x1 - 0.025 * method.w.sign().view(1, 1, 4, 4)).clamp(x - 0.1, x + 0.1).clamp(0, 1)
    torch.testing.assert_close(out, x2)
    assert not torch.equal(out, x1)  # the D step happened, after the classifier's steps
    d_first = perturb(clf, (x - 0.025 * method.w.sign().view(1, 1, 4, 4)).clamp(0, 1),
                      lambda o: F.cross_entropy(o, y, reduction="none"), ThreatModel("linf", 0.1), 3, 0.025)
    assert not torch.allclose(out, d_first)


def test_atlds_d_term_reads_the_binary_head_not_the_class_head(mnist5k_info):
    torch.manual_seed(0)
    model = tiny_model("mlp", mnist5k_info, torch.float64, 0).eval()
    method = build_method(MethodConfig(name="atld", params={"disc_depth": 10, "disc_widen": 1}), model,
                          mnist5k_info)
    method.disc.to(torch.float64).eval()
    models = SuiteModels.of(model, method)
    x = torch.rand(4, *mnist5k_info.shape, dtype=torch.float64)
    y = torch.arange(4)
    atk = _bind(PGD(eps=0.1, n_steps=1, random_start=False), "d", models, 1)
    a = atk.loss(y)(x)
    torch.testing.assert_close(a, F.softplus(-method.discriminator_logit(model, x)))
    with torch.no_grad():
        method.disc.cls.weight.add_(1.0)
    torch.testing.assert_close(atk.loss(y)(x), a)  # the class head does not enter
    with torch.no_grad():
        method.disc.adv.weight.add_(1.0)
    assert not torch.allclose(atk.loss(y)(x), a)  # the binary head does

"""The ATLD paper's evaluation protocol for a model with an inference-time transformation (its tables I, II, IV:
attack the classifier alone, then apply the transformation) beside ours (attack end to end through it), on a
wrapper that undoes part of a classifier-made perturbation: the paper's protocol must see the wrapper's help, the
end-to-end attack must get through it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_core.attacks.evaluate import SuiteModels, run_suite
from robust_core.attacks.settings import EvalSettings

pytestmark = pytest.mark.usefixtures("one_thread")
S = EvalSettings(dataset="cifar10", eps=0.1, steps=(3,), step_frac=0.5)
D = 16


class Mirror(nn.Module):
    """T(z) = g + P(z − g): g = z rounded to the grid {k/4} (the clean inputs lie on it; ε < 1/8 recovers them),
    P flips the sign of the perturbation on the first half of the inputs. Differentiable (Jacobian P a.e.)."""

    def __init__(self, clf: nn.Module) -> None:
        super().__init__()
        self.clf = clf
        self.p = torch.ones(D, dtype=torch.float64)
        self.p[: D // 2] = -1

    def forward(self, z):
        g = torch.round(z.detach() * 4) / 4
        return self.clf(g + self.p.view(1, 1, 4, 4) * (z - g))


class WithMirror:
    def inference_model(self, m):
        return Mirror(m)

    def modules(self):
        return {}


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, z):
        self.rows += len(z)
        return self.net(z)


def _setup():
    """A linear 2-class model with margin ε/2 in L∞ at x = 0.5 (so PGD at ε breaks it), the flipped half of the
    inputs carrying 3/4 of ‖w‖₁ (so the mirrored classifier-made perturbation helps the true class)."""
    w = torch.ones(D, dtype=torch.float64)
    w[: D // 2] = 3.0
    w *= torch.tensor([1.0, -1.0]).repeat(D // 2).double()
    lin = nn.Linear(D, 2).double()
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = w
        lin.bias.zero_()
        lin.bias[1] = 0.5 * S.eps * w.abs().sum() - 0.5 * w.sum()
    clf = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.full((4, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.ones(4, dtype=torch.long)
    return clf, x, y


def test_paper_protocol_scores_the_wrapper_on_examples_made_on_the_classifier_and_ours_attacks_through_it():
    clf, x, y = _setup()
    recs = {r.key: r.accuracy for r in run_suite("whitebox", SuiteModels.of(clf, WithMirror()), (x, y), S)}
    assert recs["clean"] == 1.0
    for k in ("fgsm", "pgd-3", "cw-3"):
        assert recs[f"{k}@classifier"] == 1.0, k  # the paper's protocol: the wrapper undoes the attack
        assert recs[k] == 0.0, k  # end to end through the wrapper: broken
    recs = {r.key: r.accuracy for r in run_suite("whitebox", SuiteModels.of(clf), (x, y), S)}
    assert recs["pgd-3"] == recs["pgd-3@classifier"] == 0.0  # no wrapper: the bare classifier is broken


def test_without_a_wrapper_the_paper_protocol_is_the_plain_number_not_computed_twice():
    clf, x, y = _setup()
    c = Counting(clf)
    recs = run_suite("whitebox", SuiteModels.of(c), (x, y), S)
    by = {r.key: r for r in recs}
    for k in ("fgsm", "pgd-3", "cw-3"):
        assert by[f"{k}@classifier"].accuracy == by[k].accuracy and by[f"{k}@classifier"].source == "classifier"
    # clean + FGSM (1 step + scoring) + PGD-3 and CW-3 (3 steps + scoring each), each example once: no second run
    assert c.rows == len(x) * (1 + 2 + 4 + 4)

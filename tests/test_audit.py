"""The gradient-masking audit flags a model built to mask gradients and passes a plain one; each rule on records."""
from __future__ import annotations

import torch
from torch import nn

from robust_core.attacks.audit import audit
from robust_core.attacks.records import EvalRecord
from robust_core.attacks.evaluate import evaluate, format_table
from robust_core.attacks.key import AttackKey
from robust_core.attacks.settings import EvalSettings

SETTINGS = EvalSettings(dataset="synthetic", eps=0.1, steps=(5, 10), step_frac=0.5, batch_size=100)


class NearestMean(nn.Module):
    """A plain (differentiable) linear classifier: logits_k = 20·(x·μ_k − ½‖μ_k‖²)."""

    def __init__(self, mu: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu.flatten(1))

    def forward(self, x):
        f = x.flatten(1)
        return 20 * (f @ self.mu.T - 0.5 * (self.mu ** 2).sum(1))


class Quantise(nn.Module):
    """Hard rounding of the input to 1/2 steps: zero gradient almost everywhere (classic gradient masking)."""

    def forward(self, x):
        return torch.round(x * 2) / 2


def _data(n=80):
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(4, 1, 6, 6, generator=g) > 0.5).float() * 0.6 + 0.2
    y = torch.arange(n) % 4
    x = (mu[y] + 0.05 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    return mu, x, y


def test_plain_model_passes_and_masked_model_is_flagged():
    mu, x, y = _data()
    plain = NearestMean(mu)
    res = evaluate(plain, (x, y), "whitebox", SETTINGS)
    clean = [r for r in res.records if r.attack == "clean"][0].accuracy
    assert clean == 1.0
    assert res.audit == [], format_table(res.records, res.audit)

    masked = nn.Sequential(Quantise(), NearestMean(mu))
    res = evaluate(masked, (x, y), "whitebox", SETTINGS)
    text = " ".join(res.audit)
    assert "exactly zero input gradient" in text and "very large ε" in text
    pgd = [r for r in res.records if r.label.startswith("pgd") and r.suite == "whitebox"]
    assert all(r.accuracy > 0.9 for r in pgd)  # the attacks are fooled: that is why the audit must speak
    table = format_table(res.records, res.audit)
    assert "[1] masking audit:" in table and "zero-grad" in table


def _rec(label, eps, acc, suite="s", source=None, norm="linf", steps=1, attack=None, flags=None, n=1000):
    key = str(AttackKey.parse(label).with_(source=source))
    return EvalRecord(suite, key, "m", attack or label.split("-")[0], label, norm, eps, str(eps), steps, eps, 1, n, 0,
                      "robust_core", "0.1.0", acc, source=source, flags=list(flags or []))


def test_each_rule_on_records():
    base = [_rec("clean", 0.0, 0.9, attack="clean"), _rec("fgsm", 0.3, 0.5), _rec("pgd-20", 0.3, 0.3, steps=20),
            _rec("pgd-100", 0.3, 0.29, steps=100)]
    assert audit([*base]) == []
    # iterative weaker than one step
    assert any("weaker than one-step" in f for f in audit([*base, _rec("cw-20", 0.3, 0.7, steps=20)]))
    # one-step is what the attack's own step count says, whatever its name
    assert any("weaker than one-step toy" in f for f in audit([*base, _rec("toy", 0.3, 0.2, attack="toy")]))
    assert audit([*base, _rec("toy-30", 0.3, 0.28, attack="toy", steps=30)]) == []
    # more steps weaker than fewer
    assert any("fewer steps" in f for f in audit([*base[:3], _rec("pgd-100", 0.3, 0.45, steps=100)]))
    # attack above clean
    assert any("above clean" in f for f in audit([*base, _rec("fgsm", 0.1, 0.95)]))
    # accuracy rising with ε along a curve
    curve = [_rec("fgsm", e, a, suite="curves") for e, a in [(0.1, 0.6), (0.2, 0.4), (0.3, 0.55)]]
    flags = audit(curve)
    assert len(flags) == 1 and "rises with ε" in flags[0] and curve[2].flags == flags
    # transfer stronger than white-box
    assert any("transfer" in f for f in audit([*base, _rec("pgd-20", 0.3, 0.1, source="plain", steps=20)]))
    # AutoAttack's own warnings are carried into the audit
    aa = _rec("aa", 0.3, 0.28, attack="autoattack", steps=100,
              flags=["autoattack: it seems to be a randomized defense!"])
    assert any("randomized" in f for f in audit([*base, aa]))
    # AutoAttack far below PGD: the PGD numbers overestimate robustness
    aa_low = _rec("aa", 0.3, 0.2, attack="autoattack", steps=100)
    assert any("overestimate" in f for f in audit([*base, aa_low]))

"""Gradient-masking audit: sanity checks every robust-accuracy table must pass (Athalye et al. 2018; Carlini et al.,
"On evaluating adversarial robustness", 2019; Croce & Hein 2020).

Checks over records: clean ≥ FGSM ≥ iterative attacks of the same norm and ε; more steps not weaker; accuracy
non-increasing in ε; white-box not weaker than transfer or random noise; AutoAttack not far below PGD/CW;
AutoAttack's own warnings. Probes run with
every evaluation (``masking_probe``): a PGD at a very large ε (the whole [0,1] box for L∞) must reach ~0 accuracy,
and input gradients must not vanish. Each violation is a footnote string; ``audit`` also attaches it to the records
it concerns.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from robust_core.attacks.base import model_device, predict, run_batched
from robust_core.attacks.gradient import PGD
from robust_core.attacks.key import AttackKey
from robust_core.attacks.loop import cw_margin_loss
from robust_core.attacks.records import EvalRecord
from robust_core.attacks.settings import AuditSettings


def _slack(r: EvalRecord, s: AuditSettings) -> float:
    return s.tol + 1.0 / max(1, r.n_examples)


def _flag(flags: list[str], msg: str, *records: EvalRecord) -> None:
    if msg not in flags:
        flags.append(msg)
    for r in records:
        if msg not in r.flags:
            r.flags.append(msg)


def _fmt(r: EvalRecord) -> str:
    src = f" from {r.source}" if r.source else ""
    return f"{r.label}{src} {r.norm} ε={r.eps_str} ({r.accuracy:.2%})"


def _objective(r: EvalRecord) -> str | None:
    """The adaptive objective a record's attack ascended (None: the attack's own CE / CW loss)."""
    loss = r.options.get("loss")
    return loss if isinstance(loss, str) and loss not in ("ce", "cw") else None


def audit(records: list[EvalRecord], settings: AuditSettings = AuditSettings()) -> list[str]:
    """Run every check on ``records`` (any mix of suites/models); returns the footnotes and attaches them to records."""
    flags: list[str] = []
    by_model: dict[str, list[EvalRecord]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    for model, rs in by_model.items():
        clean = [r for r in rs if r.attack == "clean"]
        white = [r for r in rs if r.attack not in ("clean", "noise") and r.source is None and r.eps > 0
                 and not r.options.get("probe")]
        # 1. clean ≥ every attack
        for c in clean:
            for r in white + [r for r in rs if r.source is not None]:
                if r.accuracy > c.accuracy + _slack(r, settings) and r.n_examples == c.n_examples:
                    _flag(flags, f"{model}: {_fmt(r)} above clean accuracy ({c.accuracy:.2%})", r)
        # 2. one-step ≥ iterative; more steps not weaker (same norm, ε, loss)
        groups: dict[tuple, list[EvalRecord]] = defaultdict(list)
        for r in white:  # adaptive objectives (ATLD table V: [cla+d], [d], ...) are compared within their own
            groups[(r.norm, round(r.eps, 12), _objective(r))].append(r)
        for g in groups.values():
            one = [r for r in g if r.steps == 1]  # the attack's own step count says what is one-step
            it = [r for r in g if r.steps > 1]
            for a in one:
                for b in it:
                    if b.accuracy > a.accuracy + _slack(b, settings):
                        _flag(flags, f"{model}: iterative {_fmt(b)} weaker than one-step {_fmt(a)}", a, b)
            same_loss: dict[tuple, list[EvalRecord]] = defaultdict(list)
            for r in it:
                same_loss[(r.attack, str(r.options.get("loss")), r.options.get("eot_samples"))].append(r)
            for g2 in same_loss.values():
                g2 = sorted(g2, key=lambda r: r.steps)
                for a, b in zip(g2, g2[1:]):
                    if b.steps > a.steps and b.accuracy > a.accuracy + _slack(b, settings):
                        _flag(flags, f"{model}: {_fmt(b)} weaker than fewer steps {_fmt(a)}", a, b)
        # 3. non-increasing in ε (curves: same attack label, norm, source)
        curves: dict[tuple, list[EvalRecord]] = defaultdict(list)
        for r in rs:
            if r.attack != "clean" and not r.options.get("probe"):
                curves[(r.suite, r.label, r.norm, r.source)].append(r)
        for g in curves.values():
            g = sorted(g, key=lambda r: r.eps)
            for a, b in zip(g, g[1:]):
                if b.eps > a.eps and b.accuracy > a.accuracy + _slack(b, settings):
                    _flag(flags, f"{model}: accuracy rises with ε: {_fmt(a)} -> {_fmt(b)}", a, b)
        # 4. white-box not weaker than transfer / random noise at the same norm and ε
        for r in rs:
            if r.source is None and r.attack != "noise":
                continue
            peers = [w for w in white if w.norm == r.norm and abs(w.eps - r.eps) < 1e-12]
            if peers:
                best = min(peers, key=lambda w: w.accuracy)
                kind = "random noise" if r.attack == "noise" else "transfer"
                if r.accuracy < best.accuracy - _slack(r, settings):
                    _flag(flags, f"{model}: {kind} {_fmt(r)} stronger than the best white-box {_fmt(best)}",
                          r, best)
        # 5. AutoAttack well below our gradient attacks: they overestimate robustness (weak or masked gradients)
        for r in white:
            if r.attack != "autoattack":
                continue
            peers = [w for w in white if w.attack != "autoattack" and w.norm == r.norm and abs(w.eps - r.eps) < 1e-12
                     and w.n_examples == r.n_examples]
            if peers:
                best = min(peers, key=lambda w: w.accuracy)
                if r.accuracy < best.accuracy - _slack(r, settings):
                    _flag(flags, f"{model}: AutoAttack {_fmt(r)} below the best gradient attack {_fmt(best)}: "
                                 "PGD/CW numbers overestimate robustness", r, best)
        # 6. probes and AutoAttack's own checks
        for r in rs:
            if r.options.get("probe") == "large_eps" and r.accuracy > settings.large_eps_acc:
                _flag(flags, f"{model}: {_fmt(r)} at a very large ε: accuracy should be ≈0", r)
            if r.options.get("probe") == "zero_grad" and r.accuracy > settings.zero_grad_frac:
                _flag(flags, f"{model}: {r.accuracy:.0%} of examples have an exactly zero input gradient", r)
            for f in r.flags:
                if f.startswith("autoattack:"):
                    _flag(flags, f"{model}: {f}", r)
    return flags


def masking_probe(model, data, settings, name: str = "model", suite: str = "audit", subset: bool = False
                  ) -> list[EvalRecord]:
    """Records of the probes run with every evaluation: PGD-20 on the CW margin from x at ε=1 (L∞: the whole box), random ±ε sign
    noise at the evaluation ε, and the fraction of examples with an exactly-zero input gradient of the margin (stored in
    ``accuracy`` with ``options.probe='zero_grad'``)."""
    x, y = data
    n, seed = len(y), settings.seed
    recs = []
    # CW margin, not CE: a saturated softmax has (numerically) zero CE gradients even on a plain model
    probe = PGD(eps=1.0, norm="linf", n_steps=20, step_frac=0.1, random_start=False, loss="cw")
    xa = run_batched(probe, model, x, y, settings.batch_size)
    acc = (predict(model, xa, settings.batch_size) == y).float().mean().item()
    recs.append(EvalRecord.of(suite, name, probe.key, probe, acc, n, seed, subset, options={"probe": "large_eps"}))
    # random sign noise at the evaluation ε (a white-box attack weaker than noise = masking)
    eps = settings.eps_for("linf")
    g = torch.Generator(device=x.device).manual_seed(seed)
    noise = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) < 0.5).to(x.dtype) * 2 - 1
    xn = (x + eps * noise).clamp(0, 1)
    acc = (predict(model, xn, settings.batch_size) == y).float().mean().item()
    recs.append(EvalRecord.of(suite, name, AttackKey("noise"), None, acc, n, seed, subset, norm="linf", eps=eps,
                              options={"kind": "uniform sign noise ±eps"}))
    # exactly-zero input gradients of the CW margin (uncapped)
    dev = model_device(model)
    zero = 0
    for i in range(0, n, settings.batch_size):
        xb = x[i:i + settings.batch_size].to(dev).clone().requires_grad_(True)
        loss = cw_margin_loss(y[i:i + settings.batch_size].to(dev), kappa=float("inf"))(model(xb)).sum()
        gr = torch.autograd.grad(loss, xb, allow_unused=True)[0]
        zero += len(xb) if gr is None else (gr.flatten(1).abs().amax(1) == 0).sum().item()
    recs.append(EvalRecord.of(suite, name, AttackKey("zero-grad"), None, zero / max(1, n), n, seed, subset,
                              options={"probe": "zero_grad", "meaning": "fraction, not an accuracy"}))
    return recs

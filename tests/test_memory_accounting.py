"""The accounting behind benchmarks/step_cost.py and benchmarks/trial_memory.py: live bytes and pass counts."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _memory import LiveBytes, one_step_accounting  # noqa: E402

from robust_core.config import load_run_config  # noqa: E402
from robust_core.models import build_model  # noqa: E402


def test_live_bytes_counts_storages_once_and_frees_them():
    with LiveBytes() as m:
        a = torch.empty(1000)  # 4000 B -> one 4096 B block
        v = a.view(10, 100)  # same storage: not counted again
        assert m.live == 4096
        b = a + 1
        assert m.live == 8192
        del a, v
        assert m.live == 4096
        del b
    assert m.live == 0 and m.peak == 8192


def test_pass_counts_and_fake_accounting_match_a_real_step(mnist5k_info):
    cfg = load_run_config(overrides=["model.params.hidden=[32]", "method.name=pgd_at", "method.params.steps=3"])
    c = one_step_accounting(cfg, mnist5k_info, batch=8, unlabeled=0, n_train=100)
    assert (c["fwd"], c["jvp"], c["bwd"]) == (4 * 8, 0, 4 * 8)  # 3 attack steps + the training pass
    mle = one_step_accounting(load_run_config(overrides=["model.params.hidden=[32]"]), mnist5k_info, 8, 0, 100)
    assert (mle["fwd"], mle["bwd"], mle["units"]) == (8, 8, 24) and 0 < mle["flops"] < c["flops"]
    # parameters + gradients + two Adam moments of the 784-32-10 MLP (weights, BN, bias), in 512-byte blocks
    n_params = sum(p.numel() for p in build_model(cfg.model, mnist5k_info).parameters())
    assert 4 * 4 * n_params <= mle["state_bytes"] <= 4 * 4 * n_params + 64 * 1024
    assert mle["peak_bytes"] > mle["state_bytes"]
    real = one_step_accounting(cfg, mnist5k_info, batch=8, unlabeled=0, n_train=100, fake=False)
    assert {k: real[k] for k in c} == c  # fake tensors account exactly what a real step allocates


def test_step_cost_reads_shapes_and_training_set_sizes_from_the_profiles():
    from step_cost import n_train, shapes_from_profiles

    shapes = {s.label: s for s in shapes_from_profiles(["laptop"])}
    s = shapes["laptop-mlp"]
    assert (s.dataset, s.batch, s.unlabeled) == ("mnist5k", 64, 128) and "mle" in s.rows and "vat ssl" in s.rows
    assert n_train(s) == 4000  # mnist5k's training set: per-example method parameters at their real size


def test_vat_exact_direction_gets_its_passes_where_the_memory_accounting_cannot_run(mnist5k_info):
    """Forward-mode AD (VAT's exact direction) fails under a dispatch mode in torch 2.14: step_cost falls back to
    counting passes with hooks only — the direction: one JVP forward (which also gives the clean logits) and one
    backward; the training: forwards at x and x + r_adv, and the backward through both — so the VAT family keeps
    its floor column."""
    from _memory import accounting_or_empty

    cfg = load_run_config(overrides=["model.params.hidden=[32]", "method.name=vat"])
    c = accounting_or_empty(cfg, mnist5k_info, batch=8, unlabeled=0, n_train=100)
    assert (c["fwd"], c["jvp"], c["bwd"]) == (8 + 8, 8, 8 + 16) and "peak_bytes" not in c
    assert c["units"] == 16 + 2 * 8 + 2 * 24

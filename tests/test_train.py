"""The ``fit`` loop: determinism, exact resume from checkpoints, schedules, AMP and non-finite guards, learning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robust_core.errors import TrainingDiverged
from robust_core.methods import LossOutput
from robust_core.registry import METHODS
from robust_core.reporting import CheckpointDir, load_state
from robust_core.train import fit, lr_factor


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tree(a, b, path="state"):
    """Recursive exact equality of nested dicts/lists/tensors (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def without_times(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


def test_same_seed_identical_parameters(tiny_cfg, mnist5k_100):
    cfg = tiny_cfg(["train.epochs=1", "train.steps_per_epoch=4"])
    a = fit(cfg, data=mnist5k_100)
    b = fit(cfg, data=mnist5k_100)
    assert_same_tree(params_of(a.model), params_of(b.model))
    c = fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=4", "train.seed=1"]), data=mnist5k_100)
    assert not torch.equal(params_of(a.model)["head.weight"], params_of(c.model)["head.weight"])


class Interrupted(Exception):
    pass


class CrashAfter(CheckpointDir):
    """Checkpoints like CheckpointDir, then dies after ``n`` epochs (a preempted trial)."""

    def __init__(self, path, n):
        super().__init__(path)
        self.n = n

    def report(self, metrics, state):
        super().report(metrics, state)
        if metrics["epoch"] == self.n:
            raise Interrupted


@pytest.fixture
def one_thread():
    """Small ops (ATLD's discriminator on 1×1 maps) run ~8x slower when two intra-op threads fight other processes
    for the 2 shared cores; one thread, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


RESUME_EXTRA = {"atld": ["method.params.disc_depth=10", "method.params.disc_widen=1", "method.params.eps=0.1",
                         "train.schedule=step", "train.milestones=[1,3]"]}  # + an adversary with its own optimiser


@pytest.mark.parametrize("method", ["mle", "vat", "atld"])
def test_resume_equals_uninterrupted(method, tiny_cfg, mnist5k_100, tmp_path, one_thread):
    cfg = tiny_cfg([f"method.name={method}", "train.epochs=4", "train.steps_per_epoch=2", *RESUME_EXTRA.get(method, [])])
    straight = fit(cfg, reporter=CheckpointDir(tmp_path / "straight"), data=mnist5k_100)
    with pytest.raises(Interrupted):
        fit(cfg, reporter=CrashAfter(tmp_path / "resumed", 2), data=mnist5k_100)
    assert load_state(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    resumed = fit(cfg, reporter=CheckpointDir(tmp_path / "resumed"), data=mnist5k_100)  # a new fit call
    assert resumed.resumed_from_epoch == 2 and straight.resumed_from_epoch == 0
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert_same_tree(params_of(straight.model), params_of(resumed.model))
    assert without_times(straight.history) == without_times(resumed.history)
    s, r = load_state(tmp_path / "straight" / "checkpoint.pt"), load_state(tmp_path / "resumed" / "checkpoint.pt")
    for key in ("model", "aux", "optimizer", "scheduler", "adversary", "sampler_labeled", "sampler_unlabeled",
                "generator", "torch_rng", "epoch", "fingerprint"):
        assert_same_tree(s[key], r[key], key)
    assert (r["adversary"] is not None) == (method == "atld")  # only a method with adversaries has their state
    assert without_times(s["history"]) == without_times(r["history"])
    if method == "vat":
        assert r["sampler_unlabeled"] is not None  # the semi-supervised path was exercised


def test_refuses_checkpoint_of_another_config(tiny_cfg, mnist5k_100, tmp_path):
    cfg = tiny_cfg(["train.epochs=2", "train.steps_per_epoch=2"])
    with pytest.raises(Interrupted):
        fit(cfg, reporter=CrashAfter(tmp_path, 1), data=mnist5k_100)
    other = tiny_cfg(["train.epochs=2", "train.steps_per_epoch=2", "train.lr=0.002"])
    with pytest.raises(RuntimeError, match="different config; refusing to resume"):
        fit(other, reporter=CheckpointDir(tmp_path), data=mnist5k_100)


def test_lr_factor_schedules():
    total = 100
    lin = lr_factor("linear", 0.5, total)
    assert [lin(s) for s in (0, 49, 50)] == [1.0, 1.0, 1.0]
    assert lin(75) == pytest.approx(0.5) and lin(total) == 0.0 and lin(total - 1) > 0
    assert all(lin(s) >= lin(s + 1) for s in range(total))
    cos = lr_factor("cosine", 0.0, total)
    assert cos(0) == 1.0 and cos(total) == pytest.approx(0.0, abs=1e-12) and cos(50) == pytest.approx(0.5)
    const = lr_factor("constant", 0.5, total)
    assert all(const(s) == 1.0 for s in range(total + 1))
    step = lr_factor("step", 0.5, total, milestones=(60, 90), decay_factor=0.1)  # decay_start plays no part
    assert [step(s) for s in (0, 59, 60, 89, 90, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_schedule_in_fit_decays_at_epoch_milestones(tiny_cfg, mnist5k_100):
    """The ATLD/Feature Scattering recipe: lr × factor after each milestone epoch (authors: epochs 60 and 90)."""
    cfg = tiny_cfg(["train.schedule=step", "train.milestones=[2,3]", "train.decay_factor=0.5", "train.epochs=4",
                    "train.steps_per_epoch=3", "train.lr=0.01"])
    lrs = [h["lr"] for h in fit(cfg, data=mnist5k_100).history]  # the lr the next step would use
    assert lrs == pytest.approx([0.01, 0.005, 0.0025, 0.0025])


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_lr_schedule_in_fit(schedule, tiny_cfg, mnist5k_100):
    cfg = tiny_cfg([f"train.schedule={schedule}", "train.epochs=3", "train.steps_per_epoch=2", "train.lr=0.01",
                    "train.decay_start=0"])
    lrs = [h["lr"] for h in fit(cfg, data=mnist5k_100).history]
    if schedule == "linear":
        assert lrs == pytest.approx([0.01 * 4 / 6, 0.01 * 2 / 6, 0.0]) and lrs[-1] == 0.0
    else:
        assert lrs == [0.01, 0.01, 0.01]


def test_fp16_on_cpu_is_a_clear_error(tiny_cfg, mnist5k_100):
    with pytest.raises(ValueError, match="train.amp=fp16 needs a CUDA device"):
        fit(tiny_cfg(["train.amp=fp16", "train.epochs=1", "train.steps_per_epoch=1"]), data=mnist5k_100)


def test_bf16_on_cpu_runs_vat(tiny_cfg, mnist5k_100):
    res = fit(tiny_cfg(["train.amp=bf16", "method.name=vat", "train.epochs=1", "train.steps_per_epoch=2"]),
              data=mnist5k_100)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert res.history[0]["train_lds"] >= 0


def test_non_finite_loss_names_the_method(tiny_cfg, mnist5k_100, monkeypatch):
    def nan_loss(self, model, batch, ctx):
        logits = model(batch.x)
        return LossOutput(logits.sum() * float("nan"), {"ce": 1.0}, logits)

    monkeypatch.setattr(METHODS.get("mle"), "loss", nan_loss)
    with pytest.raises(TrainingDiverged, match=r"mle: non-finite loss at epoch 1, step 1") as e:
        fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=2"]), data=mnist5k_100)
    assert (e.value.epoch, e.value.step) == (1, 1)
    assert copy.deepcopy(e.value).step == 1  # __reduce__ keeps the fields (Ray ships errors between workers)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mle", "vat"])
def test_short_real_run_learns(method, tiny_cfg, mnist5k_100):
    cfg = tiny_cfg([f"method.name={method}", "train.epochs=2", "train.steps_per_epoch=50", "train.lr=0.003"])
    res = fit(cfg, data=mnist5k_100)
    h = res.history
    assert len(h) == 2 and h[-1]["step"] == 100
    assert h[-1]["val_acc"] > 0.5, h  # chance is 0.1 on 10 balanced classes
    assert h[-1]["train_loss"] < h[0]["train_loss"]


def test_fit_restores_the_callers_determinism_setting(tiny_cfg, mnist5k_100):
    import torch

    from robust_core.train import fit

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=1", "train.deterministic=true"]), data=mnist5k_100)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_divergence_names_the_first_non_finite_step(tiny_cfg, mnist5k_100, monkeypatch):
    """The guard reads the losses once per epoch, yet names the FIRST non-finite step, not a later one."""
    calls = []

    def nan_from_epoch2_step2(self, model, batch, ctx):
        calls.append(ctx.step)
        logits = model(batch.x)
        bad = ctx.epoch == 1 and ctx.step % ctx.steps_per_epoch >= 1  # epoch 2, steps 2 and 3 (1-based)
        ce = F.cross_entropy(logits, batch.y) * (float("nan") if bad else 1.0)
        return LossOutput(ce, {"ce": ce.detach(), "lam": 0.5}, logits)

    monkeypatch.setattr(METHODS.get("mle"), "loss", nan_from_epoch2_step2)
    with pytest.raises(TrainingDiverged, match=r"mle: non-finite loss at epoch 2, step 2 \(nan; logs .*'ce': nan"):
        fit(tiny_cfg(["train.epochs=3", "train.steps_per_epoch=3"]), data=mnist5k_100)
    assert calls == [0, 1, 2, 3, 4, 5]  # found at the end of epoch 2; epoch 3 never started


def test_divergence_reported_when_a_later_step_crashes(tiny_cfg, mnist5k_100, monkeypatch):
    """A step that raises after the loss went non-finite (NaN weights break something) reports the divergence."""
    def nan_then_crash(self, model, batch, ctx):
        if ctx.step == 2:
            raise RuntimeError("echo of NaN weights")
        logits = model(batch.x)
        return LossOutput(F.cross_entropy(logits, batch.y) * (float("inf") if ctx.step == 1 else 1.0), {}, logits)

    monkeypatch.setattr(METHODS.get("mle"), "loss", nan_then_crash)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 2") as e:
        fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=4"]), data=mnist5k_100)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_epoch_metrics_are_step_means(tiny_cfg, mnist5k_100, monkeypatch):
    """Device-side accumulation gives the same means as the per-step values (including Python-number logs)."""
    seen: list[tuple[float, float, int]] = []

    def loss(self, model, batch, ctx):
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        seen.append((ce.item(), (logits.argmax(1) == batch.y).sum().item(), ctx.step))
        return LossOutput(ce, {"ce2": 2 * ce.detach(), "k": float(ctx.step)}, logits)

    monkeypatch.setattr(METHODS.get("mle"), "loss", loss)
    h = fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=5"]), data=mnist5k_100).history[0]
    assert h["train_loss"] == pytest.approx(sum(s[0] for s in seen) / 5, rel=1e-12)
    assert h["train_ce2"] == pytest.approx(2 * h["train_loss"], rel=1e-6)
    assert h["train_k"] == pytest.approx(2.0) and h["train_acc"] == sum(s[1] for s in seen) / (5 * 32)


def test_uint8_storage_is_bit_identical(tiny_cfg, mnist5k_100):
    base = ["method.name=vat", "train.epochs=1", "train.steps_per_epoch=3"]
    a = fit(tiny_cfg(base + ["train.data_dtype=float32"]), data=mnist5k_100)
    b = fit(tiny_cfg(base + ["train.data_dtype=uint8"]), data=mnist5k_100)
    assert_same_tree(params_of(a.model), params_of(b.model))
    assert without_times(a.history) == without_times(b.history)


def test_sampler_state_is_plain_and_restores(tiny_cfg):
    from robust_core.train import PermutationSampler

    s = PermutationSampler(10, 4, torch.Generator().manual_seed(0))
    s.next()
    state = s.state_dict()
    assert set(state) == {"perm", "pos"} and state["perm"].device.type == "cpu" and type(state["pos"]) is int
    t = PermutationSampler(10, 4, torch.Generator().manual_seed(1))
    t.load_state_dict(state)
    assert torch.equal(s.next(), t.next()) and s.pos == t.pos == 8

"""``fit``: the one training loop. Every entry point (local trial, Ray Tune trial, final retrain) calls it.

It owns seeding, data batching, optimiser and schedule, AMP, train/eval modes, per-epoch validation, checkpoints
(model, method modules, optimiser, scheduler, scaler, the adversaries' optimiser, samplers and every RNG, so a
resumed run continues exactly as an uninterrupted one) and reporting. A method only turns a batch into a loss (and,
for a method with adversaries such as ATLD's discriminator, into the adversaries' loss: ``AdversaryTrainer``).
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_core.config import RunConfig
from robust_core.data import PreparedData, prepare_data
from robust_core.errors import TrainingDiverged
from robust_core.methods import Batch, Method, StepContext, build_method
from robust_core.models import build_model
from robust_core.modes import eval_mode
from robust_core.reporting import Reporter


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PermutationSampler:
    """Batches of indices drawn from successive random permutations of ``range(n)``; checkpointable."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n == 0:
            raise ValueError("cannot sample batches from an empty set")
        self.n, self.batch_size, self.gen = n, min(batch_size, n), generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        out = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])


def lr_factor(schedule: str, decay_start: float, total: int, milestones: tuple[int, ...] = (),
              decay_factor: float = 0.1) -> Callable[[int], float]:
    """Factor on the base lr at global step ``step`` (0-based). ``step``: ``decay_factor`` ** (number of
    ``milestones``, in steps, already reached) — the authors' "lr × 0.1 at epochs 60 and 90"."""
    start = int(decay_start * total)

    def f(step: int) -> float:
        if schedule == "step":
            return decay_factor ** sum(step >= m for m in milestones)
        if schedule == "constant" or step < start:
            return 1.0
        frac = (step - start) / max(1, total - start)
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    return f


def schedule_of(t, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor per step of ``TrainConfig`` ``t`` (milestones converted from epochs to steps)."""
    return lr_factor(t.schedule, t.decay_start, t.epochs * steps_per_epoch,
                     tuple(m * steps_per_epoch for m in t.milestones), t.decay_factor)


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


class AdversaryTrainer:
    """The optimiser of a method's adversaries (``Method.adversaries()``, e.g. ATLD's discriminator): created by
    ``fit`` over the named ``modules()``, stepped ``steps`` times on ``method.adversary_loss`` after every classifier
    step, its lr constant or following the train schedule, and checkpointed and restored with the rest of the run."""

    def __init__(self, spec, aux: nn.ModuleDict, schedule: Callable[[int], float], dev: torch.device,
                 scaled: bool) -> None:
        unknown = [k for k in spec.modules if k not in aux]
        if unknown or not spec.modules:
            raise ValueError(f"Method.adversaries() names modules {list(spec.modules)}; each must be a key of "
                             f"modules() (have: {', '.join(aux) or 'none'})")
        self.spec = spec
        self.params = [p for k in spec.modules for p in aux[k].parameters()]
        self.opt = make_optimizer(spec, self.params)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule if spec.follow_schedule else _one)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=scaled)

    def step(self, method: Method, model: nn.Module, batch: Batch, ctx: StepContext, out, autocast,
             grad_clip: float | None) -> dict[str, Any]:
        logs: dict[str, Any] = {}
        for _ in range(self.spec.steps):
            with autocast():
                a = method.adversary_loss(model, batch, ctx, out)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(a.loss).backward()
            if grad_clip is not None:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.params, grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            logs = a.logs
        self.sched.step()
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])


def _one(step: int) -> float:
    return 1.0


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy, in eval mode (restored afterwards); device taken from the model."""
    dev = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
            out = model(xb).float()
            loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    n = max(1, len(x))
    return {"acc": correct / n, "loss": loss_sum / n}


@dataclass
class FitResult:
    model: nn.Module  # the trained classifier
    method: Method
    data: PreparedData
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0

    @property
    def inference_model(self) -> nn.Module:
        return self.method.inference_model(self.model)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def fit(cfg: RunConfig, reporter: Reporter | None = None, data: PreparedData | None = None,
        progress: bool = False, test_each_epoch: bool = False) -> FitResult:
    """Train ``cfg``; resumes from ``reporter.restore()`` when it has a checkpoint. Restores the caller's global
    deterministic-algorithms setting on return. ``test_each_epoch`` adds the test accuracy to every epoch's metrics
    (for learning-curve figures of final retrains only; sweeps never set it, so selection cannot see it)."""
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(cfg, reporter, data, progress, test_each_epoch)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def _fit(cfg: RunConfig, reporter: Reporter | None, data: PreparedData | None, progress: bool,
         test_each_epoch: bool = False) -> FitResult:
    t = cfg.train
    dev = resolve_device(t.device)
    seed_everything(t.seed)
    data = data or prepare_data(cfg.data)
    model = build_model(cfg.model, data.info).to(dev)
    method = build_method(cfg.method, model=model, info=data.info, n_train=len(data.arrays.y_train))
    aux = nn.ModuleDict(method.modules()).to(dev)

    x_all, y_all = data.arrays.x_train, data.arrays.y_train
    lab_idx = torch.from_numpy(data.splits.labeled)
    unl_idx = torch.from_numpy(data.splits.unlabeled)
    use_unl = method.uses_unlabeled and len(unl_idx) > 0
    pool = max(len(lab_idx), len(unl_idx) if use_unl else 0)
    spe = t.steps_per_epoch or max(1, math.ceil(pool / (t.unlabeled_batch_size if use_unl else t.batch_size)))
    total = t.epochs * spe

    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
    if amp_dtype is torch.float16 and dev.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on CPU")
    adv_spec = method.adversaries()  # adversaries get their own optimiser; the classifier's never sees them
    adv_names = set(adv_spec.modules) if adv_spec is not None else set()
    params = list(model.parameters()) + [p for k, m in aux.items() if k not in adv_names for p in m.parameters()]
    opt = make_optimizer(t, params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_of(t, spe))
    adv = AdversaryTrainer(adv_spec, aux, schedule_of(t, spe), dev, amp_dtype is torch.float16) if adv_spec else None
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)
    gen = torch.Generator().manual_seed(t.seed)
    s_lab = PermutationSampler(len(lab_idx), t.batch_size, gen)
    s_unl = PermutationSampler(len(unl_idx), t.unlabeled_batch_size, gen) if use_unl else None

    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = reporter.restore() if reporter else None
    if state is not None:
        if state["fingerprint"] != cfg.fingerprint():
            raise RuntimeError("checkpoint was written by a different config; refusing to resume from it "
                               "(delete the checkpoint or restore the config it was made with)")
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if adv is not None:
            adv.load_state_dict(state["adversary"])
        s_lab.load_state_dict(state["sampler_labeled"])
        if s_unl is not None:
            s_unl.load_state_dict(state["sampler_unlabeled"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        history = list(state["history"])
        start_epoch = state["epoch"]

    def checkpoint(epoch: int) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            return {
                "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "epoch": epoch,
                "model": model.state_dict(), "aux": aux.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "adversary": adv.state_dict() if adv is not None else None,
                "sampler_labeled": s_lab.state_dict(),
                "sampler_unlabeled": s_unl.state_dict() if s_unl is not None else None,
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
                "history": list(history),
            }
        return build

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_epoch * spe, desc=f"{cfg.method.name}", unit="step", leave=False)

    autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    for epoch in range(start_epoch, t.epochs):
        t0 = time.perf_counter()
        model.train()
        aux.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        for i in range(spe):
            li = lab_idx[s_lab.next()]
            batch = Batch(x_all[li].to(dev), y_all[li].to(dev), li.to(dev))
            if s_unl is not None:
                ui = unl_idx[s_unl.next()]
                batch.ux, batch.uidx = x_all[ui].to(dev), ui.to(dev)
            ctx = StepContext(epoch, epoch * spe + i, t.epochs, spe, len(y_all))
            with autocast():
                out = method.loss(model, batch, ctx)
            if not torch.isfinite(out.loss):
                raise TrainingDiverged(
                    f"{cfg.method.name}: non-finite loss at epoch {epoch + 1}, step {i + 1} "
                    f"({ {k: float(v) for k, v in out.logs.items()} }); lower train.lr or check the method's params",
                    epoch=epoch + 1, step=i + 1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if t.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, t.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            if adv is not None:  # the adversaries' turn, on the same batch (their loss reuses out.saved)
                out.logs.update(adv.step(method, model, batch, ctx, out, autocast, t.grad_clip))
            sums["train_loss"] = sums.get("train_loss", 0.0) + out.loss.item()
            for k, v in out.logs.items():
                sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + float(v)
            if out.logits is not None:
                correct += (out.logits.argmax(1) == batch.y).sum().item()
                seen += len(batch.y)
            if bar is not None:
                bar.update(1)
        metrics: dict[str, Any] = {k: v / spe for k, v in sums.items()}
        if seen:
            metrics["train_acc"] = correct / seen
        xv, yv = data.val
        metrics["epoch"] = epoch + 1
        if len(yv):  # none when data.n_val = 0 (a final retrain on train ∪ validation)
            val = evaluate(method.inference_model(model), xv, yv, t.eval_batch_size)
            metrics.update(val_acc=val["acc"], val_loss=val["loss"])
        metrics.update(lr=sched.get_last_lr()[0], step=(epoch + 1) * spe, epoch_time_s=time.perf_counter() - t0)
        if test_each_epoch:  # after epoch_time_s: the timing is of training and validation only
            xt, yt = data.test
            te = evaluate(method.inference_model(model), xt, yt, t.eval_batch_size)
            metrics.update(test_acc=te["acc"], test_loss=te["loss"])
        history.append(metrics)
        if reporter is not None:
            reporter.report(metrics, checkpoint(epoch + 1))
    if bar is not None:
        bar.close()
    return FitResult(model, method, data, history, start_epoch)

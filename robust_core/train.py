"""``fit``: the one training loop. Every entry point (local trial, Ray Tune trial, final retrain) calls it.

It owns seeding, data batching, optimiser and schedule, AMP, train/eval modes, per-epoch validation, checkpoints
(model, method modules, optimiser, scheduler, scaler, the adversaries' optimiser, samplers and every RNG, so a
resumed run continues exactly as an uninterrupted one) and reporting. A method only turns a batch into a loss (and,
for a method with adversaries such as ATLD's discriminator, into the adversaries' loss: ``AdversaryTrainer``).

The step never waits for the device (``tests/test_step_sync.py`` checks every registered method): the training set
is resident on the device and batches are gathered there (``robust_core.data.placement``), indices are drawn there,
losses/logs/accuracy go into an on-device ``EpochMeter`` that is read once per epoch, and the non-finite-loss guard
is evaluated from it then (naming the first bad step). Options: ``train.amp`` (autocast), ``train.channels_last``,
``train.compile``.
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

from robust_core.config import ROBUST_VAL_METRIC, RobustValConfig, RunConfig
from robust_core.data import PreparedData, prepare_data
from robust_core.data.placement import place_images
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


# Checkpoints load with ``torch.load(weights_only=True)`` (a crafted file must not run code), which unpickles only
# tensors, numbers, strings and containers of them: numpy's and Python's RNG states are stored in those forms.
def numpy_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    assert kind == "MT19937", kind
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss)}


def set_numpy_rng_state(s: dict[str, Any]) -> None:
    np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                         s["cached_gaussian"]))


def python_rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_python_rng_state(s: dict[str, Any]) -> None:
    random.setstate((s["version"], tuple(s["internal"]), s["gauss_next"]))


class PermutationSampler:
    """Batches of indices drawn from successive random permutations of ``range(n)``, on the generator's device (the
    training device when the data is resident there: no host round trip per step); checkpointable with plain tensors
    and ints (``state_dict``: the permutation on the CPU and the position)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n == 0:
            raise ValueError("cannot sample batches from an empty set")
        self.n, self.batch_size, self.gen = n, min(batch_size, n), generator
        self.perm = self._permutation()
        self.pos = 0

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.gen, device=self.gen.device)

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = self._permutation()
            self.pos = 0
        out = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.cpu().clone(), "pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.perm, self.pos = s["perm"].to(self.gen.device).clone(), int(s["pos"])


class EpochMeter:
    """Per-step scalars of one epoch kept on the device, read with ONE host transfer at the end (``read``).

    Each step writes a row (loss, number of correct predictions, the method's tensor logs) into a preallocated
    (steps, k) buffer — a device-side copy, no synchronisation. Python-number logs are summed on the host. ``read``
    returns the epoch means and the 1-based step of the first non-finite loss (or None) with that step's logs, so
    the divergence guard costs nothing per step.
    """

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps, self.device = steps, device
        self.rows: dict[tuple[str, ...], torch.Tensor] = {}  # one (steps, k) buffer per set of log names
        self.which: list[tuple[str, ...]] = []  # the buffer each step wrote
        self.host: list[dict[str, float]] = []  # each step's Python-number logs
        self.seen = 0

    def add(self, loss: torch.Tensor, logs: dict[str, Any], logits: torch.Tensor | None, y: torch.Tensor) -> None:
        names = ["loss"] + [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
        vals = [loss.detach()] + [logs[k].detach() for k in names[1:]]
        if logits is not None:
            names.append("correct")
            vals.append((logits.detach().argmax(1) == y).sum())
            self.seen += len(y)
        key = tuple(names)
        if key not in self.rows:  # float64 (exact counts, sums as precise as the host's); MPS has no float64
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            self.rows[key] = torch.zeros(self.steps, len(key), device=self.device, dtype=dtype)
        buf = self.rows[key]
        buf[len(self.which)] = torch.stack([v.reshape(()).to(buf.dtype) for v in vals])
        self.which.append(key)
        self.host.append({k: float(v) for k, v in logs.items() if not isinstance(v, torch.Tensor)})

    def read(self) -> tuple[dict[str, float], int | None, dict[str, float]]:
        """(epoch means ``train_<name>`` and ``train_acc``, 1-based step of the first non-finite loss or None, the
        logs of that step). Means divide by the epoch's step count (a log absent from some steps counts 0 there)."""
        n, keys = len(self.which), list(self.rows)
        if n == 0:
            return {}, None, {}
        loss = sum(self.rows[k][:n, 0] for k in keys)  # each step wrote one buffer; the others hold 0 there
        steps = torch.arange(n, device=self.device)
        first = torch.where(torch.isfinite(loss), n, steps).min()
        at = first.clamp(max=n - 1)
        flat = torch.cat([first.reshape(1).to(loss.dtype)] + [self.rows[k].sum(0) for k in keys]
                         + [self.rows[k][at] for k in keys]).tolist()  # the epoch's one host synchronisation
        sums: dict[str, float] = {}
        for d in self.host:
            for k, v in d.items():
                sums[k] = sums.get(k, 0.0) + v
        pos, at_rows = 1, {}
        for k in keys:
            for name, v in zip(k, flat[pos : pos + len(k)]):
                sums[name] = sums.get(name, 0.0) + v
            pos += len(k)
        for k in keys:
            at_rows[k] = dict(zip(k, flat[pos : pos + len(k)]))
            pos += len(k)
        correct = sums.pop("correct", None)
        metrics = {("train_loss" if k == "loss" else f"train_{k}"): v / self.steps for k, v in sums.items()}
        if correct is not None and self.seen:
            metrics["train_acc"] = correct / self.seen
        first_bad = int(flat[0])
        if first_bad >= n:
            return metrics, None, {}
        at_bad = {k: v for k, v in at_rows[self.which[first_bad]].items() if k != "correct"}
        return metrics, first_bad + 1, {**at_bad, **self.host[first_bad]}


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
    """AdamW or SGD from a ``TrainConfig``. The fused kernels where they exist (CPU, CUDA): one kernel for all
    parameters, step counters kept on the device (the for-each version reads them on the host every step), and on
    this CPU 4-5x faster for AdamW on the VAT MLP (benchmarks/RESULTS.md); same update up to float rounding."""
    params = list(params)
    fused = {"fused": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay,
                                 **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **fused)


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
    sums = torch.zeros(2, device=dev, dtype=torch.float32 if dev.type == "mps" else torch.float64)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
            out = model(xb).float()
            sums += torch.stack([F.cross_entropy(out, yb, reduction="sum"), (out.argmax(1) == yb).sum()]).to(sums)
    loss_sum, correct = sums.tolist()  # one host synchronisation for the whole set
    n = max(1, len(x))
    return {"acc": correct / n, "loss": loss_sum / n}


def robust_validation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rv: RobustValConfig, dataset: str,
                      batch_size: int = 1000) -> dict[str, float]:
    """``val_robust_acc``: accuracy of ``model`` (the deployed network) on the validation examples ``(x, y)`` (or
    ``rv.n_examples`` of them, a seeded subset) under ``rv``'s attack on ``dataset``'s radius, through the one attack
    loop, in eval mode (restored afterwards); ``val_robust_time_s``: its wall seconds. Runs with a forked RNG and its
    own seeded generator: the caller's random streams are untouched, so training continues exactly as without it."""
    from robust_core.attacks.base import model_device, predict
    from robust_core.attacks.evaluate import select
    from robust_core.attacks.settings import EvalSettings

    t0 = time.perf_counter()
    x, y, _ = select((x, y), EvalSettings(n_examples=rv.n_examples, seed=rv.seed))
    dev = model_device(model)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), eval_mode(model):
        gen = torch.Generator(device=dev).manual_seed(rv.seed)
        adv = rv.attack_for(dataset).run(model, x, y, batch_size, generator=gen)
        acc = (predict(model, adv.x, batch_size) == y.to(adv.x.device)).float().mean().item()
    return {ROBUST_VAL_METRIC: acc, "val_robust_time_s": time.perf_counter() - t0}


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


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _raise_if_diverged(cfg: RunConfig, epoch: int, meter: EpochMeter,
                       cause: BaseException | None = None) -> dict[str, Any]:
    """The epoch's metrics; raises ``TrainingDiverged`` naming the first step whose loss was non-finite."""
    metrics, step, logs = meter.read()
    if step is not None:
        shown = {k: round(v, 6) for k, v in logs.items() if k != "loss"}
        raise TrainingDiverged(
            f"{cfg.method.name}: non-finite loss at epoch {epoch + 1}, step {step} ({logs.get('loss')}; logs "
            f"{shown}); lower train.lr or check the method's params", epoch=epoch + 1, step=step) from cause
    return metrics


def fit(cfg: RunConfig, reporter: Reporter | None = None, data: PreparedData | None = None,
        progress: bool = False, test_each_epoch: bool = False, timing: dict[str, float] | None = None) -> FitResult:
    """Train ``cfg``; resumes from ``reporter.restore()`` when it has a checkpoint. Restores the caller's global
    deterministic-algorithms setting on return. ``test_each_epoch`` adds the test accuracy to every epoch's metrics
    (for learning-curve figures of final retrains only; sweeps never set it, so selection cannot see it).

    ``timing``: a dict updated in place as training goes (so a trial stopped inside a report still has it), wall
    seconds: ``setup_s`` (data, model, method, restore: entry to the first step), ``train_s`` (the steps),
    ``val_s`` (clean validation), ``robust_val_s``, ``test_s`` (per-epoch test accuracy), ``report_s`` (the
    reporters: checkpoint, Tune, MLflow queue); ``first_step_s`` from ``timing["t0"]`` (a caller's
    ``time.perf_counter()`` at its start) when given. ``benchmarks/laptop_breakdown.py`` reads them from MLflow."""
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(cfg, reporter, data, progress, test_each_epoch, {} if timing is None else timing)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def _fit(cfg: RunConfig, reporter: Reporter | None, data: PreparedData | None, progress: bool,
         test_each_epoch: bool, clock: dict[str, float]) -> FitResult:
    t_enter = time.perf_counter()
    for k in ("train_s", "val_s", "robust_val_s", "test_s", "report_s"):
        clock.setdefault(k, 0.0)
    t = cfg.train
    dev = resolve_device(t.device)
    seed_everything(t.seed)
    data = data or prepare_data(cfg.data)
    model = build_model(cfg.model, data.info).to(dev)
    nhwc = t.channels_last and _has_conv2d(model)  # NHWC for the convolutions and the batches that feed them
    if nhwc:
        model.to(memory_format=torch.channels_last)
    method = build_method(cfg.method, model=model, info=data.info, n_train=len(data.arrays.y_train))
    aux = nn.ModuleDict(method.modules()).to(dev)
    if nhwc:  # a method's own conv nets (e.g. xVAT's mask generator) see the same NHWC batches
        aux.to(memory_format=torch.channels_last)

    store = place_images(data.arrays.x_train, data.arrays.y_train, dev, t.data_placement, t.data_dtype, nhwc)
    sdev = store.x.device  # where indices are drawn and batches gathered (the training device when resident)
    lab_idx = torch.from_numpy(data.splits.labeled).to(sdev)
    unl_idx = torch.from_numpy(data.splits.unlabeled).to(sdev)
    use_unl = method.uses_unlabeled and len(unl_idx) > 0
    pool = max(len(lab_idx), len(unl_idx) if use_unl else 0)
    spe = t.steps_per_epoch or max(1, math.ceil(pool / (t.unlabeled_batch_size if use_unl else t.batch_size)))
    total = t.epochs * spe
    n_train = len(data.arrays.y_train)
    # validation (and test) inputs: gathered once, float32 on the training device when the set is resident there
    val_xy = (store.gather(torch.from_numpy(data.splits.val).to(sdev)),
              store.labels(torch.from_numpy(data.splits.val).to(sdev))) if store.resident else data.val
    step_model = torch.compile(model) if t.compile else model  # what the method calls; checkpoints use ``model``

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
    gen = torch.Generator(sdev).manual_seed(t.seed)
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
        set_numpy_rng_state(state["numpy_rng"])
        set_python_rng_state(state["python_rng"])
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
                "numpy_rng": numpy_rng_state(), "python_rng": python_rng_state(),
                "history": list(history),
            }
        return build

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_epoch * spe, desc=f"{cfg.method.name}", unit="step", leave=False)

    autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    params = list(model.parameters()) + list(aux.parameters())
    clock["setup_s"] = clock.get("setup_s", 0.0) + time.perf_counter() - t_enter
    if "t0" in clock:  # the caller's start (a trial function's entry): how long until the first step
        clock["first_step_s"] = time.perf_counter() - clock["t0"]
    for epoch in range(start_epoch, t.epochs):
        t0 = time.perf_counter()
        model.train()
        aux.train()
        meter = EpochMeter(spe, dev)
        try:
            # The step makes no host synchronisation (tests/test_step_sync.py): batches are gathered on the device,
            # scalars go to the meter, the divergence guard is read with them once per epoch.
            for i in range(spe):
                li = lab_idx[s_lab.next()]
                batch = Batch(store.gather(li), store.labels(li), store.to_device(li))
                if s_unl is not None:
                    ui = unl_idx[s_unl.next()]
                    batch.ux, batch.uidx = store.gather(ui), store.to_device(ui)
                ctx = StepContext(epoch, epoch * spe + i, t.epochs, spe, n_train)
                with autocast():
                    out = method.loss(step_model, batch, ctx)
                opt.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                if t.grad_clip is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(params, t.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                if adv is not None:  # the adversaries' turn, on the same batch (their loss reuses out.saved)
                    out.logs.update(adv.step(method, step_model, batch, ctx, out, autocast, t.grad_clip))
                meter.add(out.loss, out.logs, out.logits, batch.y)
                if bar is not None:
                    bar.update(1)
        except Exception as e:  # a step failing after the loss went non-finite: report the divergence, not the echo
            _raise_if_diverged(cfg, epoch, meter, e)
            raise
        metrics: dict[str, Any] = _raise_if_diverged(cfg, epoch, meter)
        t1 = time.perf_counter()
        clock["train_s"] += t1 - t0
        xv, yv = val_xy
        metrics["epoch"] = epoch + 1
        if len(yv):  # none when data.n_val = 0 (a final retrain on train ∪ validation)
            val = evaluate(method.inference_model(model), xv, yv, t.eval_batch_size)
            metrics.update(val_acc=val["acc"], val_loss=val["loss"])
        t2 = time.perf_counter()
        clock["val_s"] += t2 - t1
        metrics.update(lr=sched.get_last_lr()[0], step=(epoch + 1) * spe, epoch_time_s=t2 - t0)
        rv = t.robust_val  # after epoch_time_s too: timed apart (val_robust_time_s), so epoch times stay comparable
        if rv is not None and len(yv) and rv.due(epoch + 1, t.epochs):
            metrics.update(robust_validation(method.inference_model(model), xv, yv, rv, cfg.data.name,
                                             t.eval_batch_size))
            clock["robust_val_s"] += metrics["val_robust_time_s"]
        if test_each_epoch:  # after epoch_time_s: the timing is of training and validation only
            t3 = time.perf_counter()
            xt, yt = data.test
            te = evaluate(method.inference_model(model), xt, yt, t.eval_batch_size)
            metrics.update(test_acc=te["acc"], test_loss=te["loss"])
            clock["test_s"] += time.perf_counter() - t3
        history.append(metrics)
        if reporter is not None:
            t4 = time.perf_counter()
            try:
                reporter.report(metrics, checkpoint(epoch + 1))
            finally:  # also when the report ends the trial (a scheduler's stop)
                clock["report_s"] += time.perf_counter() - t4
    if bar is not None:
        bar.close()
    return FitResult(model, method, data, history, start_epoch)

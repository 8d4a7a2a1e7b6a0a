"""Peak tensor memory of one training step, without a GPU: a live-bytes tracker, optionally on fake tensors.

``LiveBytes`` is a ``TorchDispatchMode`` that sees every tensor an ATen op creates and keeps the byte size of each
distinct storage until the storage is freed (a weak reference to it; the same mechanism as
``torch.distributed._tools.mem_tracker``, which refuses modules called several times per step, as attacks do).
Sizes are rounded up to the CUDA caching allocator's 512-byte blocks. Inside ``FakeTensorMode`` no arithmetic runs,
so a WRN-28-10 PGD-7 step at batch 128 is accounted in seconds on a CPU.

What it counts: parameters, buffers, gradients, optimiser state, activations saved for backward, temporaries (all
tensors alive at the same time). What it cannot see: the CUDA context (~0.5 GB per process), cuDNN/cuBLAS workspaces,
the caching allocator's fragmentation, and kernels whose CUDA autocast dtype differs from the CPU one — the GPU
fraction derived from it adds a margin for those (``benchmarks/trial_memory.py``).
"""
from __future__ import annotations

import sys
import weakref
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

BLOCK = 512  # bytes: the CUDA caching allocator's rounding


def _storages(out) -> list[torch.UntypedStorage]:
    leaves, _ = tree_flatten(out)
    return [t.untyped_storage() for t in leaves if isinstance(t, torch.Tensor)]


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as m: ...`` then ``m.peak`` (bytes). ``track(*tensors)`` adds tensors made before."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.finalize] = {}

    def _add(self, st: torch.UntypedStorage) -> None:
        key = id(st)
        if key in self._seen and self._seen[key].alive:
            return
        size = -(-st.nbytes() // BLOCK) * BLOCK
        self.live += size
        self.peak = max(self.peak, self.live)
        self._seen[key] = weakref.finalize(st, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.pop(key, None)

    def track(self, *tensors: torch.Tensor) -> None:
        for st in _storages(list(tensors)):
            self._add(st)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for st in _storages(out):
            self._add(st)
        return out


class Flops(TorchDispatchMode):
    """matmul/conv FLOPs of the ops run inside, by ``torch.utils.flop_counter``'s formulas (``FlopCounterMode``
    itself tracks modules with hooks that ``autograd.grad`` on an input leaf refuses, as every attack does)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def one_step_accounting(cfg, info, batch: int, unlabeled: int, n_train: int, steps: int = 2, fake: bool = True,
                        memory: bool = True) -> dict[str, int]:
    """Passes and peak bytes of ``steps`` training steps of ``cfg`` on fake tensors (nothing is computed).

    Mirrors ``fit``'s step: the method's loss under the configured autocast (CPU autocast here; bf16 covers the same
    matmul/conv ops as on CUDA), backward, the fused optimiser step; channels_last when configured. Returns the
    ``n_train``: training-set size (per-example method parameters). ``fake=False`` computes for real (tests). Returns the
    passes of the first step as examples through the classifier's ``head`` — ``fwd`` (plain forward), ``jvp``
    (forward-mode AD forward), ``bwd`` (backward reaching the head's output) — and ``units`` = fwd + 2·jvp + 2·bwd,
    plus ``peak_bytes`` over all steps (parameters, gradients, optimiser state, activations, temporaries),
    ``state_bytes`` (what stays between steps: parameters, buffers, gradients, optimiser state) and
    ``flops``: matmul/conv FLOPs of the first step's loss and backward, auxiliary networks included
    (``Flops``; elementwise ops and the optimiser are not counted). ``memory=False``: passes only (hooks, no
    dispatch mode, real tensors): no ``peak_bytes``, ``state_bytes`` or ``flops``.
    """
    import torch.autograd.forward_ad as fwAD
    from torch._subclasses.fake_tensor import FakeTensorMode

    from robust_core.methods import Batch, StepContext, build_method
    from robust_core.models import build_model
    from robust_core.train import make_optimizer

    t = cfg.train
    counts = {"fwd": 0, "jvp": 0, "bwd": 0}
    counting = [True]
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]

    def on_head(mod, inp, out):
        if not counting[0]:
            return
        n = out.shape[0]
        try:
            dual = fwAD.unpack_dual(out).tangent is not None
        except RuntimeError:
            dual = False
        counts["jvp" if dual else "fwd"] += n
        if out.requires_grad:
            out.register_hook(lambda g: counts.__setitem__("bwd", counts["bwd"] + n) if counting[0] else None)

    flops = Flops() if memory else nullcontext()
    with FakeTensorMode() if fake and memory else nullcontext(), LiveBytes() if memory else nullcontext() as mem:
        model = build_model(cfg.model, info)
        if t.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            for p in model.parameters():  # what fit's model.to(memory_format=...) does (which fake tensors refuse)
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        model.head.register_forward_hook(on_head)
        method = build_method(cfg.method, model=model, info=info, n_train=n_train)
        aux = torch.nn.ModuleDict(method.modules())
        opt = make_optimizer(t, list(model.parameters()) + list(aux.parameters()))
        fmt = torch.channels_last if t.channels_last and len(info.shape) == 3 else torch.contiguous_format
        for step in range(steps):
            x = torch.rand(batch, *info.shape).contiguous(memory_format=fmt)
            b = Batch(x, torch.randint(0, info.num_classes, (batch,)), torch.arange(batch))
            if unlabeled:
                b.ux = torch.rand(unlabeled, *info.shape).contiguous(memory_format=fmt)
                b.uidx = torch.arange(batch, batch + unlabeled)
            with flops if step == 0 else nullcontext():
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    # epoch index 1: the epoch step_cost.py times (warm-ups such as FAT's λ = 0 in epoch 0 are over)
                    out = method.loss(model, b, StepContext(1, steps + step, 2, steps, n_train))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
            opt.step()
            del out, b, x
            counting[0] = False
        state = mem.live if memory else 0  # parameters, buffers, gradients, optimiser state (the batch is gone)
    counts["units"] = counts["fwd"] + 2 * counts["jvp"] + 2 * counts["bwd"]
    if memory:
        counts.update(peak_bytes=mem.peak, state_bytes=state, flops=flops.total)
    return counts


def accounting_or_empty(cfg, *args, passes_only_fallback: bool = True, **kwargs) -> dict[str, int]:
    """``one_step_accounting``, or what of it can run. Forward-mode AD (VAT's exact direction, the VAT family's
    default: ``method.params.direction == "exact"``) fails under a Python dispatch mode in torch 2.14 (an internal
    assert in ``make_dual``/``_fw_primal``, with fake and real tensors alike, and it leaves autograd broken for the rest
    of the process): for those methods only the passes are counted (``memory=False``: hooks on a real step), without
    memory and FLOPs; ``passes_only_fallback=False`` gives ``{}`` instead (a real step is slow at the paper's
    shapes). Any other failure: ``{}``, with a note on stderr."""
    from robust_core.registry import METHODS

    params = METHODS.get(cfg.method.name).Params.model_validate(cfg.method.params)  # with the method's defaults
    if getattr(params, "direction", None) == "exact":
        print(f"# {cfg.method.name}: forward-mode AD, {'passes only, ' if passes_only_fallback else ''}no memory/FLOP "
              "accounting", file=sys.stderr)
        if not passes_only_fallback:
            return {}
        return one_step_accounting(cfg, *args, **{**kwargs, "fake": False, "memory": False})
    try:
        return one_step_accounting(cfg, *args, **kwargs)
    except RuntimeError as e:
        print(f"# {cfg.method.name}: no accounting ({str(e).splitlines()[0][:90]}...)", file=sys.stderr)
        return {}

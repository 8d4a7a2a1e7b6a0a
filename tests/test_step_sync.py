"""The training step makes no host synchronisation, for every registered method.

A step that reads a device value on the host (``loss.item()``, ``float(log)``, ``if tensor:``, boolean-mask indexing,
``nonzero``, ...) makes the CPU wait for the GPU every step; on a GPU the loop becomes launch- and sync-bound. The
window checked is the whole run of steps of one epoch: from the moment ``fit`` creates the epoch's ``EpochMeter``
(just before the first step: batch gathering, index sampling, the method's loss, backward, optimiser and schedule
steps) to ``EpochMeter.read`` (the epoch's one host transfer, after the last step).

- CPU (always): every tensor-to-Python conversion (``item``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``,
  ``tolist``, ``numpy``) and every ATen op that synchronises on CUDA (``_local_scalar_dense``, ``nonzero``,
  ``masked_select``, ``unique``, ``equal``, boolean-mask indexing, ...) is recorded with where it came from; none is
  allowed.
- CUDA (when a GPU is present): the same, plus ``torch.cuda.set_sync_debug_mode("error")``, which raises on any
  synchronising CUDA call inside the window. On a machine without a GPU only the CPU variant is collected.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import robust_core.train as train_mod
from robust_core.registry import METHODS
from robust_core.train import fit

CONVERSIONS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")
aten = torch.ops.aten
SYNCING_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.equal.default, aten.is_nonzero.default, aten.bincount.default, aten._unique2.default,
               aten.unique_dim.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
INDEXING_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _where() -> str:
    """The innermost frame of this repository's code (robust_core/...) on the stack, as 'file:line in function'."""
    frames = [f for f in traceback.extract_stack()[:-2] if "robust_core" in f.filename or "/torch/" in f.filename]
    ours = [f for f in frames if "robust_core" in f.filename] or frames
    f = ours[-1] if ours else traceback.extract_stack()[-3]
    return f"{f.filename.split('/')[-2]}/{f.filename.split('/')[-1]}:{f.lineno} in {f.name}"


class SyncRecorder(TorchDispatchMode):
    """Records ATen ops that synchronise with the host on CUDA (bool-mask indexing included).

    CPU-only checks are not counted: ``F.one_hot(y, num_classes)`` validates the labels with ``.item()`` on the CPU
    only (on CUDA, with ``num_classes`` given, it relies on scatter's device assert: ATen ``Onehot.cpp``)."""

    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found
        self.cpu_only_check = 0  # > 0 inside F.one_hot with num_classes on a CPU tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.cpu_only_check and func is aten._local_scalar_dense.default:
            pass
        elif func in SYNCING_OPS and not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size")):
            self.found.append(f"{func} at {_where()}")
        elif func in INDEXING_OPS:
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx or ()):
                self.found.append(f"{func} with a boolean mask at {_where()}")
        return func(*args, **kwargs)


@contextmanager
def recording_conversions(found: list[str]):
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def wrap(name, orig):
        def conv(self, *a, **k):
            found.append(f"Tensor.{name} at {_where()}")
            return orig(self, *a, **k)
        return conv

    try:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, wrap(name, orig))
        yield
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


def watch_steps(monkeypatch, found: list[str], cuda: bool) -> list[int]:
    """Patch ``EpochMeter`` so that recording is on from its creation (before the epoch's first step) until its
    ``read`` (after the last). Returns a list that gets one entry per watched epoch."""
    windows: list[int] = []
    Base = train_mod.EpochMeter
    one_hot = torch.nn.functional.one_hot

    class Watched(Base):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._stack = []
            recorder = SyncRecorder(found)

            def checked_one_hot(t, num_classes=-1):
                cpu_only = t.device.type == "cpu" and num_classes > 0
                recorder.cpu_only_check += cpu_only
                try:
                    return one_hot(t, num_classes)
                finally:
                    recorder.cpu_only_check -= cpu_only

            monkeypatch.setattr(torch.nn.functional, "one_hot", checked_one_hot)
            for cm in (recording_conversions(found), recorder):
                cm.__enter__()
                self._stack.append(cm)
            if cuda:
                torch.cuda.set_sync_debug_mode("error")
            windows.append(0)

        def read(self):
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            while self._stack:
                self._stack.pop().__exit__(None, None, None)
            monkeypatch.setattr(torch.nn.functional, "one_hot", one_hot)
            return super().read()

    monkeypatch.setattr(train_mod, "EpochMeter", Watched)
    return windows


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS.names())
def test_step_makes_no_host_sync(method, device, tiny_cfg, mnist5k_100, monkeypatch):
    # 100 labels + unlabeled pool: semi-supervised methods take their unlabeled path; grad clipping on, so the
    # clipping path is inside the window too
    cfg = tiny_cfg([f"method.name={method}", f"train.device={device}", "train.epochs=1", "train.steps_per_epoch=3",
                    "train.grad_clip=5.0"])
    found: list[str] = []
    windows = watch_steps(monkeypatch, found, cuda=device == "cuda")
    res = fit(cfg, data=mnist5k_100)
    assert windows == [0] and res.history[0]["step"] == 3  # the window covered the epoch's steps
    assert not found, f"{method}: host synchronisation inside the training step:\n  " + "\n  ".join(found)


def test_the_recorder_catches_what_it_must(tiny_cfg, mnist5k_100, monkeypatch):
    """The check is not vacuous: a loss with ``.item()`` and one with boolean-mask indexing are both reported."""
    from robust_core.methods import LossOutput

    mle = METHODS.get("mle")
    cfg = tiny_cfg(["train.epochs=1", "train.steps_per_epoch=2"])
    for culprit, expected in ((lambda logits, y: logits.sum().item(), "Tensor.item"),
                              (lambda logits, y: logits[y > 4], "boolean mask")):
        def loss(self, model, batch, ctx, culprit=culprit):
            logits = model(batch.x)
            culprit(logits, batch.y)
            return LossOutput(torch.nn.functional.cross_entropy(logits, batch.y), {}, logits)

        with monkeypatch.context() as m:
            m.setattr(mle, "loss", loss)
            found: list[str] = []
            watch_steps(m, found, cuda=False)
            fit(cfg, data=mnist5k_100)
        assert sum(expected in f for f in found) == 2, found  # once per step, named

"""Mode changes that restore what they found: eval/train flags and BatchNorm running statistics."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode; restore every submodule's own ``training`` flag on exit."""
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside use batch statistics as usual but leave BN running statistics exactly as found.

    (Miyato's ``update_batch_stats=False``.) Each BN layer gets scratch copies of its running buffers for the
    duration; the original tensors are put back untouched on exit. They are never written in place, so autograd
    graphs built before the context (which save those buffers) stay valid.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [{k: b for k, b in m._buffers.items() if b is not None} for m in bns]
    try:
        for m, bufs in zip(bns, saved):
            for k, b in bufs.items():
                m._buffers[k] = b.clone()
        yield
    finally:
        for m, bufs in zip(bns, saved):
            m._buffers.update(bufs)

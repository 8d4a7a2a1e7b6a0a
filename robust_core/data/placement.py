"""Where the training images live while ``fit`` trains, and in what dtype.

Resident data (the airbench way): the whole training set is one tensor on the training device, each batch is
gathered there by index and the indices are drawn there too (``DeviceSampler``), so a step copies nothing from the
host and never waits for it. Datasets whose pixels are 8-bit values k/255 (every registered one) can be stored as
uint8 — 4x less device memory (CIFAR-10's training set: 154 MB instead of 614 MB) — and each gathered batch is mapped
back to float32 through a 256-entry table built on the host with the loaders' own arithmetic, so a batch is
bit-identical to the float32 arrays (checked when packing; a set that is not 8-bit stays float32). The model's
contract does not change: inputs are float in [0, 1] and the per-channel normalisation happens inside the model
(``robust_core.models.base.Normalize``), so perturbations and ε stay in pixel units.

When the set does not fit (``data_placement=host``, or ``auto`` with too little free device memory) it stays in
pinned host memory and each batch is copied asynchronously; index sampling then happens on the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# ``auto`` keeps the set on the device when it takes at most this fraction of the device's free memory (the rest is
# for the model, activations and, with fractional-GPU trials, the other trials sharing the device)
RESIDENT_FRACTION = 0.25


def unit_table() -> Tensor:
    """float32 value of each 8-bit level k in [0, 1], computed as the loaders compute it (float32 k / 255)."""
    return torch.arange(256, dtype=torch.float32).div_(255.0)


def pack_uint8(x: Tensor, chunk: int = 4096) -> Tensor | None:
    """uint8 levels k with ``unit_table()[k] == x`` exactly for every element, or None when ``x`` is not 8-bit.
    Works through ``chunk`` examples at a time (a float copy of all of CIFAR-10 would be 614 MB)."""
    table = unit_table()
    out = torch.empty(x.shape, dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        xc = x[i : i + chunk]
        k = xc.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        if not torch.equal(table[k.to(torch.int32)], xc):
            return None
        out[i : i + chunk] = k
    return out


@dataclass
class ImageStore:
    """The training images and labels, placed for the loop. ``gather(idx)`` -> float32 batch in [0, 1] on ``device``.

    x: (N, C, H, W), uint8 levels or float32 values; y: (N,) int64; both on ``x.device`` (the training device when
    resident, else pinned host memory). ``channels_last``: gathered batches come in NHWC memory layout.
    """

    x: Tensor
    y: Tensor
    device: torch.device
    channels_last: bool = False

    def __post_init__(self) -> None:
        self._table = unit_table().to(self.device) if self.x.dtype == torch.uint8 else None

    @property
    def resident(self) -> bool:
        return self.x.device == self.device

    def to_device(self, t: Tensor) -> Tensor:
        if self.resident:
            return t
        if self.device.type == "cuda":
            t = t.pin_memory()  # an asynchronous copy needs page-locked memory
        return t.to(self.device, non_blocking=True)

    def gather(self, idx: Tensor) -> Tensor:
        """Images ``idx`` (indices on ``x.device``) as float32 in [0, 1] on the training device."""
        xb = self.to_device(self.x[idx])  # uint8 crosses the bus as one byte per pixel
        if self._table is not None:
            xb = self._table[xb.to(torch.int32)]
        if self.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def labels(self, idx: Tensor) -> Tensor:
        return self.to_device(self.y[idx])


def place_images(x: Tensor, y: Tensor, device: torch.device, placement: str = "auto", dtype: str = "auto",
                 channels_last: bool = False) -> ImageStore:
    """Decide storage dtype and placement of a training set (float32 [0, 1] ``x`` and int64 ``y`` on the host).

    placement: ``device`` | ``host`` | ``auto`` (device when the stored set takes at most ``RESIDENT_FRACTION`` of the
    device's free memory; always on CPU). dtype: ``uint8`` (error when ``x`` is not 8-bit) | ``float32`` | ``auto``
    (uint8 on CUDA when ``x`` is 8-bit: it saves device memory; float32 on CPU, where the host arrays are used as they
    are and a uint8 copy would add memory, not save it).
    """
    if placement not in ("auto", "device", "host"):
        raise ValueError(f"train.data_placement={placement!r}; use auto, device or host")
    if dtype not in ("auto", "uint8", "float32"):
        raise ValueError(f"train.data_dtype={dtype!r}; use auto, uint8 or float32")
    stored = x
    if dtype == "uint8" or (dtype == "auto" and device.type == "cuda"):
        packed = pack_uint8(x)
        if packed is None and dtype == "uint8":
            raise ValueError("train.data_dtype=uint8: the training images are not 8-bit (some pixel is not exactly "
                             "k/255); use train.data_dtype=float32 or auto")
        stored = packed if packed is not None else x
    if device.type == "cpu" or placement == "device":
        resident = True
    elif placement == "host":
        resident = False
    else:
        free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (float("inf"), None)
        resident = stored.nbytes + y.nbytes <= RESIDENT_FRACTION * free
    if resident:
        x_dev = stored.to(device)
        return ImageStore(x_dev, y.to(device), x_dev.device, channels_last)  # cuda -> cuda:0: compare like with like
    if device.type == "cuda":
        stored, y = stored.pin_memory(), y.pin_memory()
    return ImageStore(stored, y, device, channels_last)

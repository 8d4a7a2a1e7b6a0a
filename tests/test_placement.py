"""Training-set placement (robust_core/data/placement.py): exact uint8 packing, clear refusals, layouts."""
from __future__ import annotations

import pytest
import torch

from robust_core.data.placement import pack_uint8, place_images, unit_table


def test_uint8_packing_is_exact_for_8bit_data_and_refuses_other_data(mnist5k_arrays):
    x = mnist5k_arrays.x_train[:700]
    k = pack_uint8(x, chunk=256)  # several chunks, the last one partial
    assert k is not None and k.dtype == torch.uint8 and torch.equal(unit_table()[k.long()], x)
    assert pack_uint8(x + 1e-4) is None
    with pytest.raises(ValueError, match=r"train.data_dtype=uint8: the training images are not 8-bit"):
        place_images(x + 1e-4, mnist5k_arrays.y_train[:700], torch.device("cpu"), dtype="uint8")


def test_store_gathers_float_batches_in_the_requested_layout(mnist5k_arrays):
    x = torch.rand(20, 3, 4, 4).mul(255).round().div(255)  # 8-bit, three channels
    y = torch.arange(20)
    idx = torch.tensor([3, 1, 17])
    for dtype in ("uint8", "float32"):
        s = place_images(x, y, torch.device("cpu"), "auto", dtype, channels_last=True)
        xb = s.gather(idx)
        assert s.x.dtype == getattr(torch, dtype) and s.resident
        assert xb.dtype == torch.float32 and xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xb, x[idx]) and torch.equal(s.labels(idx), y[idx])
    # on CPU, auto keeps the host arrays as they are: no copy
    assert place_images(x, y, torch.device("cpu")).x.data_ptr() == x.data_ptr()

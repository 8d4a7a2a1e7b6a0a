"""``eval_mode`` and ``frozen_bn_stats`` restore exactly what they found."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_core.modes import eval_mode, frozen_bn_stats


def mixed_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)), nn.Linear(8, 3))
    net.train()
    net[1].eval()  # a frozen BN inside a training net
    net[4][0].eval()
    return net


def flags(m: nn.Module) -> dict[str, bool]:
    return {n: s.training for n, s in m.named_modules()}


def test_eval_mode_restores_mixed_flags():
    net, other = mixed_net(), nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
    before, before_o = flags(net), flags(other)
    assert len(set(before.values())) == 2  # really mixed
    with eval_mode(net, other):
        assert not any(flags(net).values()) and not any(flags(other).values())
    assert flags(net) == before and flags(other) == before_o


def test_eval_mode_restores_on_exception():
    net = mixed_net()
    before = flags(net)
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert flags(net) == before


def bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().train()
    net(torch.randn(16, 4, dtype=torch.float64))  # non-trivial running stats
    return net


def test_frozen_bn_stats_leaves_buffers_bit_identical():
    net = bn_net()
    before = bn_state(net)
    ids = {k: id(b) for k, b in net[1]._buffers.items()}
    with frozen_bn_stats(net):
        for _ in range(3):
            net(torch.randn(16, 4, dtype=torch.float64) * 5 + 3)
    after = bn_state(net)
    assert before.keys() == after.keys() and len(before) == 3
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert {k: id(b) for k, b in net[1]._buffers.items()} == ids  # the original tensors are back
    # control: the same passes outside the context do change them
    net(torch.randn(16, 4, dtype=torch.float64) * 5 + 3)
    assert not torch.equal(bn_state(net)["1.running_mean"], before["1.running_mean"])
    assert int(bn_state(net)["1.num_batches_tracked"]) == int(before["1.num_batches_tracked"]) + 1


def test_frozen_bn_stats_restores_on_exception():
    net = bn_net()
    before = bn_state(net)
    with pytest.raises(ValueError):
        with frozen_bn_stats(net):
            net(torch.randn(16, 4, dtype=torch.float64) + 10)
            raise ValueError
    for k, v in bn_state(net).items():
        assert torch.equal(v, before[k])


def test_frozen_bn_stats_uses_batch_statistics():
    """Inside the context BN normalises with the batch's own statistics (train-mode BN), not the running ones."""
    net = bn_net()
    x = torch.randn(32, 4, dtype=torch.float64) * 3 + 7
    with frozen_bn_stats(net):
        h = net[1](net[0](x))
    torch.testing.assert_close(h.mean(0), net[1].bias.detach(), atol=1e-10, rtol=0)
    z = net[0](x)
    ref = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + net[1].eps) * net[1].weight + net[1].bias
    torch.testing.assert_close(h, ref)
    assert net.training and net[1].training


def test_frozen_bn_stats_keeps_earlier_graph_valid():
    """A graph built before the context still backpropagates after it, to the right gradient.

    Eval-mode BN backward on CPU reads ``running_var`` at backward time (no version check), so an in-place stats
    update by a later train-mode pass silently corrupts the earlier graph's gradient: the control below shows it.
    """
    import copy

    net0 = bn_net()
    x = torch.randn(16, 4, dtype=torch.float64)

    def grads_of(freeze: bool | None) -> list[torch.Tensor]:
        m = copy.deepcopy(net0)
        out = m(x).pow(2).sum()  # train-mode BN pass
        m[1].eval()
        out = out + m(x).pow(2).sum()  # eval-mode BN pass: its backward uses the running buffers
        m[1].train()
        if freeze is not None:
            if freeze:
                with frozen_bn_stats(m):
                    out = out + m(x * 3 + 1).pow(2).sum()
            else:
                out = out + m(x * 3 + 1).pow(2).sum()
        out.backward()
        return [p.grad.clone() for p in m.parameters()]

    g12 = grads_of(None)
    m3 = copy.deepcopy(net0)  # train-mode pass alone: depends on parameters and batch only
    m3(x * 3 + 1).pow(2).sum().backward()
    ref = [a + p.grad for a, p in zip(g12, m3.parameters())]
    for g, r in zip(grads_of(True), ref):
        torch.testing.assert_close(g, r)
    unfrozen = grads_of(False)  # control: without the context the earlier graph's gradient is wrong
    assert any(not torch.allclose(g, r) for g, r in zip(unfrozen, ref))

"""Invariants of every registered method (parametrised over METHODS.names(): a new method is tested for free).

Each case: a tiny MLP on real mnist5k batches (8 labeled; 16 unlabeled for semi-supervised methods).
"""
from __future__ import annotations

import copy

import pytest
import torch

from robust_core.config import MethodConfig
from robust_core.methods import Batch, Method, StepContext, build_method
from robust_core.registry import METHODS

from conftest import tiny_model

CASES = [(name, False) for name in METHODS.names()]
CASES += [(name, True) for name in METHODS.names() if METHODS.get(name).uses_unlabeled]
IDS = [f"{n}-{'ssl' if s else 'sup'}" for n, s in CASES]


def make_batch(data, ssl: bool, nl: int = 8, nu: int = 16) -> Batch:
    li = torch.from_numpy(data.splits.labeled[:: len(data.splits.labeled) // nl][:nl])
    x, y = data.arrays.x_train[li], data.arrays.y_train[li]
    b = Batch(x, y, li)
    if ssl:
        ui = torch.from_numpy(data.splits.unlabeled[:nu])
        b.ux, b.uidx = data.arrays.x_train[ui], ui
    return b


def setup_case(name: str, data, seed: int = 0) -> tuple[torch.nn.Module, Method, torch.nn.ModuleDict]:
    model = tiny_model("mlp", data.info, seed=seed).train()
    torch.manual_seed(seed)
    method = build_method(MethodConfig(name=name), model=model, info=data.info, n_train=len(data.arrays.y_train))
    aux = torch.nn.ModuleDict(method.modules()).train()
    return model, method, aux


CTX = StepContext(epoch=0, step=0, epochs=2, steps_per_epoch=5, n_train=4000)


def flags(*mods) -> list[tuple[str, bool]]:
    return [(n, m.training) for mod in mods for n, m in mod.named_modules()]


@pytest.fixture(params=CASES, ids=IDS)
def case(request, mnist5k_100):
    name, ssl = request.param
    return name, ssl, mnist5k_100


def test_loss_finite_scalar_and_every_parameter_gets_a_gradient(case):
    name, ssl, data = case
    model, method, aux = setup_case(name, data)
    torch.manual_seed(1)
    out = method.loss(model, make_batch(data, ssl), CTX)
    assert isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0, "loss must be a scalar tensor"
    assert torch.isfinite(out.loss), f"{name}: non-finite loss {out.loss}"
    for k, v in out.logs.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), f"{name}: log {k} = {v}"
    if out.logits is not None:
        assert out.logits.shape == (8, data.info.num_classes)
    out.loss.backward()
    adv = method.adversaries()
    players = set(adv.modules) if adv is not None else set()
    params = list(model.named_parameters()) + [(f"aux.{k}.{n}", p) for k, m in aux.items() if k not in players
                                               for n, p in m.named_parameters()]
    for n, p in params:
        assert p.grad is not None, f"{name}: {n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {n} has a non-finite gradient"


def test_adversaries_are_declared_modules_and_their_loss_trains_only_them(case):
    """Methods with a second player (``adversaries()``): its modules are keys of ``modules()``; ``adversary_loss``,
    computed from what ``loss`` saved, is a finite scalar whose gradient reaches every adversary parameter and no
    classifier parameter (the two optimisers stay apart). Methods without one return None."""
    name, ssl, data = case
    model, method, aux = setup_case(name, data)
    adv = method.adversaries()
    if adv is None:
        return
    assert adv.modules and set(adv.modules) <= set(aux.keys()), f"{name}: {adv.modules} not in {list(aux)}"
    torch.manual_seed(1)
    batch = make_batch(data, ssl)
    out = method.loss(model, batch, CTX)
    assert all(not t.requires_grad for t in out.saved.values()), f"{name}: out.saved must hold detached tensors"
    a = method.adversary_loss(model, batch, CTX, out)
    assert a.loss.dim() == 0 and torch.isfinite(a.loss), f"{name}: adversary loss {a.loss}"
    a.loss.backward()
    assert all(p.grad is None for p in model.parameters()), f"{name}: the adversary loss reached the classifier"
    for k in adv.modules:
        for n, p in aux[k].named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: adversary {k}.{n} got no gradient"


def test_modes_and_optimizer_untouched(case):
    name, ssl, data = case
    model, method, aux = setup_case(name, data)
    model.body[2].eval()  # a mixed state (one BN in eval mode) must come back exactly as found
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    for p in params:  # populate the optimiser state with one step
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    before_opt = copy.deepcopy(opt.state_dict())
    before_flags = flags(model, aux)
    torch.manual_seed(1)
    out = method.loss(model, make_batch(data, ssl), CTX)
    assert flags(model, aux) == before_flags, f"{name} changed train/eval flags"
    after = opt.state_dict()
    assert after["param_groups"] == before_opt["param_groups"]
    assert after["state"].keys() == before_opt["state"].keys()
    for k, s in before_opt["state"].items():
        for kk, v in s.items():
            assert torch.equal(torch.as_tensor(after["state"][k][kk]), torch.as_tensor(v)), f"{name}: opt {k}.{kk}"
    assert all(p.grad is None for p in params), f"{name} wrote gradients during loss (the loop owns backward)"
    out.loss.backward()


def test_same_seed_same_loss(case):
    name, ssl, data = case
    losses = []
    for _ in range(2):
        model, method, _ = setup_case(name, data, seed=3)
        torch.manual_seed(7)
        losses.append(method.loss(model, make_batch(data, ssl), CTX).loss.detach())
    assert torch.equal(losses[0], losses[1]), f"{name}: {losses}"


def test_inference_model_output_shape(case):
    name, ssl, data = case
    model, method, _ = setup_case(name, data)
    inf = method.inference_model(model)
    x = make_batch(data, ssl).x
    with torch.no_grad():
        inf.eval()
        out = inf(x)
    assert out.shape == (len(x), data.info.num_classes)
    assert torch.isfinite(out).all()


def test_every_method_documents_itself():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.__doc__ and len(cls.__doc__.strip()) > 40, f"method {name} needs a docstring (paper, params)"
        assert issubclass(cls, Method)

"""What a training method is: typed parameters + a loss on a batch. The ``fit`` loop owns everything else.

To add a method, write one file in this package::

    @METHODS.register("mymethod")
    class MyMethod(Method):
        '''Paper, threat model, every argument with unit and default.'''
        class Params(MethodParams):
            lam: float = Field(1.0, ge=0)      # weight of the regulariser
        def loss(self, model, batch, ctx):
            ...
            return LossOutput(loss, {"ce": ce.detach()}, logits)

and one search space ``sweeps/spaces/mymethod.yaml``. Registry-wide tests then check it (finite loss, every
parameter gets a gradient, the optimiser and the model's modes untouched).

A method never calls ``zero_grad``/``step``, never changes the model's train/eval mode without restoring it (use
``robust_core.modes``), takes device and dtype from its inputs, and never reads a device value on the host inside
``loss`` (no ``.item()``, ``float(t)``, ``if t:``, boolean-mask indexing): logs are tensors, the loop reads them once
per epoch (``tests/test_step_sync.py`` checks every registered method). A method with trainable parts of its own
(a generator, a discriminator, a table of per-example parameters) returns them from ``modules()``: the loop adds
them to the optimiser and to checkpoints (adversaries get their own optimiser, below).

Adversaries (a two-player game such as ATLD's classifier vs discriminator): a method whose ``modules()`` include
players with an objective of their own returns, from ``adversaries()``, an ``Adversaries`` naming those modules and
their optimiser. The loop then

1. builds the classifier's optimiser over the model and the *other* modules only, and a second optimiser over the
   named modules (its own kind, lr, momentum, weight decay; lr constant or following the train schedule);
2. each step: ``out = loss(model, batch, ctx)``, classifier ``backward`` + ``step``; then ``steps`` times
   ``adversary_loss(model, batch, ctx, out)`` → ``backward`` + adversary ``step`` (gradients of the adversaries are
   zeroed first, so whatever ``loss`` wrote into them is discarded). ``out.saved`` carries detached tensors from
   ``loss`` (e.g. the classifier's logits) so ``adversary_loss`` needs no new forward pass of the classifier;
   the logs of the last adversary step are merged into the step's logs;
3. checkpoints and restores the adversary optimiser, its schedule and its gradient scaler.

Gradients that ``loss`` writes into the adversaries are discarded (cheaper to keep them out: evaluate the
adversaries with detached weights, ``torch.func.functional_call``); ``adversary_loss`` must build its graph from
``out.saved`` or fresh forward passes, never from ``out.loss``'s graph (freed by then). Methods without adversaries
(``adversaries()`` returns None, the default) are trained exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from robust_core.data.base import DatasetInfo


class MethodParams(BaseModel):
    """Base of every method's parameter class: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Batch:
    x: torch.Tensor  # labeled inputs in [0, 1]
    y: torch.Tensor  # labels
    idx: torch.Tensor  # indices of the labeled examples in the training arrays
    ux: torch.Tensor | None = None  # unlabeled inputs (None in supervised runs)
    uidx: torch.Tensor | None = None


@dataclass
class StepContext:
    epoch: int  # 0-based
    step: int  # global step, 0-based
    epochs: int
    steps_per_epoch: int
    n_train: int = 0  # size of the training arrays (for per-example parameters)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)  # scalars averaged per epoch
    logits: torch.Tensor | None = None  # clean logits of the labeled batch (for train accuracy), if computed
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # detached tensors for ``adversary_loss``


@dataclass(frozen=True)
class Adversaries:
    """Which of a method's ``modules()`` are adversaries and how the loop optimises them (see the module docstring).

    modules: keys of ``modules()`` trained on ``adversary_loss`` by this optimiser (never by the classifier's).
    optimizer: ``sgd`` or ``adam`` (AdamW, ``momentum`` = beta1). lr: learning rate. momentum, nesterov,
    weight_decay: as in ``TrainConfig``. steps: adversary updates per classifier update, on the same batch (≥ 1).
    follow_schedule: multiply lr by the train schedule's factor (else constant).
    """

    modules: tuple[str, ...]
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    steps: int = 1
    follow_schedule: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam") or not self.lr > 0 or self.steps < 1 or self.weight_decay < 0:
            raise ValueError(f"Adversaries: optimizer must be sgd|adam, lr > 0, steps ≥ 1, weight_decay ≥ 0 (got "
                             f"{self.optimizer!r}, {self.lr}, {self.steps}, {self.weight_decay})")


class Method:
    Params: ClassVar[type[MethodParams]] = MethodParams
    uses_unlabeled: ClassVar[bool] = False  # consumes the unlabeled batch when the run is semi-supervised
    registry_name: ClassVar[str]

    def __init__(self, params: MethodParams, model: nn.Module, info: DatasetInfo, n_train: int = 0) -> None:
        self.p = params
        self.info = info
        self.n_train = n_train

    def modules(self) -> dict[str, nn.Module]:
        """Trainable parts the method owns besides the classifier (optimised and checkpointed by the loop)."""
        return {}

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        raise NotImplementedError

    def adversaries(self) -> Adversaries | None:
        """The method's adversaries and their optimiser, or None (the default: no second player)."""
        return None

    def adversary_loss(self, model: nn.Module, batch: Batch, ctx: StepContext, out: LossOutput) -> LossOutput:
        """The adversaries' loss on the batch ``loss`` just saw (``out`` is what it returned); minimised by the
        adversaries' optimiser only. Needed when ``adversaries()`` is not None."""
        raise NotImplementedError

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The model evaluated and attacked at test time (e.g. a wrapper with an inference-time transformation)."""
        return model


def build_method(cfg, model: nn.Module, info: DatasetInfo, n_train: int = 0) -> Method:
    from robust_core.registry import METHODS

    cls = METHODS.get(cfg.name)
    return cls(cls.Params.model_validate(cfg.params), model=model, info=info, n_train=n_train)

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
them to the optimiser and to checkpoints.
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

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The model evaluated and attacked at test time (e.g. a wrapper with an inference-time transformation)."""
        return model


def build_method(cfg, model: nn.Module, info: DatasetInfo, n_train: int = 0) -> Method:
    from robust_core.registry import METHODS

    cls = METHODS.get(cfg.name)
    return cls(cls.Params.model_validate(cfg.params), model=model, info=info, n_train=n_train)

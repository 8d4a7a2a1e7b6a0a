"""Supervised baseline (maximum likelihood): cross-entropy on the labeled batch; no perturbation, no threat model."""
from __future__ import annotations

import torch.nn.functional as F

from robust_core.methods.base import Batch, LossOutput, Method, MethodParams, StepContext
from robust_core.registry import METHODS


@METHODS.register("mle")
class MLE(Method):
    """Plain cross-entropy training. In a semi-supervised run it uses only the labeled examples.

    Params: none.
    """

    class Params(MethodParams):
        pass

    def loss(self, model, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        return LossOutput(ce, {"ce": ce.detach()}, logits)

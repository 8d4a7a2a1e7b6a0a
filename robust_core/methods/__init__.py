"""Training methods (registry ``METHODS``): one file per method; see ``base.py`` for how to add one."""
from robust_core.methods.base import (Adversaries, Batch, LossOutput, Method, MethodParams, StepContext,
                                      build_method)

__all__ = ["Adversaries", "Batch", "LossOutput", "Method", "MethodParams", "StepContext", "build_method"]

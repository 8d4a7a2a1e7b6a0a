"""Models (registry ``MODELS``): one file per family, each registered by name."""
from __future__ import annotations

from robust_core.data.base import DatasetInfo
from robust_core.models.base import Classifier, Normalize
from robust_core.registry import MODELS

__all__ = ["Classifier", "Normalize", "build_model"]


def build_model(cfg, info: DatasetInfo) -> Classifier:
    """Build the model named in a ``ModelConfig`` for a dataset."""
    params = dict(cfg.params)
    if isinstance(params.get("hidden"), list):  # YAML lists -> the tuples the constructors take (smallcnn: an int)
        params["hidden"] = tuple(params["hidden"])
    return MODELS.get(cfg.name)(info, **params)

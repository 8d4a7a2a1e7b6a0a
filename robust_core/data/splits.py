"""Seeded, class-balanced splits of a training set into validation, labeled and unlabeled parts.

The validation set is always carved from *train* (never from test). Randomness is numpy's PCG64 with an explicit
seed, which gives the same indices on every platform and numpy version that keeps PCG64's stream (all since 1.17).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Splits:
    labeled: np.ndarray  # indices into the training arrays
    unlabeled: np.ndarray  # empty for supervised runs
    val: np.ndarray

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.labeled, self.unlabeled, self.val):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def _balanced_take(rng: np.random.Generator, pools: list[np.ndarray], n: int, what: str) -> list[np.ndarray]:
    """Take ``n`` items spread as evenly as possible over the class pools (remainder to random classes)."""
    k = len(pools)
    per = np.full(k, n // k)
    per[rng.permutation(k)[: n % k]] += 1
    taken = []
    for c, (pool, m) in enumerate(zip(pools, per)):
        if m > len(pool):
            raise ValueError(f"{what}: class {c} has only {len(pool)} examples left, {m} requested")
        taken.append(pool[:m])
    return taken


def make_splits(y: torch.Tensor | np.ndarray, num_classes: int, n_val: int, n_labeled: int | None, seed: int) -> Splits:
    y = np.asarray(y)
    if n_val >= len(y):
        raise ValueError(f"n_val={n_val} leaves no training data (the training set has {len(y)} examples)")
    rng = np.random.Generator(np.random.PCG64(seed))
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    val = _balanced_take(rng, pools, n_val, "validation split")
    pools = [p[len(v):] for p, v in zip(pools, val)]
    val_idx = np.sort(np.concatenate(val))
    if n_labeled is None:
        labeled = np.sort(np.concatenate(pools))
        unlabeled = np.empty(0, dtype=np.int64)
    else:
        if n_labeled % num_classes:
            raise ValueError(f"n_labeled={n_labeled} is not a multiple of the {num_classes} classes")
        lab = _balanced_take(rng, pools, n_labeled, "labeled split")
        labeled = np.sort(np.concatenate(lab))
        unlabeled = np.sort(np.concatenate([p[len(l):] for p, l in zip(pools, lab)]))
    return Splits(labeled.astype(np.int64), unlabeled.astype(np.int64), val_idx.astype(np.int64))

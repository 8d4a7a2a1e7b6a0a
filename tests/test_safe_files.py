"""Model, checkpoint and dataset files load as data only: a crafted pickle is refused with an error naming the file,
and the command it carries never runs. Checkpoints keep every RNG state in a form ``weights_only`` accepts."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from robust_core.cli import main
from robust_core.errors import BadFileError
from robust_core.reporting import CheckpointDir, load_state
from robust_core.train import fit, numpy_rng_state, python_rng_state, set_numpy_rng_state, set_python_rng_state
from robust_core.trial import load_trained, run_trial


class RunsCommand:
    """Unpickling this object runs a shell command (what an attacker would put into a model file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model.pt written by run_trial (2 steps of a tiny MLP)."""
    from robust_core.config import load_run_config

    out = tmp_path_factory.mktemp("trained")
    cfg = load_run_config(overrides=["data.name=mnist5k", "model.params.hidden=[16]", "train.epochs=1",
                                     "train.steps_per_epoch=2", "train.eval_batch_size=500", "train.device=cpu"])
    run_trial(cfg, out_dir=out)
    return out


def test_model_file_loads_as_data(trained):
    cfg, model, method = load_trained(trained)
    assert cfg.model.params == {"hidden": [16]} and not model.training


def test_crafted_model_file_is_refused_and_runs_nothing(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    blob = torch.load(trained / "model.pt", weights_only=True)
    blob["history"] = [RunsCommand(marker)]  # everything else is a real model
    bad = tmp_path / "model.pt"
    torch.save(blob, bad)
    with pytest.raises(BadFileError, match="refused to load") as e:
        load_trained(bad)
    assert e.value.path == str(bad) and "system" in str(e.value)
    assert main(["eval", str(tmp_path), "--suite", "whitebox", "--n-examples", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "could run code" in err
    assert not marker.exists()
    # the same pickle loaded the unsafe way would have run the command: the test's file is a real threat
    torch.load(bad, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_model_file_is_an_input_error_naming_it(trained, tmp_path, capsys, damage):
    good = (trained / "model.pt").read_bytes()
    data = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": os.urandom(2000)}[damage]
    bad = tmp_path / "model.pt"
    bad.write_bytes(data)
    assert main(["eval", str(bad), "--suite", "whitebox", "--n-examples", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "cannot read this model file" in err


def test_checkpoint_rng_states_are_plain_data_and_round_trip(tmp_path, tiny_cfg, mnist5k_100):
    fit(tiny_cfg(["train.epochs=1", "train.steps_per_epoch=2"]), reporter=CheckpointDir(tmp_path), data=mnist5k_100)
    state = load_state(tmp_path / "checkpoint.pt")  # weights_only=True: would raise on a numpy array or a global
    assert isinstance(state["numpy_rng"]["keys"], torch.Tensor) and isinstance(state["python_rng"]["internal"], list)
    np_s, py_s = numpy_rng_state(), python_rng_state()
    expect = (np.random.rand(3).tolist(), np.random.randn(2).tolist(), random.random())
    set_numpy_rng_state(np_s)
    set_python_rng_state(py_s)
    assert (np.random.rand(3).tolist(), np.random.randn(2).tolist(), random.random()) == expect


def test_tampered_cifar_pickle_is_refused_as_corrupt_and_runs_nothing(tmp_path):
    from robust_core.data.sources.torchvision_sets import CorruptDataError, _read_cifar_batch
    from robust_core.data.sources.torchvision_sets import write_pickle

    good = tmp_path / "good"
    write_pickle(good, {b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8)})
    x, y = _read_cifar_batch(good, "labels", 10)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    write_pickle(bad, {b"labels": [1], b"data": RunsCommand(marker)})
    with pytest.raises(CorruptDataError, match=r"refused global (posix|nt)\.system"):
        _read_cifar_batch(bad, "labels", 10)
    assert not marker.exists()

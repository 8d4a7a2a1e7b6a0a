"""The demo's store after the demo: the README's commands that take a run id (``eval <run id> --tracking-uri
sqlite:///…``, ``trial --from-run <run id> --tracking-uri …``) work on it once the demo's temporary MLflow server is
gone, and nothing the demo writes or prints names that server. The real demo path (server, two sweeps, pipeline) on
the smallest budget that runs it: one trial per sweep, one epoch of 3 steps, one seed."""
from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import ray

    import pipelines.demo as demo

    out = tmp_path_factory.mktemp("demo") / "d"
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "QUICK_SWEEP", ["num_trials=1", "max_concurrent=1", "base.train.epochs=1",
                                     "base.train.steps_per_epoch=3", "scheduler.grace_period=1"])
    mp.setattr(demo, "QUICK_PIPELINE", {"seeds": [0]})
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = demo.run_demo(out, quick=True)
    finally:
        mp.undo()
        ray.shutdown()
    return out, rc, buf.getvalue()


def test_demo_names_no_temporary_server(demo):
    out, rc, printed = demo
    assert rc == 0
    servers = set(re.findall(r"https?://[\w.:-]+", printed)) - {"http://127.0.0.1:5000"}  # the UI it tells you to open
    assert not servers, servers
    assert f"sqlite:///{out / 'mlflow.db'}" in printed
    for f in ("lineage.json", "index.md", "REPRODUCTION.md"):
        assert "http://" not in (out / "results" / f).read_text(), f
    assert json.loads((out / "results" / "lineage.json").read_text())["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"


def test_readme_run_id_commands_work_on_the_store_after_the_demo(demo, tmp_path, capsys, monkeypatch):
    from robust_core.cli import main

    out, _, _ = demo
    store = f"sqlite:///{out / 'mlflow.db'}"
    lineage = json.loads((out / "results" / "lineage.json").read_text())
    cell = next(iter(next(iter(lineage["tables"].values())).values()))
    retrain = next(iter(next(iter(cell.values()))["retrain_run_ids"].values()))
    trial = next(s["trial_run_id"] for s in lineage["selections"].values() if s["trial_run_id"])
    monkeypatch.chdir(tmp_path)
    assert main(["eval", retrain, "--tracking-uri", store, "--suite", "whitebox", "--n-examples", "40",
                 "--steps", "2", "--experiment", "readme-eval"]) == 0
    assert "logged evaluation run" in capsys.readouterr().out
    assert main(["trial", "--from-run", trial, "--tracking-uri", store, "--out", str(tmp_path / "t"), "--quiet",
                 "--no-resume", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2"]) == 0
    assert (tmp_path / "t" / "model.pt").is_file()

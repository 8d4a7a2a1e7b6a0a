"""The `smoke` profile end to end, as a user runs it (`robust-sweep final pipelines/smoke.yaml`): tiny generated data
in each dataset's on-disk format → retrains as Ray tasks → every evaluation suite → every table (md/csv/tex) and
figure (png/pdf/csv) of the catalogue, an index and lineage, all logged to MLflow; a rerun trains and evaluates
nothing; ``--only`` renders one output."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from pipelines.final import run_pipeline
from pipelines.plan import make_plan
from pipelines.spec import load_pipeline_spec
from robust_core import tracking
from robust_core.cli import main
from pipelines.tables import PREAMBLE
from robust_core.config import read_yaml

pytestmark = pytest.mark.e2e
SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.yaml"
_CATALOG = read_yaml(SMOKE.parent / "catalog.yaml")  # test_pipeline_plan checks it holds the papers' outputs
CATALOG_TABLES = [t["name"] for t in _CATALOG["tables"]]
CATALOG_FIGURES = [f["name"] for f in _CATALOG["figures"]]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import ray

    started_here = not ray.is_initialized()
    cwd = tmp_path_factory.mktemp("smoke")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    try:
        code = main(["final", str(SMOKE)])
    finally:
        mp.undo()
    assert code == 0
    yield cwd, load_pipeline_spec(SMOKE, cwd=cwd)
    if started_here:  # the pipeline started a local Ray instance: leave none behind for other test modules
        ray.shutdown()


def test_smoke_writes_every_table_and_figure(smoke_run):
    cwd, spec = smoke_run
    out = Path(spec.output_dir)
    assert out == cwd / "robust-sweep-smoke" / "results"
    for name in CATALOG_TABLES:
        md = (out / "tables" / f"{name}.md").read_text()
        assert md.startswith("### ") and "(smoke: tiny generated data)" in md, name
        assert "| Method |" in md
        assert (out / "tables" / f"{name}.csv").read_text().startswith("table,method,column")
        assert (out / "tables" / f"{name}.tex").read_text().startswith(f"{PREAMBLE}\n\\begin{{table}}")
        assert "—" not in md, f"{name} has a missing cell:\n{md}"  # every cell computed on the smoke data
    for name in CATALOG_FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF", name
        rows = (out / "figures" / f"{name}.csv").read_text().splitlines()
        assert len(rows) > 1 and all(r.split(",")[5] for r in rows[1:] if name != "fat_epochs_to_reach"), name
    index = (out / "index.md").read_text()
    assert all(f"(tables/{n}.md)" in index for n in CATALOG_TABLES)
    assert all(f"(figures/{n}.png)" in index for n in CATALOG_FIGURES)
    # the data really was written in torchvision's formats and read back by the real loaders
    data = cwd / "robust-sweep-smoke" / "data"
    assert (data / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert (data / "train_32x32.mat").is_file() and (data / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert (data / "cifar-100-python" / "train").is_file()


def test_every_published_value_is_shown_with_a_verdict(smoke_run):
    """smoke runs every paper dataset (tiny data in its format): each catalogued published value stands beside its
    cell with a verdict (none for seconds on other hardware), and REPRODUCTION.md, linked from the index and logged
    to the pipeline run, covers every table."""
    cwd, spec = smoke_run
    out = Path(spec.output_dir)
    for t in _CATALOG["tables"]:
        rows = iter(csv.DictReader(io.StringIO((out / "tables" / f"{t['name']}.csv").read_text())))
        for r in t["rows"]:
            for c in t["columns"]:  # smoke keeps every column, in the catalogue's order
                cell = next(rows)
                pv = (r.get("paper") or {}).get(c["label"], {})
                assert (cell["paper"] != "") == (pv.get("value") is not None), (t["name"], r["label"], c["label"])
                if pv.get("value") is not None:
                    assert float(cell["paper"]) == pv["value"]
                    want = {"reference only"} if c.get("value") == "epoch_time" else {"reproduced", "not reproduced"}
                    assert cell["verdict"] in want, (t["name"], r["label"], c["label"], cell)
                elif pv:  # published but unreadable in the extracted text: its note is the cell's footnote
                    assert pv["note"] in cell["note"]
    repro = (out / "REPRODUCTION.md").read_text()
    assert repro.startswith("# Reproduction: smoke (smoke: tiny generated data)")
    assert all(f"## [{t.title}" in repro and f"](tables/{t.name}.md)" in repro for t in spec.tables)
    assert "(REPRODUCTION.md)" in (out / "index.md").read_text()
    lineage = json.loads((out / "lineage.json").read_text())
    client = tracking.client(spec.tracking.uri)
    assert "REPRODUCTION.md" in {a.path for a in client.list_artifacts(lineage["pipeline_run_id"])}


def test_lineage_and_mlflow_trace_every_cell(smoke_run):
    cwd, spec = smoke_run
    out = Path(spec.output_dir)
    lineage = json.loads((out / "lineage.json").read_text())
    client = tracking.client(spec.tracking.uri)
    parent = client.get_run(lineage["pipeline_run_id"])
    assert parent.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert {f"tables/{n}.md" for n in CATALOG_TABLES} <= logged
    figs = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {f"figures/{n}.pdf" for n in CATALOG_FIGURES} <= figs
    wb = lineage["tables"]["atld_whitebox"]["ATLD+"]
    cell = next(iter(wb.values()))
    assert len(cell["retrain_run_ids"]) == len(spec.seeds) and len(cell["eval_run_ids"]) == len(spec.seeds)
    assert cell["trial_run_id"] == "" and cell["selection"] == {"defaults (no sweep)": None}  # smoke: no sweeps
    ev = client.get_run(cell["eval_run_ids"]["0"])
    assert ev.data.tags["robust_sweep.kind"] == "evaluation"
    assert ev.data.tags["robust_sweep.model_run_id"] == cell["retrain_run_ids"]["0"]
    rt = client.get_run(cell["retrain_run_ids"]["0"])
    assert rt.data.tags["robust_sweep.kind"] == "retrain" and "test_acc" in rt.data.metrics
    # per-epoch test accuracy exists only on retrains (learning curves), recorded after selection
    assert len(client.get_metric_history(rt.info.run_id, "test_acc")) >= 2


def test_rerun_reuses_everything_and_only_renders_one(smoke_run):
    cwd, spec = smoke_run
    out = Path(spec.output_dir)
    before = {n: (out / "tables" / f"{n}.md").read_text() for n in CATALOG_TABLES}
    plan = make_plan(spec)
    res = run_pipeline(spec, log=lambda *a: None)
    assert (res["trained"], res["reused"]) == (0, len(plan.retrains))
    assert (res["evaluated"], res["evals_reused"]) == (0, len(plan.evals))
    assert {n: (out / "tables" / f"{n}.md").read_text() for n in CATALOG_TABLES} == before  # same runs, same tables
    one = run_pipeline(spec, only="atld_ablation", log=lambda *a: None)
    assert one["tables"] == {} and set(one["figures"]) == {"atld_ablation"} and one["trained"] == 0
    index = (out / "index.md").read_text()  # --only keeps the other outputs listed, and their lineage
    assert all(f"(tables/{n}.md)" in index for n in CATALOG_TABLES)
    assert all(f"(figures/{n}.png)" in index for n in CATALOG_FIGURES)
    assert set(json.loads((out / "lineage.json").read_text())["tables"]) == set(CATALOG_TABLES)
    assert all(f"](tables/{n}.md)" in (out / "REPRODUCTION.md").read_text() for n in CATALOG_TABLES)  # kept as well

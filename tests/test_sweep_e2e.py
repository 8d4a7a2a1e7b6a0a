"""A tiny real sweep through Ray Tune, Optuna (TPE), ASHA and MLflow (SQLite), then the same sweep again (resume)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.console import format_value

pytestmark = pytest.mark.e2e

EPOCHS = 3
N_TRIALS = 4


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    from sweeps.runner import run_sweep
    from sweeps.spec import build_sweep_config

    tmp = tmp_path_factory.mktemp("sweep")
    cfg = build_sweep_config({
        "name": "e2e-vat",
        "base": {"data": {"name": "mnist5k", "n_labeled": 100}, "model": {"name": "mlp", "params": {"hidden": [32]}},
                 "method": {"name": "vat"},
                 "train": {"epochs": EPOCHS, "steps_per_epoch": 5, "batch_size": 32, "unlabeled_batch_size": 64,
                           "eval_batch_size": 500}},
        "search_space": None, "num_trials": N_TRIALS, "max_concurrent": 2, "metric": "val_acc", "mode": "max",
        "seed": 0, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0}, "max_failures": 1,
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "e2e"}, "storage": "ray",
        "optuna_storage": "sqlite:///optuna.db",
    }, cwd=tmp)
    summary = run_sweep(cfg, progress=False)
    return cfg, summary


def _children(cfg, summary):
    from robust_core.tracking import find_runs

    return find_runs(cfg.tracking.uri, cfg.tracking.experiment, "tags.`robust_sweep.kind` = 'trial'")


def test_parent_and_children_in_mlflow(sweep):
    from robust_core.tracking import client, find_runs

    cfg, summary = sweep
    assert summary.n_trials == N_TRIALS and summary.n_errored == 0
    assert summary.n_finished + summary.n_stopped_early == N_TRIALS and summary.n_finished >= 1
    parents = find_runs(cfg.tracking.uri, cfg.tracking.experiment, "tags.`robust_sweep.kind` = 'sweep'")
    assert [p.info.run_id for p in parents] == [summary.parent_run_id]
    ptags = parents[0].data.tags
    assert ptags["robust_sweep.sweep"] == "e2e-vat" and ptags["robust_sweep.method"] == "vat"
    assert ptags["robust_sweep.dataset"] == "mnist5k" and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["max_t"] == str(EPOCHS)
    assert ptags["robust_sweep.version.ray"] and len(ptags["robust_sweep.git_commit"]) == 40

    children = _children(cfg, summary)
    assert len(children) == N_TRIALS
    c = client(cfg.tracking.uri)
    n_stopped = 0
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == summary.parent_run_id
        assert tags["robust_sweep.kind"] == "trial" and tags["robust_sweep.sweep"] == "e2e-vat"
        # named by what distinguishes it (the Ray id is a tag)
        assert run.info.run_name.startswith("vat ") and tags["robust_sweep.trial_id"] not in run.info.run_name
        assert f"eps={format_value(float(params['method.params.eps']))}" in run.info.run_name.split()
        assert run.info.status == "FINISHED"
        eps = float(params["method.params.eps"])
        lo, hi = cfg.search_space["method.params.eps"].args
        assert lo <= eps <= hi
        assert params["model.params.hidden"] == "[32]" and params["train.epochs"] == str(EPOCHS)
        done = int(tags["robust_sweep.epochs_done"])
        stopped = tags["robust_sweep.stopped_early"] == "true"
        assert stopped == (done < EPOCHS)
        n_stopped += stopped
        hist = c.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(h.step for h in hist) == list(range(1, done + 1))
        assert run.data.metrics["best_val_acc"] == pytest.approx(max(h.value for h in hist))
        assert len(c.get_metric_history(run.info.run_id, "train_lds")) == done
        assert "config.yaml" in [a.path for a in c.list_artifacts(run.info.run_id)]
    assert n_stopped == summary.n_stopped_early
    assert summary.best["run_id"] in {r.info.run_id for r in children}
    assert summary.best["config"]["method"]["params"]["eps"] == summary.best["sampled"]["method.params.eps"]
    parent = c.get_run(summary.parent_run_id)
    assert parent.data.metrics["best_trial_val_acc"] == pytest.approx(summary.best["value"])
    assert "best_val_acc" not in parent.data.metrics  # one name per meaning: a trial's best_val_acc is its best epoch
    assert f"runs/{summary.best['run_id']})" in parent.data.tags["mlflow.note.content"]
    report = {a.path for a in c.list_artifacts(summary.parent_run_id, "report")}
    assert {"report/learning_curves.png", "report/trials.txt", "report/README.md"} <= report
    # finished trials keep no checkpoints (a resumed sweep never reruns them)
    assert not list(Path(summary.storage_path).glob("*/checkpoint_*"))


def test_optuna_marks_asha_stopped_trials_pruned(sweep):
    import optuna

    cfg, summary = sweep
    study = optuna.load_study(study_name="e2e-vat", storage=cfg.optuna_storage)
    states = [t.state for t in study.trials]
    assert len(states) == N_TRIALS
    assert states.count(optuna.trial.TrialState.PRUNED) == summary.n_stopped_early
    assert states.count(optuna.trial.TrialState.COMPLETE) == summary.n_finished


def test_rerun_resumes_without_retraining(sweep):
    from robust_core.tracking import client
    from sweeps.runner import run_sweep

    cfg, summary = sweep
    c = client(cfg.tracking.uri)
    before = {r.info.run_id: len(c.get_metric_history(r.info.run_id, "val_acc")) for r in _children(cfg, summary)}
    again = run_sweep(cfg, progress=False)
    assert again.resumed and again.parent_run_id == summary.parent_run_id
    assert again.n_trials == N_TRIALS and again.best["trial_id"] == summary.best["trial_id"]
    after = {r.info.run_id: len(c.get_metric_history(r.info.run_id, "val_acc")) for r in _children(cfg, summary)}
    assert after == before  # no new child runs, no new epochs


def test_trial_resumes_from_tune_checkpoint_after_failure(ray_session, tmp_path):
    """A trial that crashes after epoch 2 is retried (FailureConfig) and continues from its epoch-2 checkpoint."""
    from ray import tune

    from robust_core.config import load_run_config
    from robust_core.reporting import Many, Reporter
    from robust_core.trial import run_trial
    from sweeps.runner import TuneReporter

    marker = tmp_path / "crashed"
    trained = tmp_path / "epochs"  # every epoch reported, across both attempts (written by the trial itself)
    cfg = load_run_config(overrides={"data": {"name": "mnist5k", "n_labeled": 100}, "method": {"name": "mle"},
                                     "model": {"params": {"hidden": [16]}},
                                     "train": {"epochs": 3, "steps_per_epoch": 2, "eval_batch_size": 500}})

    class CrashOnce(Reporter):
        def report(self, metrics, state):
            with open(trained, "a") as f:
                f.write(f"{metrics['epoch']}\n")
            if metrics["epoch"] == 2 and not marker.exists():
                marker.write_text("")
                raise RuntimeError("simulated node loss after epoch 2")

    def trainable(config):
        reporter = TuneReporter()
        resumed = reporter.restore() is not None
        run_trial(cfg, Many(reporter, CrashOnce()))
        tune.report({"done": 1, "resumed": resumed})

    res = tune.Tuner(trainable, run_config=tune.RunConfig(
        name="crash", storage_path=str(tmp_path / "ray"), verbose=0,
        failure_config=tune.FailureConfig(max_failures=1))).fit()
    r = res[0]
    assert r.error is None and marker.exists()
    assert r.metrics["resumed"] is True
    # epoch 2 is not trained twice and epoch 1 not again: the retry starts from the epoch-2 checkpoint. (Read from
    # the trial's own log: Tune's progress.csv sometimes keeps only the rows written after the restore.)
    assert trained.read_text().split() == ["1", "2", "3"]
    assert int(r.metrics_dataframe["epoch"].dropna().iloc[-1]) == 3


def test_final_pipeline_on_the_sweep_then_rerun_reuses(sweep, tmp_path):
    """The final pipeline selects the sweep's best trial (validation), retrains it over 2 seeds as Ray tasks, writes
    the table with lineage to the runs; a second run trains nothing and gives the same table."""
    import json

    from pipelines.final import run_pipeline
    from pipelines.spec import PipelineSpec
    from robust_core.tracking import find_runs

    cfg, summary = sweep
    spec = PipelineSpec.model_validate({
        "name": "e2e", "output_dir": str(tmp_path / "out"),
        "tracking": {"uri": cfg.tracking.uri, "experiment": cfg.tracking.experiment}, "seeds": [0, 1],
        "tables": [{"name": "ssl", "title": "SSL mnist5k (100)", "rows": [{"label": "VAT", "sweep": "e2e-vat"}]}]})
    res = run_pipeline(spec, log=lambda *a: None)
    assert res["trained"] == 2 and res["reused"] == 0

    retrains = find_runs(cfg.tracking.uri, cfg.tracking.experiment, "tags.`robust_sweep.kind` = 'retrain'")
    assert len(retrains) == 2
    best_trial = summary.best["run_id"]
    for r in retrains:
        assert r.info.status == "FINISHED"
        assert r.data.tags["robust_sweep.source_trial_run_id"] == best_trial
        assert r.data.tags["mlflow.parentRunId"] == res["parent_run_id"]
        assert 0.0 <= r.data.metrics["test_acc"] <= 1.0
        assert r.data.params["method.params.eps"] == str(summary.best["config"]["method"]["params"]["eps"])
    assert {r.data.tags["robust_sweep.seed"] for r in retrains} == {"0", "1"}

    md = (tmp_path / "out" / "tables" / "ssl.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| VAT |"))
    accs = sorted(100 * r.data.metrics["test_acc"] for r in retrains)
    mean = sum(accs) / 2
    assert f"{mean:.2f} ± " in row  # the cell is the mean of exactly these runs' test accuracies
    csv_line = (tmp_path / "out" / "tables" / "ssl.csv").read_text().splitlines()[1]
    assert all(r.info.run_id in csv_line for r in retrains)
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    cell = lineage["tables"]["ssl"]["VAT"]["test accuracy (%)"]
    assert cell["trial_run_id"] == best_trial and cell["sweep"] == "e2e-vat"
    assert set(cell["retrain_run_ids"].values()) == {r.info.run_id for r in retrains}
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "out" / "tables" / f"ssl.{ext}").is_file()

    again = run_pipeline(spec, log=lambda *a: None)
    assert again["trained"] == 0 and again["reused"] == 2
    assert (tmp_path / "out" / "tables" / "ssl.md").read_text() == md
    assert len(find_runs(cfg.tracking.uri, cfg.tracking.experiment, "tags.`robust_sweep.kind` = 'retrain'")) == 2


def _all_methods():
    from robust_core.registry import METHODS

    return METHODS.names()


def _method_sweep(method: str, cwd: Path):
    """A 2-trial sweep of ``method`` with its own search space (sweeps/spaces/<method>.yaml, mnist5k entry or
    default), a tiny MLP and 2 steps; semi-supervised methods get 100 labels."""
    from robust_core.registry import METHODS
    from sweeps.spec import build_sweep_config

    data = {"name": "mnist5k", **({"n_labeled": 100} if METHODS.get(method).uses_unlabeled else {})}
    return build_sweep_config({
        "name": f"all-{method}",
        "base": {"data": data, "model": {"name": "mlp", "params": {"hidden": [16]}}, "method": {"name": method},
                 "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "unlabeled_batch_size": 16,
                           "eval_batch_size": 500}},
        "num_trials": 2, "max_concurrent": 2, "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "all"}, "storage": "ray",
    }, cwd=cwd)


@pytest.mark.parametrize("method", _all_methods())
def test_every_method_search_space_drives_the_sweeps_searcher_and_a_trial(tmp_path, method):
    """Each registered method's own search space validates, the sweep's own searcher (``make_searcher``: seeded TPE
    behind Tune's OptunaSearch and its concurrency limit) proposes two different configurations from it, and each
    becomes the trial's typed config exactly as the trainable builds it (``cfg.trial_config`` of Tune's flat dict)
    and trains through ``run_trial``. A new method is covered with no new test; the Ray + MLflow path of a sweep is
    the same for every method and runs for real below for a supervised, a semi-supervised and an adversary-trained
    one."""
    from robust_core.trial import run_trial
    from sweeps.runner import make_searcher

    cfg = _method_sweep(method, tmp_path)
    assert cfg.search_space, f"sweeps/spaces/{method}.yaml gives no search space"
    searcher = make_searcher(cfg)
    proposed = [searcher.suggest(f"trial_{i}") for i in range(2)]
    assert all(set(p) == set(cfg.search_space) for p in proposed), proposed  # Tune's flat dict: the space's keys
    assert proposed[0] != proposed[1]  # the searcher drew two different configurations
    for p in proposed:
        run_cfg = cfg.trial_config(p)
        assert all(run_cfg.flat()[k] == v for k, v in p.items())  # the sampled values reach the trial's config
        final, res = run_trial(run_cfg)
        assert len(res.history) == 1 and 0.0 <= final["val_acc"] <= 1.0


@pytest.mark.parametrize("method", ["mle", "vat", "atld"])
def test_a_real_two_trial_sweep_for_each_kind_of_method(ray_session, tmp_path, method):
    """Supervised (mle), semi-supervised (vat: unlabeled batches) and adversary-trained (atld: its own optimiser in
    the checkpoint): 2 trials each through Ray Tune, Optuna and MLflow, with the method's own search space."""
    from robust_core.tracking import find_runs
    from sweeps.runner import run_sweep

    cfg = _method_sweep(method, tmp_path)
    summary = run_sweep(cfg, progress=False)
    assert summary.n_errored == 0 and summary.n_finished == 2
    runs = find_runs(cfg.tracking.uri, "all", "tags.`robust_sweep.kind` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    sampled = [{k: r.data.params[k] for k in cfg.search_space} for r in runs]
    assert sampled[0] != sampled[1]  # the searcher drew two different configurations


def test_sweep_on_the_robust_validation_metric_computed_at_asha_rungs_only(ray_session, tmp_path):
    """A sweep that searches and selects on val_robust_acc, computed only at ASHA's rung (epoch 2) and the last epoch
    (4): Tune, ASHA and Optuna accept the epochs without it, ASHA compares trials on it, the best trial is chosen on
    it, and MLflow has it exactly at those epochs."""
    import optuna

    from robust_core.tracking import client, find_runs
    from sweeps.runner import run_sweep
    from sweeps.spec import build_sweep_config

    cfg = build_sweep_config({
        "name": "e2e-robust",
        "base": {"data": {"name": "mnist5k", "n_val": 100}, "model": {"name": "mlp", "params": {"hidden": [16]}},
                 "method": {"name": "at_fgsm"},
                 "train": {"epochs": 4, "steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 500,
                           "robust_val": {"steps": 2, "n_examples": 50, "epochs": [2]}}},
        "num_trials": 3, "max_concurrent": 2, "metric": "val_robust_acc", "mode": "max",
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}, "resources": {"cpu": 1, "gpu": 0},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "robust"}, "storage": "ray",
        "optuna_storage": "sqlite:///optuna.db",
    }, cwd=tmp_path)
    assert cfg.rungs == [2] and cfg.sparse_metric
    summary = run_sweep(cfg, progress=False)
    assert summary.n_errored == 0 and summary.n_trials == 3 and summary.n_finished >= 1
    c = client(cfg.tracking.uri)
    full = {}
    for run in find_runs(cfg.tracking.uri, "robust", "tags.`robust_sweep.kind` = 'trial'"):
        done = int(run.data.tags["robust_sweep.epochs_done"])
        steps = sorted(h.step for h in c.get_metric_history(run.info.run_id, "val_robust_acc"))
        assert steps == [e for e in (2, 4) if e <= done]  # at the rung and the last epoch only
        assert len(c.get_metric_history(run.info.run_id, "val_acc")) == done  # clean validation: every epoch
        if done == 4:
            full[run.info.run_id] = run.data.metrics["val_robust_acc"]
    assert summary.best["metric"] == "val_robust_acc" and summary.best["run_id"] in full
    assert summary.best["value"] == pytest.approx(max(full.values()))
    study = optuna.load_study(study_name="e2e-robust", storage=cfg.optuna_storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == summary.n_finished
    assert states.count(optuna.trial.TrialState.PRUNED) == summary.n_stopped_early

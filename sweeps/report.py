"""A sweep's report, read back from MLflow: the ranked trials (``robust-sweep report SWEEP``) and the artifact every
sweep logs to its parent run under ``report/``: Optuna's parameter importances, parallel coordinates and optimisation
history (PNG through Optuna's matplotlib backend; HTML needs plotly, which this project does not install), and the
per-epoch learning curves of every trial with ASHA's stops marked.

The ranking is the sweep's own best-trial rule (``sweeps.best``): full-budget trials first, then by the metric, ties
to the earlier trial; so the first row is the trial the summary and the final pipeline pick.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_core import tracking
from sweeps.console import format_value, short_names

TAG = tracking.TAG


@dataclass
class TrialRow:
    trial_id: str
    run_id: str
    name: str
    params: dict[str, str]  # search-space key -> value as logged
    value: float  # last logged value of the sweep's metric (nan if none)
    epochs: int
    status: str  # full | stopped early | diverged | errored | running
    start_time: int
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> metric


def _parent(uri: str, experiment: str, sweep: str):
    parents = tracking.find_runs(uri, experiment, f"tags.`{TAG}.kind` = 'sweep' and tags.`{TAG}.sweep` = '{sweep}'")
    if not parents:
        raise LookupError(f"no sweep {sweep!r} in MLflow experiment {experiment!r} at {uri}; the sweeps there: "
                          f"{', '.join(sweeps_in(uri, experiment)) or 'none'}")
    return max(parents, key=lambda r: r.info.start_time)


def sweeps_in(uri: str, experiment: str) -> list[str]:
    return sorted({r.data.tags.get(f"{TAG}.sweep", "") for r in
                   tracking.find_runs(uri, experiment, f"tags.`{TAG}.kind` = 'sweep'")})


def _status(run, epochs: int, max_t: int) -> str:
    tags = run.data.tags
    if tags.get(f"{TAG}.failure") == "diverged":
        return "diverged"
    if run.info.status == "FAILED":
        return "errored"
    if run.info.status == "RUNNING":
        return "running"
    if tags.get(f"{TAG}.stopped_early") == "true" or (max_t and epochs < max_t):
        return "stopped early"
    return "full"


def trial_rows(uri: str, experiment: str, sweep: str, curves: bool = False) -> tuple[Any, list[TrialRow]]:
    """The latest run of ``sweep`` and its trials, ranked (see the module docstring)."""
    parent = _parent(uri, experiment, sweep)
    p = parent.data.params
    metric, mode, max_t = p.get("metric", "val_acc"), p.get("mode", "max"), int(p.get("max_t", 0) or 0)
    keys = [k[len("space."):] for k in p if k.startswith("space.")]
    runs = tracking.find_runs(uri, experiment, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                                               f"tags.`{TAG}.kind` = 'trial'")
    c = tracking.client(uri)
    rows = []
    for r in runs:
        epochs = int(r.data.tags.get(f"{TAG}.epochs_done", 0) or 0)
        curve = ({int(m.step): m.value for m in c.get_metric_history(r.info.run_id, metric)} if curves else {})
        rows.append(TrialRow(r.data.tags.get(f"{TAG}.trial_id", ""), r.info.run_id, r.info.run_name or "",
                             {k: r.data.params.get(k, "?") for k in keys}, r.data.metrics.get(metric, math.nan),
                             epochs, _status(r, epochs, max_t), r.info.start_time or 0, curve))
    sign = 1.0 if mode == "max" else -1.0
    group = {"full": 0, "stopped early": 1, "running": 2, "diverged": 3, "errored": 4}

    def key(t: TrialRow):
        v = t.value if math.isfinite(t.value) else -sign * math.inf
        return (group[t.status], -sign * v, t.start_time)

    return parent, sorted(rows, key=key)


def _num(s: str) -> str:
    try:
        return format_value(float(s)) if any(ch in s for ch in ".e") else s
    except ValueError:
        return s


def format_report(parent, rows: list[TrialRow]) -> str:
    """The ranked trials as a plain-text table."""
    p = parent.data.params
    metric = p.get("metric", "val_acc")
    names = short_names(list(rows[0].params)) if rows else {}
    head = ["#", *names.values(), metric, "epochs", "status", "trial", "run"]
    body = [[str(i), *(_num(t.params[k]) for k in names), "—" if math.isnan(t.value) else f"{t.value:.4f}",
             f"{t.epochs}/{p.get('max_t', '?')}", t.status, t.trial_id, t.run_id] for i, t in enumerate(rows, 1)]
    widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]
    line = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    sweep = parent.data.tags.get(f"{TAG}.sweep", "")
    title = (f"sweep {sweep} (MLflow run {parent.info.run_id}, {parent.info.status.lower()}): {len(rows)} trials "
             f"ranked by {metric} ({p.get('mode', 'max')}), full-budget trials first")
    return "\n".join([title, line(head), *(line(r) for r in body)])


# ---------------------------------------------------------------------------------------------------- artifact
def _study(cfg, rows: list[TrialRow]):
    """An in-memory Optuna study of the finished trials (read back from MLflow, so the report does not depend on
    the searcher's state): full-budget trials COMPLETE with their metric, ASHA-stopped ones PRUNED."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if cfg.mode == "max" else "minimize", study_name=cfg.name)
    dists = {k: d.to_optuna() for k, d in cfg.search_space.items()}
    for t in sorted(rows, key=lambda t: t.start_time):
        if t.status not in ("full", "stopped early") or not math.isfinite(t.value) or "?" in t.params.values():
            continue  # unfinished, or its params never reached MLflow
        params = {}
        for k, d in cfg.search_space.items():
            raw = t.params[k]
            params[k] = (int(float(raw)) if d.kind == "int" else float(raw) if d.kind != "choice"
                         else next((a for a in d.args if str(a) == raw), raw))
        full = t.status == "full"
        study.add_trial(create_trial(params=params, distributions=dists, value=t.value if full else None,
                                     state=TrialState.COMPLETE if full else TrialState.PRUNED,
                                     intermediate_values=t.curve))
    return study


def learning_curves(rows: list[TrialRow], metric: str, title: str, path: Path) -> Path:
    """Per-epoch ``metric`` of every trial; a trial ASHA stopped ends in an ×."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for t in sorted(rows, key=lambda t: t.start_time):
        if not t.curve:
            continue
        xs = sorted(t.curve)
        (line,) = ax.plot(xs, [t.curve[x] for x in xs], marker=".", lw=1.2, label=t.name or t.trial_id)
        if t.status == "stopped early":
            ax.plot([xs[-1]], [t.curve[xs[-1]]], marker="x", ms=10, mew=2, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}  (× = stopped early by ASHA)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0] and len(rows) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(cfg, uri: str, experiment: str, out: Path) -> dict[str, str]:
    """Write the report files of sweep ``cfg`` into ``out``; returns {file name: what it shows, or why it is
    missing}. A plot Optuna cannot draw (e.g. importances with fewer than two full-budget trials) is listed with
    the reason instead of failing the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    parent, rows = trial_rows(uri, experiment, cfg.name, curves=True)
    made: dict[str, str] = {}
    learning_curves(rows, cfg.metric, f"sweep {cfg.name}", out / "learning_curves.png")
    made["learning_curves.png"] = f"{cfg.metric} per epoch of every trial"
    (out / "trials.txt").write_text(format_report(parent, rows) + "\n")
    made["trials.txt"] = "the ranked trials (robust-sweep report)"
    study = _study(cfg, rows)
    n_complete = sum(1 for t in study.trials if t.state.name == "COMPLETE")
    for fname, what, plot, need in (
            ("param_importances.png", "Optuna's parameter importances (its default evaluator)",
             ovm.plot_param_importances, 2),
            ("parallel_coordinates.png", "Optuna's parallel coordinates", ovm.plot_parallel_coordinate, 1),
            ("optimization_history.png", "Optuna's optimisation history", ovm.plot_optimization_history, 1)):
        if n_complete < need:
            made[fname] = f"not drawn: {n_complete} full-budget trial(s), {what} needs {need}"
            continue
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib backend experimental; known, not news
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. PED-ANOVA on very few trials: said in the plot
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # Optuna refuses degenerate studies
            made[fname] = f"not drawn: {type(e).__name__}: {e}"
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(7, 4.2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made[fname] = what
    lines = [f"# Sweep report: {cfg.name}", ""] + [f"- `{f}`: {w}" for f, w in made.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return made


def log_report(cfg, uri: str, experiment: str, parent_run_id: str) -> dict[str, str]:
    """``write_report`` into a temporary folder, logged to the sweep's parent run under ``report/``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        made = write_report(cfg, uri, experiment, Path(tmp))
        tracking.client(uri).log_artifacts(parent_run_id, tmp, "report")
    return made


__all__ = ["TrialRow", "format_report", "learning_curves", "log_report", "sweeps_in", "trial_rows", "write_report"]

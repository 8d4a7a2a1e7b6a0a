"""What a sweep prints: our own lines, not Ray's.

One line when a trial starts (its sampled hyperparameters), one when it ends (metric, epochs, stopped early or
not, or why it failed), a trials progress bar with the elapsed time after each end, and the summary last (printed by
the caller). Ray's status tables, Tune's checkpoint lines, the workers' forwarded output and MLflow's "View run"
links are off unless ``verbose`` (``robust-sweep sweep --verbose``).

``trial_label`` is also the trial's MLflow run name, so the console and the MLflow UI name a trial the same way.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping

VERBOSE_ENV = "ROBUST_SWEEP_VERBOSE"  # "1": Ray's and MLflow's own output is shown as well
BAR_WIDTH = 20


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def quiet_libraries() -> None:
    """Unless verbose: no "View run" links and no INFO lines from MLflow (in this process and the Ray workers it
    starts, which inherit the environment) and no INFO lines from Ray's and Tune's loggers in this process. Called by
    the command line before anything starts and by ``init_ray``."""
    if verbose():
        return
    # Tune's new console output prints its configuration box and result paths even at verbose=0; the legacy
    # reporter at verbose=0 prints nothing (--verbose gets the new output's tables, as before)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables..." etc.
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def format_value(v: Any) -> str:
    """A hyperparameter as a person writes it: 1.52, 0.25, 2.5e-3, 64, vat."""
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if v == 0 or not math.isfinite(v):
        return str(v)
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    mant, exp = f"{v:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous dotted suffix of each key: method.params.eps -> eps, train.lr -> lr."""
    out: dict[str, str] = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if sum(1 for other in keys if other == cand or other.endswith("." + cand)) == 1:
                out[k] = cand
                break
        else:
            out[k] = k
    return out


def trial_label(method: str, sampled: Mapping[str, Any]) -> str:
    """What distinguishes a trial: ``vat eps=1.52 lr=2.5e-3`` (keys in the search space's order)."""
    names = short_names(list(sampled))
    return " ".join([method] + [f"{names[k]}={format_value(v)}" for k, v in sampled.items()])


def bar(done: int, total: int, elapsed_s: float, running: int = 0) -> str:
    """``[########------------] 8/20 trials, 2 running, 3:05 elapsed``."""
    filled = BAR_WIDTH * done // max(total, 1)
    m, s = divmod(int(elapsed_s), 60)
    h, m = divmod(m, 60)
    clock = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    run = f", {running} running" if running else ""
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} trials{run}, {clock} elapsed"


def end_line(metric: str, result: Mapping[str, Any], max_t: int, time_attr: str = "epoch") -> str:
    """The end of a trial in words, from its last result: metric, epochs, stopped early or not."""
    if result.get("diverged"):
        return f"diverged ({result.get('failure', 'non-finite loss')})"
    epochs = int(result.get(time_attr, 0) or 0)
    value = result.get(metric)
    val = f"{metric}={value:.4f}" if isinstance(value, (int, float)) else f"no {metric}"
    how = "stopped early by ASHA" if epochs < max_t else "full budget"
    return f"{val} after {epochs}/{max_t} epochs ({how})"


def make_callback(name: str, method: str, search_keys: list[str], metric: str, max_t: int, n_trials: int,
                  write: Callable[[str], None] | None = None):
    """A Tune callback (driver side) that prints our lines; ``write`` defaults to stdout, flushed."""
    from ray.tune import Callback

    def out(line: str) -> None:
        if write is not None:
            write(line)
        else:
            print(line, file=sys.stdout, flush=True)

    class ConsoleCallback(Callback):
        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.number: dict[str, int] = {}
            self.ended: set[str] = set()
            self.running: set[str] = set()

        def setup(self, **info):  # also on a resumed sweep (Tune restores the callback with the rest of its state)
            self.t0 = time.monotonic()

        def _n(self, trial) -> str:
            return f"{self.number.setdefault(trial.trial_id, len(self.number) + 1)}/{n_trials}"

        def _sampled(self, trial) -> dict[str, Any]:
            return {k: trial.config[k] for k in search_keys if k in (trial.config or {})}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.add(trial.trial_id)
            again = " (again, from its checkpoint)" if trial.trial_id in self.number else ""
            out(f"[{name} trial {self._n(trial)}] start{again}: {trial_label(method, self._sampled(trial))}")

        def _end(self, trial, text: str) -> None:
            self.running.discard(trial.trial_id)
            self.ended.add(trial.trial_id)
            out(f"[{name} trial {self._n(trial)}] end: {text}  ({trial.trial_id})")
            out(f"[{name}] {bar(len(self.ended), n_trials, time.monotonic() - self.t0, len(self.running))}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, end_line(metric, trial.last_result or {}, max_t))

        def on_trial_error(self, iteration, trials, trial, **info):
            err = getattr(trial, "error_file", None) or ""
            self._end(trial, "error" + (f" (traceback: {err})" if err else "") + "; see the summary")

    return ConsoleCallback()


__all__ = ["VERBOSE_ENV", "bar", "end_line", "format_value", "make_callback", "quiet_libraries", "short_names",
           "trial_label", "verbose"]

"""Where per-epoch metrics and checkpoints go. ``fit`` talks only to a ``Reporter``; the local entry point, a Ray
Tune trial and a final retrain differ only in which reporters they pass.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

StateFn = Callable[[], dict[str, Any]]
CHECKPOINT_FILE = "checkpoint.pt"


class Reporter:
    def restore(self) -> dict[str, Any] | None:
        """A checkpoint state to resume from, or None."""
        return None

    def report(self, metrics: Mapping[str, Any], state: StateFn) -> None:
        """Called once per epoch; ``state()`` builds the full checkpoint (only call it if you save)."""

    def close(self, final: Mapping[str, Any]) -> None:
        """Called once after training (and test evaluation, when asked for)."""


def save_state_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointDir(Reporter):
    """Saves ``checkpoint.pt`` in a folder after every epoch (atomically) and resumes from it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def restore(self):
        f = self.path / CHECKPOINT_FILE
        return load_state(f) if f.is_file() else None

    def report(self, metrics, state):
        save_state_atomic(state(), self.path / CHECKPOINT_FILE)


class Console(Reporter):
    """One line per epoch on stderr."""

    def __init__(self, stream=None, prefix: str = "") -> None:
        self.stream = stream or sys.stderr
        self.prefix = prefix

    def report(self, metrics, state):
        keys = [k for k in ("epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "epoch_time_s") if k in metrics]
        parts = [f"{k}={_fmt(metrics[k])}" for k in keys]
        print(self.prefix + "  ".join(parts), file=self.stream, flush=True)

    def close(self, final):
        shown = {k: v for k, v in final.items() if isinstance(v, (int, float))}
        print(self.prefix + "final: " + "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), file=self.stream)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Many(Reporter):
    """Fan out to several reporters; resumes from the first that has a checkpoint."""

    def __init__(self, *reporters: Reporter | None) -> None:
        self.reporters = [r for r in reporters if r is not None]

    def restore(self):
        for r in self.reporters:
            s = r.restore()
            if s is not None:
                return s
        return None

    def report(self, metrics, state):
        cache: dict[str, Any] = {}

        def once() -> dict[str, Any]:  # build the checkpoint at most once per epoch
            if not cache:
                cache["s"] = state()
            return cache["s"]

        for r in self.reporters:
            r.report(metrics, once)

    def close(self, final):
        for r in self.reporters:
            r.close(final)

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

from robust_core.errors import BadFileError

StateFn = Callable[[], dict[str, Any]]
CHECKPOINT_FILE = "checkpoint.pt"


class Reporter:
    def restore(self) -> dict[str, Any] | None:
        """A checkpoint state to resume from, or None."""
        return None

    def resumed(self, state: dict[str, Any]) -> None:
        """Told the checkpoint ``fit`` resumes from (found by another reporter), e.g. to log its restored history."""

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


def load_state(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint or model file as data only: ``torch.load(weights_only=True)`` unpickles tensors, numbers,
    strings and containers of them, and refuses any other global, so a crafted file cannot run code. Every state
    this package writes is of that form (RNG states included, see ``robust_core.train``).

    Raises ``BadFileError`` naming the file when it is refused, truncated or corrupted, or not a dict."""
    import pickle
    import re

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise BadFileError(path, f"refused to load this {what}: its pickle imports {found.group(1)}, which could "
                                     "run code; robust-sweep files hold only tensors and numbers. Do not use files "
                                     "from untrusted sources; retrain to get a clean one") from None
        raise BadFileError(path, f"cannot read this {what} (corrupted, or not a file written by robust-sweep: "
                                 f"{_first_line(e)}); delete it or replace it with a good copy") from e
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError, KeyError) as e:
        # a truncated zip, an empty file, garbage bytes: torch raises any of these
        raise BadFileError(path, f"cannot read this {what} (truncated or corrupted: {type(e).__name__}: "
                                 f"{_first_line(e)}); delete it or replace it with a good copy") from e
    if not isinstance(state, dict):
        raise BadFileError(path, f"is not a robust-sweep {what} (holds a {type(state).__name__}, expected a dict)")
    return state


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


class CheckpointDir(Reporter):
    """Saves ``checkpoint.pt`` in a folder after every epoch (atomically) and resumes from it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._loaded: dict[str, Any] | None = None

    def restore(self):
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            return state
        f = self.path / CHECKPOINT_FILE
        return load_state(f) if f.is_file() else None

    def load(self) -> dict[str, Any] | None:
        """Read the checkpoint now (kept for the next ``restore``): a bad file fails before anything starts."""
        self._loaded = self.restore()
        return self._loaded

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
    """Fan out to several reporters; resumes from the first that has a checkpoint, and tells every reporter so."""

    def __init__(self, *reporters: Reporter | None) -> None:
        self.reporters = [r for r in reporters if r is not None]

    def restore(self):
        for r in self.reporters:
            s = r.restore()
            if s is not None:
                self.resumed(s)
                return s
        return None

    def resumed(self, state):
        for r in self.reporters:
            r.resumed(state)

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

"""Errors that carry a meaning beyond their message: who catches them decides what happens next.

``TrainingDiverged`` is a finding about a configuration (its hyperparameters make the loss non-finite), not an
infrastructure failure: retrying it gives the same result, so sweeps fail such a trial at once, without retries, and
count it separately from crashes. Its first line is the readable reason (method, epoch, step, what to change).

``InputError`` is a file or value the user gave that cannot be used: every entry point prints ``error: <message>``
and exits with code 2. The message names the file (or key) and says what to do.
"""
from __future__ import annotations

from pathlib import Path


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite. ``epoch`` and ``step`` are 1-based (step within the epoch)."""

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step

    def __reduce__(self):  # picklable across Ray workers with its fields
        return (_rebuild, (str(self), self.epoch, self.step))


def _rebuild(message: str, epoch: int | None, step: int | None) -> "TrainingDiverged":
    return TrainingDiverged(message, epoch=epoch, step=step)


class InputError(Exception):
    """A user-supplied file or value is unusable (entry points: ``error: ...``, exit code 2)."""


class BadFileError(InputError, ValueError):
    """A file exists but cannot be used: truncated, corrupted, not what it should be, or (model and checkpoint
    files) a pickle that would import code to run. ``path`` names it; ``reason`` is the rest of the message."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # picklable across Ray workers with its fields
        return (BadFileError, (self.path, self.reason))

"""Errors that carry a meaning beyond their message: who catches them decides what happens next.

``TrainingDiverged`` is a finding about a configuration (its hyperparameters make the loss non-finite), not an
infrastructure failure: retrying it gives the same result, so sweeps fail such a trial at once, without retries, and
count it separately from crashes. Its first line is the readable reason (method, epoch, step, what to change).
"""
from __future__ import annotations


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite. ``epoch`` and ``step`` are 1-based (step within the epoch)."""

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step

    def __reduce__(self):  # picklable across Ray workers with its fields
        return (_rebuild, (str(self), self.epoch, self.step))


def _rebuild(message: str, epoch: int | None, step: int | None) -> "TrainingDiverged":
    return TrainingDiverged(message, epoch=epoch, step=step)

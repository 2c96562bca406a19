"""The errors credo raises for expected failures: bad input, a damaged file, a run that cannot go on.

Each message says what went wrong, where (the file, method, epoch or flag) and how to fix it; the command line
prints it as one ``credo: error: ...`` line and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CredoError(Exception):
    """Base of credo's expected failures."""


class CorruptFileError(CredoError, ValueError):
    """A file credo reads is truncated, corrupted or not in the expected format (a ``ValueError`` too)."""


class CheckpointError(CredoError, RuntimeError):
    """A saved method or training checkpoint is missing, corrupted or written for another config."""


class TrainingDivergedError(CredoError, RuntimeError):
    """Training produced a non-finite loss; the message names the method, epoch, step and learning rate."""


__all__ = ["CheckpointError", "CorruptFileError", "CredoError", "TrainingDivergedError"]

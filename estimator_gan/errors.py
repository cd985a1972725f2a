"""The errors a user can fix, all under one base class.

Every class here carries a one-line message that names the file, field or value at fault, and
the exit code the command line returns for it. The command line catches `Error` and prints
`error: <message>`; anything else is either an environment failure it recognises (a full disk,
permissions: see `runtime.failures`) or a bug, which keeps its traceback.
"""
from __future__ import annotations


class Error(Exception):
    """Base of every estimator-gan error: a one-line message and an exit code (2)."""

    exit_code = 2

    def __init__(self, message: str = ""):
        super().__init__(" ".join(str(message).split()))


class ConfigError(Error, ValueError):
    """A bad config value, override, config file or import path."""


class TFConfigError(ConfigError):
    """`TF_CONFIG` (or its combination with `distribute.strategy`) cannot work."""


class DataError(Error, ValueError):
    """Bad data: a missing, unreadable or malformed file, or data that does not fit the model."""


class NetworkError(Error, ValueError):
    """A network broke weight sharing (new variables on a repeated call, variables outside its
    scope) or returned outputs of the wrong shape."""


class ExportError(Error, ValueError):
    """A bad export, or a bad request to a generator: noise, labels, count, truncation."""


class TrainingError(Error, RuntimeError):
    """Training cannot go on; nothing unsaved was written over the last good checkpoint."""


class TrainingDiverged(TrainingError):
    """A loss or a variable became NaN/inf; the last good checkpoint is kept (exit code 3)."""

    exit_code = 3


class ModelDirLocked(TrainingError):
    """Another live training holds the model directory's lock."""


class CorruptCheckpoint(TrainingError):
    """A checkpoint cannot be read: the one named, or every one in the model directory."""

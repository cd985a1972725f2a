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


def op_error_text(message: str) -> str:
    """The readable part of a TensorFlow op error's message, for a one-line error: without
    TF's "Graph execution error:" preamble, the Python stack of the failing node ("Detected at
    node ... defined at", file lines, "Node: ...") and the "[[{{node ...}}]]" trailer; e.g.
    `corrupted record at 0 (Is this even a TFRecord file?)`."""
    lines = str(message).strip().splitlines()
    detected = [i for i, line in enumerate(lines) if line.startswith("Detected at node")]
    if detected:
        nodes = [i for i, line in enumerate(lines) if line.startswith("Node: ")]
        blank = [i for i, line in enumerate(lines) if i > detected[0] and not line.strip()]
        end = nodes[-1] if nodes else (blank[0] if blank else len(lines))
        lines = lines[end + 1:]
    for line in lines:
        line = line.strip()
        if line and not line.startswith(("Graph execution error", "[[", "Detected at node")):
            return line
    return " ".join(str(message).split())

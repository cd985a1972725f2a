"""Failures of the environment a user must fix, not the code (a full disk, permissions, a
read-only or corrupt file), as one line and an exit code; anything else keeps its traceback."""
from __future__ import annotations

import contextlib
import errno
from typing import Optional, Tuple

import tensorflow as tf

from estimator_gan import checkpoints

v1 = tf.compat.v1
EXIT_DIVERGED = 3


def _strip(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def describe_failure(err: BaseException, model_dir: Optional[str] = None) -> Optional[Tuple[str, int]]:
    """`(one-line message, exit code)` for an environment failure, or None for anything else."""
    if isinstance(err, v1.train.NanLossDuringTrainingError):
        return "a loss became NaN: training stopped without saving", EXIT_DIVERGED
    kept = ""
    if model_dir and checkpoints.on_disk(model_dir):
        with contextlib.suppress(Exception):  # a message, not a second failure
            kept = f"; {checkpoints.last_good(model_dir)} in {model_dir}"
    if isinstance(err, OSError):
        where = err.filename or "a file"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device writing {where}: free space and rerun{kept}", 2
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write {where}: {err.strerror}{kept}", 2
        if err.errno == errno.EEXIST:
            return f"{where} exists and is not a directory", 2
        if err.errno == errno.ENOTDIR:
            return f"{where}: a part of the path is a file, not a directory", 2
        return (f"{where}: {err.strerror}", 2) if err.strerror else None
    if isinstance(err, tf.errors.OpError):
        text = _strip(err.message.splitlines()[0] if err.message else "")
        if isinstance(err, tf.errors.ResourceExhaustedError) and "space left" in text:
            return f"no space left on the device ({text}): free space and rerun{kept}", 2
        if isinstance(err, tf.errors.PermissionDeniedError) or "Read-only file system" in text:
            return f"cannot write ({text}){kept}", 2
        if isinstance(err, tf.errors.DataLossError):
            return f"a checkpoint or data file is corrupt ({text})", 2
    return None

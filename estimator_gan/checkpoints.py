"""Facts about the checkpoints of a model directory, read without building a graph: their
steps, which are on disk, which read in full, which one a message calls the last good one."""
from __future__ import annotations

import contextlib
import re
from typing import List, Optional, Tuple

import tensorflow as tf

from estimator_gan import fileio

_CHECKPOINT_INDEX = re.compile(r"^(?P<prefix>model\.ckpt-(?P<step>\d+))\.index$")


def reader(checkpoint_path: str):
    """A reader of the checkpoint with this prefix. (Unlike `tf.train.load_checkpoint`, it never
    takes the prefix for a directory, which some filesystems, e.g. `ram://`, claim it is.)"""
    return tf.compat.v1.train.NewCheckpointReader(checkpoint_path)


def step_of(checkpoint_path: str) -> int:
    """The global step a checkpoint holds."""
    return int(reader(checkpoint_path).get_tensor("global_step"))


def shapes(checkpoint_path: str) -> dict:
    """{variable name: shape} of a checkpoint."""
    return reader(checkpoint_path).get_variable_to_shape_map()


def on_disk(model_dir: str) -> List[Tuple[int, str]]:
    """`(step, prefix)` of every checkpoint whose index file is in `model_dir`, newest first
    (from the file names; whether they read is not checked)."""
    if not fileio.isdir(model_dir):
        return []
    found = []
    for name in fileio.listdir(model_dir):
        match = _CHECKPOINT_INDEX.match(name)
        if match:
            found.append((int(match["step"]), fileio.join(model_dir, match["prefix"])))
    return sorted(found, reverse=True)


def latest_step(model_dir: str) -> int:
    """Global step of the newest checkpoint on disk whose step reads (the state file may be
    missing or lag behind after a kill; a training run resumes from the newest one too), else
    the state file's; 0 if there is none."""
    latest = tf.train.latest_checkpoint(model_dir)
    candidates = [p for _, p in on_disk(model_dir)] + ([latest] if latest else [])
    for path in candidates:
        with contextlib.suppress(Exception):
            return step_of(path)
    return 0


def unreadable(path: str) -> Optional[str]:
    """Why the checkpoint at `path` cannot be read in full (every tensor, checksums), or None."""
    try:
        values = reader(path)
        for name in values.get_variable_to_shape_map():
            values.get_tensor(name)
    except Exception as err:  # TF reports damage as OpError, IndexError, ValueError...
        lines = [ln for ln in str(err).splitlines() if ln.strip() and "Graph execution" not in ln]
        return " ".join(lines[0].split()).rstrip(".") if lines else type(err).__name__
    return None


def last_good(model_dir: str) -> str:
    """"the last good checkpoint is step N" (or that none was written), for messages."""
    path = tf.train.latest_checkpoint(model_dir)
    if not path:
        return "no checkpoint was written"
    return f"the last good checkpoint is step {step_of(path)}"

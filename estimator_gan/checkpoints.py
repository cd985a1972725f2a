"""Facts about the checkpoints of a model directory, read without building a graph: their
steps, which are on disk, which read in full, which one every command reads
(`newest_readable`), which one a message calls the last good one."""
from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf

from estimator_gan import fileio
from estimator_gan.errors import ConfigError, CorruptCheckpoint

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


class Newest(NamedTuple):
    """The checkpoint of a model directory that is read (see `newest_readable`)."""

    model_dir: str
    path: Optional[str]  # None: no checkpoint
    step: int  # its global step (0 without one)
    unreadable: List[Tuple[str, str]]  # newer checkpoints that do not read in full, and why
    listed: Optional[str]  # the state file's latest checkpoint (None: no state file)

    def note(self, reading: str = "using") -> Optional[str]:
        """What differs from what the state file says, as a note (`reading`: "using", "resuming
        from"...), or None when the state file lists this checkpoint."""
        if self.path is None:
            return None
        name = fileio.basename(self.path)
        if self.unreadable:
            bad, why = self.unreadable[0]
            return f"note: checkpoint {fileio.basename(bad)} is unreadable ({why}); {reading} {name}"
        if self.listed is None:
            return (f"note: {self.model_dir} has no checkpoint state file; {reading} {name}, the "
                    f"newest checkpoint on disk")
        if fileio.basename(self.listed) != name:
            return (f"note: the checkpoint state file lists {fileio.basename(self.listed)} but "
                    f"{name} is newer and complete; {reading} {name}")
        return None


def newest_readable(model_dir: str) -> Newest:
    """The checkpoint a command reads by default: the newest one on disk that reads in full.

    `train` resumes from it, `export`, `generate` and `evaluate` read it. The `checkpoint` state
    file is not trusted: a kill can leave it missing or behind the checkpoints on disk, and a
    storage fault can leave the newest checkpoint unreadable (then the one before is taken).
    Raises `CorruptCheckpoint` when checkpoints exist but none reads."""
    state = tf.train.get_checkpoint_state(model_dir) if fileio.isdir(model_dir) else None
    listed = state.model_checkpoint_path if state is not None else None
    candidates = [path for _, path in on_disk(model_dir)]
    names = {fileio.basename(p) for p in candidates}
    if listed and fileio.basename(listed) not in names and fileio.exists(listed + ".index"):
        candidates.append(listed)  # a prefix not named model.ckpt-<step>
    bad = []
    for path in candidates:
        problem, step = _read_in_full(path)
        if problem is None:
            return Newest(model_dir, path, step, bad, listed)
        bad.append((path, problem))
    if bad:
        raise CorruptCheckpoint(
            f"no checkpoint in {model_dir} can be read ({fileio.basename(bad[0][0])}: "
            f"{bad[0][1]}); use a new --model-dir")
    return Newest(model_dir, None, 0, [], listed)


def latest_step(model_dir: str) -> int:
    """Global step of `newest_readable`; 0 if there is no checkpoint."""
    return newest_readable(model_dir).step


def named(model_dir: str, checkpoint: str) -> str:
    """The checkpoint a user names: a prefix as given, or relative to `model_dir` (e.g.
    `model.ckpt-500`); refused in one line when it is missing or does not read in full."""
    path = checkpoint
    if not fileio.exists(path + ".index") and fileio.exists(fileio.join(model_dir, checkpoint) + ".index"):
        path = fileio.join(model_dir, checkpoint)
    if not fileio.exists(path + ".index"):
        there = ", ".join(fileio.basename(p) for _, p in reversed(on_disk(model_dir)))
        raise ConfigError(f"checkpoint not found: {checkpoint} (checkpoints in {model_dir}: "
                          f"{there or 'none'})")
    problem = unreadable(path)
    if problem is not None:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({problem})")
    return path


def differences(checkpoint_path: str, variables: Dict[str, List[int]]) -> List[str]:
    """How `variables` ({name: shape}, e.g. a graph's) do not fit a checkpoint: each one missing
    from it or of another shape there, as readable strings."""
    saved = shapes(checkpoint_path)
    problems = []
    for name, shape in variables.items():
        if name not in saved:
            problems.append(f"{name} is not in the checkpoint")
        elif list(saved[name]) != list(shape):
            problems.append(f"{name}: {list(saved[name])} in the checkpoint, {list(shape)} now")
    return problems


def _read_in_full(path: str) -> Tuple[Optional[str], int]:
    """(why the checkpoint at `path` cannot be read in full, or None; its global step)."""
    step = 0
    try:
        values = reader(path)
        for name in values.get_variable_to_shape_map():
            value = values.get_tensor(name)
            if name == "global_step":
                step = int(value)
    except Exception as err:  # TF reports damage as OpError, IndexError, ValueError...
        lines = [ln for ln in str(err).splitlines() if ln.strip() and "Graph execution" not in ln]
        return (" ".join(lines[0].split()).rstrip(".") if lines else type(err).__name__), 0
    return None, step


def unreadable(path: str) -> Optional[str]:
    """Why the checkpoint at `path` cannot be read in full (every tensor, checksums), or None."""
    return _read_in_full(path)[0]


def last_good(model_dir: str) -> str:
    """"the last good checkpoint is step N" (or that none was written), for messages."""
    try:
        newest = newest_readable(model_dir)
    except CorruptCheckpoint:
        return "no checkpoint can be read"
    return f"the last good checkpoint is step {newest.step}" if newest.path else "no checkpoint was written"

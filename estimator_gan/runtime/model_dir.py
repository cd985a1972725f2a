"""The model directory between runs: one training at a time (`RunLock`), what a killed save
leaves behind, which checkpoint a run resumes from, and whether it fits the config.

What a caller must know:

* Checkpoints survive `kill -9` at any moment: `tf.train.Saver` writes each checkpoint's data
  and index under temporary names, renames them into place, and only then rewrites the
  `checkpoint` state file. A run resumes from the newest checkpoint on disk that reads in
  full, whether or not the state file lists it (it is rewritten to list what is there), so
  neither a lost state file nor an unreadable newest checkpoint makes a run start over: an
  unreadable one is renamed `*.corrupt`, and the run says which one it resumes from. Which one
  that is, is `checkpoints.newest_readable`, the lookup every command that reads checkpoints
  uses (they only read: the renaming and the state file are training's, under the lock).
* `RunLock` is an exclusive `flock` on `<model_dir>/train.lock` on local filesystems (the
  kernel drops it when its process dies, however it dies, so a stale lock is taken over).
  Object stores and `ram://` have no file locks: there the lock file only records who trains,
  a second training is not refused, and the run says so.
* Call the functions that change files only while holding the lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
from typing import List, Optional

import tensorflow as tf

from estimator_gan import checkpoints
from estimator_gan import config as config_lib
from estimator_gan import fileio
from estimator_gan.errors import ConfigError, ModelDirLocked

v1 = tf.compat.v1
LOCK_FILENAME = "train.lock"
_PARTIAL = re.compile(r"(\.tmp[0-9a-f]{32}|_temp)$|^\.tmp-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`with RunLock(model_dir):` — exclusive use of a model_dir by one training process.

    Raises `ModelDirLocked` naming the holder's pid and host when another live process holds it.
    `took_over` describes the stale lock that was replaced, if any; `note` says why a model_dir
    on a filesystem without locks is not locked.
    """

    def __init__(self, model_dir: str, stream=None):
        self.model_dir = model_dir
        self.path = fileio.join(model_dir, LOCK_FILENAME)
        self._stream = stream or sys.stderr
        self._fd: Optional[int] = None
        self.took_over: Optional[str] = None
        self.note: Optional[str] = None

    @staticmethod
    def _describe(holder: dict) -> str:
        started = holder.get("started")
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"

    @staticmethod
    def _record() -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.time()}).encode() + b"\n"

    def _read(self) -> dict:
        try:
            text = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "RunLock":
        if not fileio.is_local(self.model_dir):
            fileio.makedirs(self.model_dir)
            fileio.atomic_write(self.path, self._record())
            self.note = (f"note: {self.model_dir} is on a filesystem without file locks: nothing "
                         f"stops a second training on it; make sure only one runs")
            print(self.note, file=self._stream, flush=True)
            return self
        path = fileio.local_path(self.path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = self._read()
            os.close(self._fd)
            self._fd = None
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ModelDirLocked(
                f"{self.model_dir} is in use by another training ({self._describe(holder)}); "
                f"wait for it to finish or use another --model-dir") from None
        previous = self._read()
        if previous:
            here = previous.get("host") == socket.gethostname()
            state = ("no longer running" if here and not _pid_alive(int(previous.get("pid", 0)))
                     else "not holding it")
            self.took_over = f"{self._describe(previous)}, {state}"
            print(f"note: taking over the stale lock {self.path} of {self.took_over}",
                  file=self._stream, flush=True)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, self._record(), 0)
        os.fsync(self._fd)
        return self

    def __exit__(self, *exc):
        if self._fd is None:
            if self.note is not None:
                with contextlib.suppress(Exception):
                    fileio.atomic_write(self.path, b"")
            return
        try:
            os.ftruncate(self._fd, 0)  # kept, not unlinked: unlinking races with a new locker
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


# -------------------------------------------------------------------- model_dir contents


def partial_files(model_dir: str) -> List[str]:
    """What an interrupted save leaves behind: TF's `*.tmp<hex>` files and `<prefix>_temp`
    folders, and our `.tmp-*` files (config, sample PNGs)."""
    found = []
    for folder in (model_dir, fileio.join(model_dir, "samples")):
        if fileio.isdir(folder):
            found += [fileio.join(folder, n) for n in fileio.listdir(folder) if _PARTIAL.search(n)]
    return found


def remove_partial_files(model_dir: str) -> List[str]:
    """Delete `partial_files`. Returns the removed paths."""
    removed = partial_files(model_dir)
    for path in removed:
        fileio.rmtree(path)
    return removed


def recover_latest_checkpoint(model_dir: str, newest: Optional[checkpoints.Newest] = None,
                              stream=None) -> Optional[str]:
    """Make the state file point at `newest` (default: `checkpoints.newest_readable`), the
    checkpoint a run resumes from.

    Unreadable newer ones (a storage fault: a kill cannot cause it) are renamed `*.corrupt`; a
    missing or outdated state file is rewritten. Returns the note printed (None when nothing
    was wrong); raises `CorruptCheckpoint` when checkpoints exist but none reads.
    """
    newest = newest or checkpoints.newest_readable(model_dir)
    note = newest.note("moved aside as *.corrupt, resuming from" if newest.unreadable else "resuming from")
    if note is None:
        return None
    for path, _ in newest.unreadable:
        for f in fileio.glob(path + ".*"):
            if not f.endswith(".corrupt"):
                fileio.rename(f, f + ".corrupt", overwrite=True)
    bad = {p for p, _ in newest.unreadable}
    good = [p for _, p in checkpoints.on_disk(model_dir) if p not in bad]
    if newest.path not in good:
        good.insert(0, newest.path)
    v1.train.update_checkpoint_state(model_dir, newest.path, all_model_checkpoint_paths=good[::-1])
    print(note, file=stream or sys.stderr, flush=True)
    return note


def resume_advice(model_dir: str) -> str:
    """What to do about a checkpoint a config cannot resume, for messages."""
    saved = fileio.join(model_dir, config_lib.CONFIG_FILENAME)
    if fileio.exists(saved):
        return f"use a new --model-dir, or resume with the config it was trained with (--config {saved})"
    return "use a new --model-dir, or resume with the config it was trained with"


def check_architecture(config, model_dir: str) -> None:
    """Refuse to resume a checkpoint under a config whose network shapes differ from it."""
    saved_path = fileio.join(model_dir, config_lib.CONFIG_FILENAME)
    if not (fileio.exists(saved_path) and checkpoints.on_disk(model_dir)):
        return
    saved = config_lib.resolve(config_lib.load_config(saved_path))
    diffs = config_lib.architecture_differences(saved, config)
    if diffs:
        raise ConfigError(f"{model_dir} holds a checkpoint of a different architecture "
                          f"({'; '.join(diffs)}); {resume_advice(model_dir)}")

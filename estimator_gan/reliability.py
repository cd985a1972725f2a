"""Keeping batch training jobs safe: stop cleanly on a signal, never save a diverged model,
one training per model_dir, and one-line messages for environment failures.

What a caller must know:

* Checkpoints survive `kill -9` at any moment without help from here: `tf.train.Saver` writes
  each checkpoint's data and index under temporary names, renames them into place, and only then
  rewrites the `checkpoint` state file (itself written to a temporary file and renamed). The
  latest checkpoint listed is therefore always complete; a killed run loses at most the steps
  since it.
* `GracefulStop` turns SIGTERM / SIGINT into a stop request at the end of the current step;
  the Estimator's `CheckpointSaverHook` then saves a checkpoint in `end()` and the summary
  hook flushes the events file. Outside the training loop (graph building, restoring, after
  the final save) there is nothing unsaved, so a signal exits at once with the same code. A
  second signal, or no exit within `grace_secs` (a step or input pipeline that hangs), exits
  at once with 128 + the signal number; the last checkpoint on disk is still complete.
* `NonFiniteLossHook` raises `TrainingDiverged` (naming the network and the step) from
  `after_run` on a NaN/inf loss. Raising, unlike `request_stop`, makes `MonitoredSession`
  skip every hook's `end()`, so the final checkpoint save does not happen and the last good
  checkpoint stays the latest. `FiniteCheckpointListener` checks every variable before each
  save, so a step whose update turned the weights non-finite (while its loss, computed before
  the update, was still finite) cannot be checkpointed either.
* `RunLock` is an exclusive `flock` on `<model_dir>/train.lock`, which holds the owner's pid and
  host for messages. The kernel drops the lock when its process dies, however it dies, so a
  stale lock file is detected by being unlocked and is taken over.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from typing import List, Optional

import tensorflow as tf

from estimator_gan import config as config_lib
from estimator_gan import model_fns

v1 = tf.compat.v1

LOCK_FILENAME = "train.lock"
EXIT_DIVERGED = 3
_GRACEFUL_EXIT = {signal.SIGTERM: 0, signal.SIGINT: 130}


class TrainingDiverged(RuntimeError):
    """A loss or a variable became NaN/inf; nothing was saved after the last good checkpoint."""


class ModelDirLocked(RuntimeError):
    """Another live training holds the model_dir's lock."""


class CorruptCheckpoint(RuntimeError):
    """No checkpoint the model_dir lists can be read."""


# ------------------------------------------------------------------------------- signals


class GracefulStop:
    """Install with `with GracefulStop() as stop:`; pass `stop.hook()` to `GAN.train`.

    After training returns, `stop.signal_name` is the signal that stopped it (or None) and
    `stop.exit_code` the process exit code: 0 for SIGTERM (a scheduler's preemption is not a
    failure), 130 for SIGINT (the shell convention for Ctrl-C).
    """

    def __init__(self, grace_secs: float = 25.0, stream=None):
        self.grace_secs = grace_secs
        self._stream = stream or sys.stderr
        self.signum: Optional[int] = None
        self._previous = {}
        self._timer: Optional[threading.Timer] = None
        self._running = False

    @property
    def signal_name(self) -> Optional[str]:
        return signal.Signals(self.signum).name if self.signum else None

    @property
    def exit_code(self) -> int:
        return _GRACEFUL_EXIT.get(self.signum, 0)

    def __enter__(self) -> "GracefulStop":
        for sig in _GRACEFUL_EXIT:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            self._exit_now(f"{name} again: exiting now; the last saved checkpoint is kept",
                           128 + signum)
        self.signum = signum
        if not self._running:
            # Before the first step or after the final save: nothing unsaved to lose.
            self._exit_now(f"{name} received outside the training loop: exiting; nothing "
                           f"unsaved was lost", self.exit_code)
        print(f"{name} received: stopping after this step and saving a checkpoint "
              f"(send it again to exit at once)", file=self._stream, flush=True)
        self._timer = threading.Timer(
            self.grace_secs, self._exit_now,
            (f"no clean stop within {self.grace_secs:g}s of {name}: exiting now; the last "
             f"saved checkpoint is kept", 128 + signum))
        self._timer.daemon = True
        self._timer.start()

    def _exit_now(self, message: str, code: int):
        print(message, file=self._stream, flush=True)
        sys.stdout.flush()
        os._exit(code)

    def hook(self) -> tf.estimator.SessionRunHook:
        return _StopRequestHook(self)


class _StopRequestHook(tf.estimator.SessionRunHook):
    def __init__(self, stop: GracefulStop):
        self._stop = stop

    def after_create_session(self, session, coord):
        self._stop._running = True  # runs after the checkpoint saver's first save

    def after_run(self, run_context, run_values):
        if self._stop.signum is not None:
            run_context.request_stop()

    def end(self, session):
        self._stop._running = False  # runs after the checkpoint saver's final save


# --------------------------------------------------------------------------- divergence


def _network_of(name: str) -> str:
    for scope in (model_fns.GENERATOR_SCOPE, model_fns.DISCRIMINATOR_SCOPE):
        if name.startswith(scope + "/"):
            return scope
    return "optimizer" if name.startswith(("G_train", "D_train")) else "model"


def _last_good(model_dir: str) -> str:
    path = tf.train.latest_checkpoint(model_dir)
    if not path:
        return "no checkpoint was written"
    return f"the last good checkpoint is step {int(tf.train.load_variable(path, 'global_step'))}"


class NonFiniteLossHook(tf.estimator.SessionRunHook):
    """Raises `TrainingDiverged` when the discriminator's or generator's loss is NaN or inf."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def begin(self):
        self._losses = {k: v for k, v in model_fns.graph_state().get("losses", {}).items()
                        if v is not None}
        self._global_step = v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs({"step": self._global_step, **self._losses})

    def after_run(self, run_context, run_values):
        results = run_values.results
        for network in (model_fns.DISCRIMINATOR_SCOPE, model_fns.GENERATOR_SCOPE):
            value = results.get(network)
            if value is not None and not math.isfinite(float(value)):
                v1.summary.FileWriterCache.get(self._model_dir).flush()
                raise TrainingDiverged(
                    f"{network} loss is {float(value)} at step {int(results['step']) + 1}: "
                    f"training stopped without saving; {_last_good(self._model_dir)} in "
                    f"{self._model_dir} (lower the learning rate or change the loss)")


class FiniteCheckpointListener(tf.estimator.CheckpointSaverListener):
    """Refuses (raises `TrainingDiverged`) to save a checkpoint holding a NaN/inf variable."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def begin(self):
        self._variables = [v for v in v1.global_variables() if v.dtype.base_dtype.is_floating]
        self._finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables]) \
            if self._variables else None

    def before_save(self, session, global_step_value):
        if self._finite is None:
            return
        finite = session.run(self._finite)
        if finite.all():
            return
        name = self._variables[int((~finite).argmax())].op.name
        raise TrainingDiverged(
            f"{_network_of(name)} weights are non-finite ({name}) at step {int(global_step_value)}: "
            f"training stopped without saving; {_last_good(self._model_dir)} in {self._model_dir} "
            f"(lower the learning rate or change the loss)")


# ----------------------------------------------------------------------------- the lock


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
    `took_over` describes the stale lock that was replaced, if any.
    """

    def __init__(self, model_dir: str, stream=None):
        self.path = os.path.join(model_dir, LOCK_FILENAME)
        self._stream = stream or sys.stderr
        self._fd: Optional[int] = None
        self.took_over: Optional[str] = None

    @staticmethod
    def _describe(holder: dict) -> str:
        started = holder.get("started")
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"

    def _read(self) -> dict:
        try:
            text = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = self._read()
            os.close(self._fd)
            self._fd = None
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ModelDirLocked(
                f"{os.path.dirname(self.path)} is in use by another training "
                f"({self._describe(holder)}); wait for it to finish or use another --model-dir"
            ) from None
        previous = self._read()
        if previous:
            here = previous.get("host") == socket.gethostname()
            state = ("no longer running" if here and not _pid_alive(int(previous.get("pid", 0)))
                     else "not holding it")
            self.took_over = f"{self._describe(previous)}, {state}"
            print(f"note: taking over the stale lock {self.path} of {self.took_over}",
                  file=self._stream, flush=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, record.encode() + b"\n", 0)
        os.fsync(self._fd)
        return self

    def __exit__(self, *exc):
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # kept, not unlinked: unlinking races with a new locker
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


# -------------------------------------------------------------------- model_dir contents


_PARTIAL = re.compile(r"(\.tmp[0-9a-f]{32}|_temp)$|^\.tmp-")


def partial_files(model_dir: str) -> List[str]:
    """What an interrupted save leaves behind: TF's `*.tmp<hex>` files and `<prefix>_temp`
    folders, and our `.tmp-*` files (config, sample PNGs)."""
    found = []
    for folder in (model_dir, os.path.join(model_dir, "samples")):
        if os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if _PARTIAL.search(n)]
    return found


def remove_partial_files(model_dir: str) -> List[str]:
    """Delete `partial_files`. Call only while holding the `RunLock`, when no other process can
    be writing them. Returns the removed paths."""
    removed = partial_files(model_dir)
    for path in removed:
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    return removed


def _listed_checkpoints(model_dir: str) -> List[str]:
    """Checkpoint prefixes the state file lists (joined to `model_dir`), newest first."""
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    latest = state.model_checkpoint_path
    return [latest] + [p for p in reversed(state.all_model_checkpoint_paths) if p != latest]


def _unreadable(path: str) -> Optional[str]:
    """Why the checkpoint at `path` cannot be read in full (every tensor, checksums), or None."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # TF reports damage as OpError, IndexError, ValueError...
        lines = [ln for ln in str(err).splitlines() if ln.strip() and "Graph execution" not in ln]
        return _strip(lines[0]) if lines else type(err).__name__
    return None


def checkpoint_step(model_dir: str) -> int:
    """Global step of the newest listed checkpoint whose step can be read (0 if none)."""
    for path in _listed_checkpoints(model_dir):
        with contextlib.suppress(Exception):
            return int(tf.train.load_variable(path, "global_step"))
    return 0


def recover_latest_checkpoint(model_dir: str, stream=None) -> Optional[str]:
    """If the newest listed checkpoint cannot be read (a storage fault: a kill cannot cause
    it), rename its files to `*.corrupt` and point the state file at the newest readable one,
    so training resumes from there. Call only while holding the `RunLock`. Returns a note, or
    None when nothing was wrong; raises `CorruptCheckpoint` when no listed checkpoint reads."""
    listed = _listed_checkpoints(model_dir)
    bad = []
    for path in listed:
        problem = _unreadable(path)
        if problem is None:
            break
        bad.append((path, problem))
    else:
        if bad:
            raise CorruptCheckpoint(
                f"no checkpoint in {model_dir} can be read ({os.path.basename(bad[0][0])}: "
                f"{bad[0][1]}); use a new --model-dir")
        return None
    if not bad:
        return None
    for path, _ in bad:
        for f in tf.io.gfile.glob(path + ".*"):
            if not f.endswith(".corrupt"):
                os.replace(f, f + ".corrupt")
    kept = [p for p in listed if p not in dict(bad)]
    v1.train.update_checkpoint_state(model_dir, kept[0], all_model_checkpoint_paths=kept[::-1])
    note = (f"note: checkpoint {os.path.basename(bad[0][0])} is unreadable ({bad[0][1]}); moved "
            f"aside as *.corrupt, resuming from {os.path.basename(kept[0])}")
    print(note, file=stream or sys.stderr, flush=True)
    return note


class CheckpointCompatibilityHook(tf.estimator.SessionRunHook):
    """Before the session restores, compares the graph's variables with the latest checkpoint's.

    A `tf.train.Saver` restore of a resource variable takes the checkpoint's shape without
    complaint, so a mismatch would otherwise surface later as an unrelated-looking op error (or
    not at all). `check_model_dir` catches config changes; this also catches a checkpoint whose
    config.yaml is gone and custom `generator_fn`/`discriminator_fn` that changed.
    """

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def begin(self):
        path = tf.train.latest_checkpoint(self._model_dir)
        if not path:
            return
        saved = dict(tf.train.list_variables(path))
        problems = []
        for variable in v1.global_variables():
            name, shape = variable.op.name, variable.shape.as_list()
            if name not in saved:
                problems.append(f"{name} is not in the checkpoint")
            elif list(saved[name]) != shape:
                problems.append(f"{name}: {list(saved[name])} in the checkpoint, {shape} now")
        if problems:
            more = f"; {len(problems) - 1} more differ" if len(problems) > 1 else ""
            raise config_lib.ConfigError(
                f"{self._model_dir} holds a checkpoint of a different architecture "
                f"({problems[0]}{more}); use a new --model-dir or the config it was trained with")


# ------------------------------------------------------------------------ failure text


def _strip(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def describe_failure(err: BaseException, model_dir: Optional[str] = None):
    """`(one-line message, exit code)` for a failure the user must fix, not the code (a full
    disk, permissions, a diverged model, a locked model_dir), or None for anything else."""
    if isinstance(err, TrainingDiverged):
        return str(err), EXIT_DIVERGED
    if isinstance(err, v1.train.NanLossDuringTrainingError):
        return "a loss became NaN: training stopped without saving", EXIT_DIVERGED
    if isinstance(err, (ModelDirLocked, CorruptCheckpoint)):
        return str(err), 2
    kept = ""
    if model_dir and os.path.isdir(model_dir) and tf.train.latest_checkpoint(model_dir):
        with contextlib.suppress(Exception):  # a message, not a second failure
            kept = f"; {_last_good(model_dir)} in {model_dir}"
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

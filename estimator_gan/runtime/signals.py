"""Ending a training job on purpose: on SIGTERM / SIGINT (`GracefulStop`) and when its time
budget runs out (`TimeBudget`), both the way a finished job ends: after the current
`session.run`, with a final checkpoint and flushed event files, exit code 0 (130 for SIGINT).

What a caller must know:

* A stop request is honoured at the end of the current `session.run` (one, or
  `train.steps_per_run`, global steps); the Estimator's `CheckpointSaverHook` then saves in
  `end()` and the summary hook flushes. Outside the training loop (graph building, restoring,
  after the final save) there is nothing unsaved, so a signal exits at once with the same code.
* A second signal, or no exit within `grace_secs` (a step or input pipeline that hangs), exits
  at once with 128 + the signal number; the last checkpoint on disk is still complete.
* A parameter server (`GracefulStop(active=False)`) keeps the default handlers: it blocks in
  TensorFlow's server loop, where no Python handler ever runs, and has nothing to save, so
  SIGTERM and SIGINT end it at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

import tensorflow as tf

_GRACEFUL_EXIT = {signal.SIGTERM: 0, signal.SIGINT: 130}


class GracefulStop:
    """Install with `with GracefulStop() as stop:`; pass `stop.hook()` to `GAN.train`.

    After training returns, `stop.signal_name` is the signal that stopped it (or None) and
    `stop.exit_code` the process exit code: 0 for SIGTERM (a scheduler's preemption is not a
    failure), 130 for SIGINT (the shell convention for Ctrl-C).
    """

    def __init__(self, grace_secs: float = 25.0, stream=None, active: bool = True):
        self.grace_secs = grace_secs
        self.active = active
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
            self._previous[sig] = signal.signal(sig, self._handle if self.active else signal.SIG_DFL)
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


class TimeBudget(tf.estimator.SessionRunHook):
    """Requests a stop after the first `session.run` that ends `minutes` after `started`
    (a `time.time()`), like a SIGTERM: the final checkpoint follows. `expired` says whether it
    did."""

    def __init__(self, minutes: float, started: Optional[float] = None):
        self.minutes = minutes
        self.deadline = (started if started is not None else time.time()) + 60.0 * minutes
        self.expired = False

    def after_run(self, run_context, run_values):
        if time.time() >= self.deadline:
            self.expired = True
            run_context.request_stop()

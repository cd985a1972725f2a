"""The hooks of a training run. Each gets the tensors it reads through its constructor, from the
`GANTrainOps` the TRAIN spec hands to `training_hooks(ops)` (see `runtime.loop`), never by
looking into the graph:

* `RunLoopHook` — in one process: feeds each run its number of steps (`steps_per_run` K, fewer
  for the last run before max_steps), stops at max_steps exactly and writes the summaries at
  the steps they are due, the same steps whatever K is (the Estimator's summary hook assumes one
  step per run).
* `ProgressHook` — a progress line every `log_every_steps`: step, both losses, steps/s,
  examples/s, ETA.
* `NonFiniteLossHook` — raises `TrainingDiverged` (naming the network, the value and the step)
  when a loss becomes NaN/inf, without saving.
* `SamplePictureHook` — `samples/step_<N>.png` and TensorBoard images at every checkpoint step.

All step numbers are exact at run boundaries, whatever K is: the hooks fetch the global step
the run ends at (`GANTrainOps.global_step_after`), not the variable, whose read may run before
or after the run's updates.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from estimator_gan import checkpoints, fileio, plotting
from estimator_gan.errors import TrainingDiverged
from estimator_gan.model import gan

v1 = tf.compat.v1


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


class _StepTracker(tf.estimator.SessionRunHook):
    """Knows the global step at every run boundary: read once when the session starts, then
    taken from the step the run ends at."""

    def __init__(self, step_after: tf.Tensor):
        self._step_after = step_after
        self.step = 0

    def after_create_session(self, session, coord):
        self.step = int(session.run(v1.train.get_global_step()))

    def _fetches(self, **more) -> tf.estimator.SessionRunArgs:
        return tf.estimator.SessionRunArgs({"step": self._step_after, **more})


class RunLoopHook(_StepTracker):
    """One process's runs of K steps (see the module docstring). `summary_every`: write the
    graph's summaries when a run ends on a multiple of it (and at the last run)."""

    def __init__(self, ops: gan.GANTrainOps, steps_per_run: int, max_steps: int, model_dir: str,
                 summary_every: Optional[int]):
        super().__init__(ops.global_step_after)
        self._steps = ops.steps_per_run
        self._k = steps_per_run
        self._max_steps = max_steps
        self._model_dir = model_dir
        self._summary_every = summary_every or 0

    def begin(self):
        self._summary = v1.summary.merge_all() if self._summary_every else None

    def before_run(self, run_context):
        n = max(1, min(self._k, self._max_steps - self.step))
        self._due = self._summary is not None and (
            _crossed(self.step, self.step + n, self._summary_every) or self.step + n >= self._max_steps)
        more = {"summary": self._summary} if self._due else {}
        args = self._fetches(**more)
        return tf.estimator.SessionRunArgs(args.fetches, feed_dict={self._steps: n})

    def after_run(self, run_context, run_values):
        results = run_values.results
        self.step = int(results["step"])
        if self._due:
            writer = v1.summary.FileWriterCache.get(self._model_dir)
            writer.add_summary(results["summary"], self.step)
        if self.step >= self._max_steps:
            run_context.request_stop()

    def end(self, session):
        if self._summary is not None:
            v1.summary.FileWriterCache.get(self._model_dir).flush()


class ProgressHook(_StepTracker):
    """Prints step, both losses, steps/s, examples/s and ETA every `every_steps` global steps."""

    def __init__(self, ops: gan.GANTrainOps, every_steps: int, max_steps: int,
                 examples_per_step: int, stream=None):
        super().__init__(ops.global_step_after)
        self._losses = {k: v for k, v in ops.losses._asdict().items() if v is not None}
        self._every = every_steps
        self._max_steps = max_steps
        self._examples_per_step = examples_per_step
        self._stream = stream or sys.stdout

    def after_create_session(self, session, coord):
        super().after_create_session(session, coord)
        self._log_step = self._start_step = self.step
        self._log_time = self._start_time = time.time()

    def before_run(self, run_context):
        return self._fetches(**self._losses)

    def after_run(self, run_context, run_values):
        result = run_values.results
        before, self.step = self.step, int(result["step"])
        if not (_crossed(before, self.step, self._every) or self.step >= self._max_steps):
            return
        now = time.time()
        rate = (self.step - self._log_step) / max(now - self._log_time, 1e-9)
        total_rate = (self.step - self._start_step) / max(now - self._start_time, 1e-9)
        eta = max(self._max_steps - self.step, 0) / max(total_rate, 1e-9)
        losses = "  ".join(f"{k[0].upper()} {float(result[k]):8.4f}" for k in ("discriminator", "generator")
                           if k in result)
        print(f"step {self.step:>7}/{self._max_steps}  {losses}  {rate:7.1f} steps/s  "
              f"{rate * self._examples_per_step:8.0f} ex/s  ETA {_hms(eta)}",
              file=self._stream, flush=True)
        self._log_step, self._log_time = self.step, now


class NonFiniteLossHook(tf.estimator.SessionRunHook):
    """Raises `TrainingDiverged` when the discriminator's or generator's loss of any step of a
    run is NaN or inf. Raising, unlike `request_stop`, makes `MonitoredSession` skip every
    hook's `end()`, so no final checkpoint is saved and the last good one stays the latest."""

    def __init__(self, ops: gan.GANTrainOps, model_dir: str):
        self._step = ops.nonfinite_step
        self._losses = {k: v for k, v in ops.nonfinite_losses._asdict().items() if v is not None}
        self._model_dir = model_dir

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs({"step": self._step, **self._losses})

    def after_run(self, run_context, run_values):
        results = run_values.results
        if results["step"] < 0:
            return
        for network in (gan.DISCRIMINATOR, gan.GENERATOR):
            value = results.get(network)
            if value is not None and not math.isfinite(float(value)):
                v1.summary.FileWriterCache.get(self._model_dir).flush()
                raise TrainingDiverged(
                    f"{network} loss is {float(value)} at step {int(results['step'])}: training "
                    f"stopped without saving; {checkpoints.last_good(self._model_dir)} in "
                    f"{self._model_dir} (lower the learning rate or change the loss)")


class SamplePictureHook(_StepTracker):
    """At the start, at every multiple of `every_steps` (the checkpoint interval) and at the
    end: `samples/step_<N>.png` (G in inference mode on fixed noise: an image grid, or a
    scatter plot with the mode centres for 2D data) and the TensorBoard image summary
    `images/generated`; `images/real` once, from `real_examples()`."""

    def __init__(self, ops: gan.GANTrainOps, model_dir: str, every_steps: int, centres=None,
                 real_examples: Optional[Callable[[], np.ndarray]] = None):
        super().__init__(ops.global_step_after)
        self._samples = ops.samples
        self._dir = fileio.join(model_dir, "samples")
        self._model_dir = model_dir
        self._every = every_steps
        self._centres = centres
        self._real_examples = real_examples
        self._written = None
        self.last_path: Optional[str] = None

    def after_create_session(self, session, coord):
        super().after_create_session(session, coord)
        self._write(session)

    def before_run(self, run_context):
        return self._fetches()

    def after_run(self, run_context, run_values):
        before, self.step = self.step, int(run_values.results["step"])
        if _crossed(before, self.step, self._every):
            self._write(run_context.session)

    def end(self, session):
        self._write(session)

    def _write(self, session) -> None:
        if self._written == self.step:
            return
        pictures = {"images/generated": plotting.samples_picture(session.run(self._samples), self._centres)}
        self.last_path = plotting.save_png(
            pictures["images/generated"], fileio.join(self._dir, f"step_{self.step:08d}.png"))
        if self._written is None and self._real_examples is not None:
            pictures["images/real"] = plotting.samples_picture(self._real_examples(), self._centres)
        self._written = self.step
        values = [v1.Summary.Value(tag=tag, image=v1.Summary.Image(
            height=picture.height, width=picture.width, colorspace=1 if picture.mode == "L" else 3,
            encoded_image_string=plotting.png_bytes(picture))) for tag, picture in pictures.items()]
        writer = v1.summary.FileWriterCache.get(self._model_dir)
        writer.add_summary(v1.Summary(value=values), self.step)
        writer.flush()


class EvaluationPrinter(tf.estimator.Exporter):
    """Prints one line per evaluation the evaluator task makes (it exports nothing: the chief
    exports). An Exporter because that is the hook `train_and_evaluate` calls with each result."""

    def __init__(self, stream=None):
        self._stream = stream

    @property
    def name(self) -> str:
        return "evaluation_printer"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        values = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(eval_result.items())
                           if k != "global_step" and np.ndim(v) == 0)
        print(f"evaluation at step {eval_result.get('global_step')}: {values}",
              file=self._stream or sys.stdout, flush=True)
        return None

"""What runs after a checkpoint is saved during training: sample-quality evaluation and
training-time exports. Both take what they need (a sampling callable, an exporter) through
their constructors, and run in a thread of their own, where TensorFlow is eager, outside the
training loop's finalized graph."""
from __future__ import annotations

import concurrent.futures
from typing import Callable, List, Optional

import tensorflow as tf

from estimator_gan.evaluation import evaluate, report
from estimator_gan.serving.export import GANExporter


def run_eagerly(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in eager mode: directly when already eager, else in a new thread
    (TF 2 threads start eager), e.g. from a listener running inside `Estimator.train`'s graph."""
    if tf.executing_eagerly():
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


class EvaluationListener(tf.estimator.CheckpointSaverListener):
    """After every `eval.every_checkpoints`-th checkpoint (counting the one written when
    training starts): the sample metrics of `generate(count, seed=..., checkpoint_path=...)`
    with their real reference, appended to `<model_dir>/evaluation/metrics.jsonl` and written
    as TensorBoard scalars `eval/*` / `eval_reference/*`."""

    def __init__(self, config, model_dir: str, generate: Callable, stream=None):
        self._model_dir = model_dir
        self._generate = generate
        self._every = config.eval.every_checkpoints
        self._metrics = evaluate.SampleMetrics(config, model_dir, stream)
        self._stream = stream
        self._saves = 0
        self.records: List[dict] = []

    def after_save(self, session, global_step_value):
        step = int(global_step_value)
        due = self._every and self._saves % self._every == 0
        self._saves += 1
        if not due:
            return
        path = tf.train.latest_checkpoint(self._model_dir)
        record = run_eagerly(evaluate.evaluate_checkpoint, self._generate, self._metrics, path)
        evaluate.append_history(self._model_dir, record)
        self.records.append(record)
        if self._stream is not None:
            print(f"eval at step {step}: {report.format_inline(record)}", file=self._stream, flush=True)
        report.write_summaries(self._model_dir, step, record)


class ExportListener(tf.estimator.CheckpointSaverListener):
    """After each checkpoint, runs a `GANExporter` (for `best`, after a short evaluation of
    `export.eval_steps` batches by `evaluate(steps, name)`) and prints where the export went.
    Skips step 0 and a step the newest export already holds (a resumed run re-saves its first
    checkpoint)."""

    def __init__(self, exporter: GANExporter, model_dir: str, eval_steps: int,
                 evaluate_fn: Optional[Callable] = None, stream=None):
        self.exporter = exporter
        self._model_dir = model_dir
        self._eval_steps = eval_steps
        self._evaluate = evaluate_fn
        self._stream = stream

    def after_save(self, session, global_step_value):
        run_eagerly(self._export, int(global_step_value))

    def _export(self, global_step: int):
        if global_step == 0 or global_step == self.exporter.newest_export_step():
            return
        checkpoint = tf.train.latest_checkpoint(self._model_dir)
        eval_result = None
        if self.exporter.policy == "best":
            eval_result = self._evaluate(steps=self._eval_steps, name="export")
        path = self.exporter.export(None, None, checkpoint, eval_result, False)
        if path:
            print(f"exported step {global_step} to {path}", file=self._stream, flush=True)

"""The orchestrated training loop and the `GAN` object that owns the three Estimators.

Why not alternate `generator_estimator.train()` and `discriminator_estimator.train()`? Each
`train()` call rebuilds the graph, opens a session, restores and saves a checkpoint: 1-2 s
against ~1 ms for one update in an open session. So `GAN.train` runs a third Estimator whose
`model_fn` (`model_fns.gan_model_fn`) chains `d_steps` D updates and `g_steps` G updates into one
train op, in one graph and one session, on the same model_dir. RunConfig, hooks, resuming and
TF_CONFIG distribution therefore work as for any Estimator, and the generator and discriminator
Estimators predict, evaluate, export or train further from the checkpoints it writes.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import warnings
from typing import Callable, Iterable, List, Optional

import numpy as np
import tensorflow as tf

from estimator_gan import config as config_lib
from estimator_gan import custom
from estimator_gan import data as data_lib
from estimator_gan import distributed
from estimator_gan import evaluation
from estimator_gan import export
from estimator_gan import images
from estimator_gan import losses
from estimator_gan import model_fns
from estimator_gan import nets
from estimator_gan import reliability

v1 = tf.compat.v1


def resolve_config(config: config_lib.Config) -> config_lib.Config:
    """Fill in what the data decides (the sample shape; a conditional model's class count) so
    the config fully fixes the model."""
    if config.model.sample_shape is None:
        config = config.model_copy(deep=True)
        config.model.sample_shape = list(data_lib.sample_shape(config.data))
    if config.model.conditional and config.model.num_classes is None:
        classes = data_lib.num_classes(config.data)
        if classes is None:
            raise config_lib.ConfigError(
                f"model.conditional needs class labels, but data.source={config.data.source} "
                "has none (or an unknown count): set model.num_classes or use a labelled source")
        config = config.model_copy(deep=True)
        config.model.num_classes = classes
    return config


def check_labels(config: config_lib.Config) -> None:
    """Refuse data whose labels (0..n-1, where known before reading it all) exceed
    `model.num_classes`: an embedding lookup would fail mid-training or, on some devices,
    silently read zeros."""
    classes = config.model.num_classes
    found = data_lib.num_classes(config.data) if classes is not None else None
    if found is not None and found > classes:
        raise data_lib.DataError(
            f"{config.data.source}: labels go up to {found - 1} but model.num_classes is "
            f"{classes}; labels must lie in 0..{classes - 1}")


def check_model_dir(config: config_lib.Config, model_dir: str) -> None:
    """Refuse to resume a checkpoint under a config whose network shapes differ from it."""
    saved_path = os.path.join(model_dir, config_lib.CONFIG_FILENAME)
    if not (os.path.isfile(saved_path) and tf.train.latest_checkpoint(model_dir)):
        return
    saved = resolve_config(config_lib.load_config(saved_path))
    diffs = config_lib.architecture_differences(saved, config)
    if diffs:
        raise config_lib.ConfigError(
            f"{model_dir} holds a checkpoint of a different architecture ({'; '.join(diffs)}); "
            "use a new --model-dir or the saved config")


def make_run_config(config: config_lib.Config, model_dir: str, **overrides) -> tf.estimator.RunConfig:
    """A RunConfig from the config's train and distribute sections. TF_CONFIG, when set, is
    checked first (a one-line `TFConfigError` before any server starts), then read by RunConfig."""
    train = config.train
    cluster = distributed.read_tf_config()
    distributed.check_cluster(cluster, config.distribute)
    train_distribute, session_config = distributed.make_strategy(config.distribute, cluster)
    kwargs = dict(
        train_distribute=train_distribute,
        session_config=session_config,
        experimental_max_worker_delay_secs=config.distribute.max_worker_delay_secs,
        model_dir=model_dir,
        tf_random_seed=train.seed,
        save_checkpoints_steps=train.save_checkpoints_steps,
        save_summary_steps=train.save_summary_steps,
        keep_checkpoint_max=train.keep_checkpoint_max,
        log_step_count_steps=None,
    )
    kwargs.update(overrides)
    return tf.estimator.RunConfig(**kwargs)


def _call_input_fn(input_fn, input_context=None):
    params = inspect.signature(input_fn).parameters
    if "input_context" in params:
        return input_fn(input_context=input_context)
    return input_fn()


def stacked_input_fn(input_fn: Callable, d_steps: int) -> Callable:
    """Group `d_steps` consecutive batches per element: one global step's worth of D updates."""

    def fn(input_context=None):
        return _call_input_fn(input_fn, input_context).batch(d_steps, drop_remainder=True)

    return fn


def _lazy_input_fn(make: Callable[[], Callable]) -> Callable:
    """An input_fn that builds the real one (loading the data) on first use only: processes of a
    cluster that never read this input (ps, evaluator, chief for eval data) skip the loading."""
    built: List[Callable] = []

    def fn(input_context=None):
        if not built:
            built.append(make())
        return _call_input_fn(built[0], input_context)

    return fn


def _sharded_input_fn(input_fn: Callable, input_context) -> Callable:
    """`input_fn` with a fixed input context (this worker's shard) when Estimator gives none."""

    shard = input_context

    def fn(input_context=None):
        return _call_input_fn(input_fn, input_context or shard)

    return fn


class ProgressHook(tf.estimator.SessionRunHook):
    """Prints step, both losses, steps/s, examples/s and ETA every `every_steps` global steps."""

    def __init__(self, every_steps: int, max_steps: int, examples_per_step: int, stream=None):
        self._every = every_steps
        self._max_steps = max_steps
        self._examples_per_step = examples_per_step
        self._stream = stream or sys.stdout

    def begin(self):
        self._losses = model_fns.graph_state().get("losses", {})
        self._global_step = v1.train.get_global_step()

    def after_create_session(self, session, coord):
        self._step = self._log_step = self._start_step = int(session.run(self._global_step))
        self._log_time = self._start_time = time.time()
        self._next_log = (self._step // self._every + 1) * self._every

    def before_run(self, run_context):
        # Fetch the losses only on steps that will be printed.
        fetches = {"step": self._global_step}
        if self._step + 1 >= self._next_log:
            fetches.update(self._losses)
        return tf.estimator.SessionRunArgs(fetches)

    def after_run(self, run_context, run_values):
        result = run_values.results
        self._step = step = int(result["step"]) + 1
        if step < self._next_log or "discriminator" not in result:
            return
        now = time.time()
        rate = (step - self._log_step) / max(now - self._log_time, 1e-9)
        total_rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
        eta = max(self._max_steps - step, 0) / max(total_rate, 1e-9)
        print(f"step {step:>7}/{self._max_steps}  D {result['discriminator']:8.4f}  "
              f"G {result['generator']:8.4f}  {rate:7.1f} steps/s  "
              f"{rate * self._examples_per_step:8.0f} ex/s  ETA {_hms(eta)}",
              file=self._stream, flush=True)
        self._log_step, self._log_time = step, now
        self._next_log = (step // self._every + 1) * self._every


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SamplePictureListener(tf.estimator.CheckpointSaverListener):
    """After each checkpoint, writes `samples/step_<N>.png`: G in inference mode on fixed noise
    (an image grid, or a scatter plot with the mode centres for 2D data)."""

    def __init__(self, model_dir: str, centres=None):
        self._dir = os.path.join(model_dir, "samples")
        self._centres = centres
        self.last_path: Optional[str] = None

    def begin(self):
        self._samples = model_fns.graph_state().get("samples")

    def after_save(self, session, global_step_value):
        if self._samples is None:
            return
        samples = session.run(self._samples)
        path = os.path.join(self._dir, f"step_{int(global_step_value):08d}.png")
        self.last_path = images.save_png(images.samples_picture(samples, self._centres), path)


def class_labels(labels, count: int, num_classes: int) -> np.ndarray:
    """`labels` (one id, or `count` ids) as int32 [count], checked against [0, num_classes)."""
    ids = np.asarray(labels)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not np.all(np.mod(ids, 1) == 0):
            raise ValueError(f"labels must be integer class ids, got {ids.ravel()[:5].tolist()}")
    ids = np.broadcast_to(ids.astype(np.int64), (count,)) if ids.ndim == 0 else ids.astype(np.int64).reshape(-1)
    if ids.shape[0] != count:
        raise ValueError(f"{ids.shape[0]} labels for {count} samples")
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}")
    return ids.astype(np.int32)


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


class GAN:
    """A GAN on tf.estimator: a generator Estimator, a discriminator Estimator, and the
    orchestrated loop that trains both in one session, all on one model_dir.

    `config` is a `Config` (its `model.sample_shape` is filled from the data if unset);
    `run_config` a `tf.estimator.RunConfig` whose `model_dir` is used (or pass `model_dir`).
    `generator_fn` / `discriminator_fn` / `loss` override the networks and loss the config names:

    * `generator_fn(noise, labels, mode, params) -> samples [B, *model.sample_shape]` and
      `discriminator_fn(samples, labels, mode, params) -> logits [B]` (or `[B, 1]`), callables
      or import paths `"package.module:name"`. They are called in the `generator/` and
      `discriminator/` variable scopes (with reuse), `mode` a `tf.estimator.ModeKeys`, and
      `params["config"]` the `Config`. Build layers with `tf.compat.v1.get_variable` or
      `tf.compat.v1.layers`, or wrap a Keras model factory with `keras_network`.
    * `loss`: a registered name, an import path, a `GANLoss`, or a pair of callables
      `(discriminator_loss, generator_loss)` (see `register_loss`).

    A network or loss given by name or by an importable function is recorded in the config
    (`model.generator_fn`, `model.discriminator_fn`, `loss.name`) that `train` saves beside the
    checkpoints, so the run can be resumed or exported from its model_dir alone.
    """

    def __init__(self, config: config_lib.Config, model_dir: Optional[str] = None,
                 run_config: Optional[tf.estimator.RunConfig] = None,
                 generator_fn=None, discriminator_fn=None, loss=None):
        self.config = resolve_config(config).model_copy(deep=True)
        overrides = self._custom_parts(generator_fn, discriminator_fn, loss)
        if self.config.model.generator.ema_decay is not None and model_fns.ema_decay(
                {"config": self.config, **overrides}) is None:
            warnings.warn("model.generator.ema_decay does not apply to a Keras generator "
                          "(keras_network); training and serving use its raw weights", stacklevel=2)
        if run_config is None:
            if model_dir is None:
                raise ValueError("GAN needs a model_dir or a run_config with one")
            run_config = make_run_config(self.config, model_dir)
        elif model_dir is not None and run_config.model_dir != model_dir:
            run_config = run_config.replace(model_dir=model_dir)
        if not run_config.model_dir:
            raise ValueError("GAN needs a model_dir or a run_config with one")
        self.run_config = run_config
        self.model_dir = run_config.model_dir
        self.params = {"config": self.config, **overrides}
        self._estimators = {}
        self.last_export: Optional[str] = None

    def _custom_parts(self, generator_fn, discriminator_fn, loss) -> dict:
        """Check the user's networks and loss now (not at graph-building time); record in the
        config those that can be named, and return the others as `params` overrides."""
        overrides = {}
        for role, fn in (("generator", generator_fn), ("discriminator", discriminator_fn)):
            if fn is None:
                continue
            checked = custom.network_function(fn, role)
            path = fn if isinstance(fn, str) else custom.import_path(fn)
            if path is not None:
                setattr(self.config.model, f"{role}_fn", path)
            else:
                overrides[f"{role}_fn"] = checked
        nets.networks_for(self.config)  # resolves and checks import paths
        if loss is not None:
            resolved = losses.as_loss(loss)
            if isinstance(loss, str):
                self.config.loss.name = loss
            elif resolved.name in losses.registered_losses() and losses.get_loss(resolved.name) == resolved:
                self.config.loss.name = resolved.name
            else:
                overrides["loss"] = resolved
        losses.as_loss(self.config.loss.name)
        return overrides

    def _estimator(self, name, model_fn) -> tf.estimator.Estimator:
        if name not in self._estimators:
            self._estimators[name] = tf.estimator.Estimator(
                model_fn=model_fn, config=self.run_config, params=dict(self.params))
        return self._estimators[name]

    @property
    def estimator(self) -> tf.estimator.Estimator:
        """The orchestrator: TRAIN alternates D and G updates in one train op."""
        return self._estimator("gan", model_fns.gan_model_fn)

    @property
    def generator_estimator(self) -> tf.estimator.Estimator:
        """The generator's Estimator: TRAIN one G update per step, EVAL losses and D metrics,
        PREDICT noise (or `{"noise", "labels"}`) -> `{"samples"}`; export it for serving."""
        return self._estimator("generator", model_fns.generator_model_fn)

    @property
    def discriminator_estimator(self) -> tf.estimator.Estimator:
        """The discriminator's Estimator: TRAIN one D update per step, EVAL as the generator's,
        PREDICT samples -> `{"logits", "probabilities"}`."""
        return self._estimator("discriminator", model_fns.discriminator_model_fn)

    def input_fn(self, training: bool = True) -> Callable:
        """The config's data source as an Estimator input_fn (per-replica batches)."""
        return data_lib.make_input_fn(self.config.data, training=training, seed=self.config.train.seed)

    def train(self, input_fn: Optional[Callable] = None, max_steps: Optional[int] = None,
              hooks: Iterable = (), progress: bool = True, stream=None) -> int:
        """Run the orchestrated loop until global step `max_steps` (default: the config's),
        resuming from the latest checkpoint. Returns the final global step.

        With a cluster in `TF_CONFIG` this process plays its part of the job through
        `tf.estimator.train_and_evaluate` (a ps process does not return: stop it by pid once the
        chief is done); the chief then exports the generator (`last_export`)."""
        max_steps = max_steps or self.config.train.max_steps
        cluster = distributed.read_tf_config()
        distributed.check_cluster(cluster, self.config.distribute)
        is_chief = cluster.is_chief if cluster is not None else self.run_config.is_chief
        # Only the chief writes config and checkpoints, so only the chief takes the lock.
        with reliability.RunLock(self.model_dir) if is_chief else contextlib.nullcontext():
            return self._train(cluster, is_chief, input_fn, max_steps, hooks, progress, stream)

    def _train(self, cluster, is_chief, input_fn, max_steps, hooks, progress, stream) -> int:
        if input_fn is None:
            check_labels(self.config)
        if is_chief:
            check_model_dir(self.config, self.model_dir)
            reliability.remove_partial_files(self.model_dir)
            reliability.recover_latest_checkpoint(self.model_dir)
            config_lib.save_config(self.config, self.model_dir)
        train = self.config.train
        all_hooks: List = list(hooks) + [reliability.NonFiniteLossHook(self.model_dir),
                                         reliability.CheckpointCompatibilityHook(self.model_dir)]
        if progress:
            all_hooks.append(ProgressHook(train.log_every_steps, max_steps,
                                          self.config.data.batch_size * train.d_steps, stream))
        centres = self.config.data.mixture.centres() if self.config.data.source == "mixture2d" else None
        self.sample_listener = SamplePictureListener(self.model_dir, centres)
        self.eval_listener = evaluation.EvaluationListener(
            self, (stream or sys.stdout) if progress else None)
        listeners: List = [reliability.FiniteCheckpointListener(self.model_dir),
                           self.sample_listener, self.eval_listener]
        if self.config.export.during_training != "never":
            listeners.append(export.ExportListener(self, stream))
        if cluster is None:
            self.estimator.train(stacked_input_fn(input_fn or self.input_fn(), train.d_steps),
                                 max_steps=max_steps, hooks=all_hooks, saving_listeners=listeners)
        else:
            self._train_and_evaluate(cluster, input_fn, max_steps, all_hooks, listeners)
        return self.global_step()

    def _train_and_evaluate(self, cluster: distributed.Cluster, input_fn, max_steps, hooks, listeners) -> None:
        """This process's part of a distributed job (chief, worker, ps or evaluator), through
        `tf.estimator.train_and_evaluate`. The chief exports the generator at the end."""
        dcfg = self.config.distribute
        train_input = input_fn or (self.input_fn() if cluster.worker_index is not None
                                   else _lazy_input_fn(self.input_fn))
        context = distributed.worker_input_context(cluster, dcfg)
        if context is not None:
            train_input = _sharded_input_fn(train_input, context)
        train_spec = tf.estimator.TrainSpec(
            stacked_input_fn(train_input, self.config.train.d_steps), max_steps=max_steps,
            hooks=hooks, saving_listeners=listeners)
        eval_spec = tf.estimator.EvalSpec(
            _lazy_input_fn(lambda: self.input_fn(training=False)), steps=dcfg.evaluator_steps,
            exporters=[EvaluationPrinter()], start_delay_secs=0,
            throttle_secs=dcfg.evaluator_throttle_secs)
        tf.estimator.train_and_evaluate(self.estimator, train_spec, eval_spec)
        if cluster.is_chief and dcfg.export_at_end:
            self.last_export = distributed.export_generator(self, os.path.join(self.model_dir, "export"))

    def export(self, export_dir: str, checkpoint_path: Optional[str] = None, tflite: Optional[bool] = None):
        """Export the latest checkpoint (or `checkpoint_path`) for TensorFlow Serving as a new
        version under `export_dir/generator/` and `export_dir/discriminator/` (see
        `estimator_gan.export.export`); returns the `ExportResult`."""
        return export.export(self, export_dir, checkpoint_path=checkpoint_path, tflite=tflite)

    def global_step(self) -> int:
        """The latest checkpoint's global step (0 before the first)."""
        return reliability.checkpoint_step(self.model_dir)

    def evaluate(self, input_fn: Optional[Callable] = None, steps: Optional[int] = None,
                 name: Optional[str] = None, checkpoint_path: Optional[str] = None) -> dict:
        """EVAL metrics (both losses, D accuracy/probability on real and fake, and the mode
        metrics for 2D mixture data) on the latest checkpoint (or `checkpoint_path`), one pass
        over the config's data unless `steps` is given."""
        return self.generator_estimator.evaluate(input_fn or self.input_fn(training=False),
                                                 steps=steps, name=name,
                                                 checkpoint_path=checkpoint_path)

    def generate(self, count: int, seed: int = 0, labels=None,
                 checkpoint_path: Optional[str] = None) -> np.ndarray:
        """`count` samples from the latest checkpoint (or `checkpoint_path`), G in inference
        mode, noise from `seed`.

        Conditional models: `labels` is one class id for all samples or one per sample
        (default: 0, 1, ..., num_classes-1, 0, ...); ids outside [0, num_classes) raise
        ValueError. Weights: the generator EMA unless `model.generator.inference_weights=raw`.
        """
        noise = np.random.RandomState(seed).standard_normal((count, self.config.model.z_dim)).astype(np.float32)
        features = {"noise": noise}
        model = self.config.model
        if model.conditional:
            features["labels"] = class_labels(
                np.arange(count) % model.num_classes if labels is None else labels,
                count, model.num_classes)
        elif labels is not None:
            raise ValueError("labels given, but the model is not conditional (model.conditional=false)")

        def input_fn():
            return tf.data.Dataset.from_tensor_slices(features).batch(256)

        return np.stack([p["samples"] for p in self.generator_estimator.predict(
            input_fn, yield_single_examples=True, checkpoint_path=checkpoint_path)])

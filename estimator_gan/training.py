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

import inspect
import os
import sys
import time
from typing import Callable, Iterable, List, Optional

import numpy as np
import tensorflow as tf

from estimator_gan import config as config_lib
from estimator_gan import custom
from estimator_gan import data as data_lib
from estimator_gan import images
from estimator_gan import losses
from estimator_gan import model_fns
from estimator_gan import nets

v1 = tf.compat.v1


def resolve_config(config: config_lib.Config) -> config_lib.Config:
    """Fill in what the data decides (the sample shape) so the config fully fixes the model."""
    if config.model.sample_shape is None:
        config = config.model_copy(deep=True)
        config.model.sample_shape = list(data_lib.sample_shape(config.data))
    return config


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
    """A RunConfig from the config's train section. TF_CONFIG, when set, is read by RunConfig."""
    train = config.train
    kwargs = dict(
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
        resuming from the latest checkpoint. Returns the final global step."""
        max_steps = max_steps or self.config.train.max_steps
        if self.run_config.is_chief:
            check_model_dir(self.config, self.model_dir)
            config_lib.save_config(self.config, self.model_dir)
        train = self.config.train
        all_hooks: List = list(hooks)
        if progress:
            all_hooks.append(ProgressHook(train.log_every_steps, max_steps,
                                          self.config.data.batch_size * train.d_steps, stream))
        centres = self.config.data.mixture.centres() if self.config.data.source == "mixture2d" else None
        self.sample_listener = SamplePictureListener(self.model_dir, centres)
        self.estimator.train(stacked_input_fn(input_fn or self.input_fn(), train.d_steps),
                             max_steps=max_steps, hooks=all_hooks,
                             saving_listeners=[self.sample_listener])
        return self.global_step()

    def global_step(self) -> int:
        """The latest checkpoint's global step (0 before the first)."""
        path = tf.train.latest_checkpoint(self.model_dir)
        return int(tf.train.load_variable(path, "global_step")) if path else 0

    def evaluate(self, input_fn: Optional[Callable] = None, steps: Optional[int] = None,
                 name: Optional[str] = None) -> dict:
        """EVAL metrics (both losses, D accuracy/probability on real and fake) on the latest
        checkpoint, one pass over the config's data unless `steps` is given."""
        return self.generator_estimator.evaluate(input_fn or self.input_fn(training=False),
                                                 steps=steps, name=name)

    def generate(self, count: int, seed: int = 0, labels=None) -> np.ndarray:
        """`count` samples from the latest checkpoint, G in inference mode, noise from `seed`."""
        noise = np.random.RandomState(seed).standard_normal((count, self.config.model.z_dim)).astype(np.float32)
        features = {"noise": noise}
        if labels is not None:
            features["labels"] = np.asarray(labels, np.int32)

        def input_fn():
            return tf.data.Dataset.from_tensor_slices(features).batch(256)

        return np.stack([p["samples"] for p in self.generator_estimator.predict(
            input_fn, yield_single_examples=True)])

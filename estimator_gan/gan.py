"""`GAN`: the object a Python user holds. It owns the three Estimators of one model directory
and wires the lower modules together: the training loop (`runtime.loop`), exports
(`serving.export`), sampling and evaluation. It holds no logic of its own beyond checking the
user's networks and loss once and recording them in the config.

Constructing a `GAN` only stores arguments: it builds no graph, reads no data (the config's
sample shape comes from a model directory's config, or at most an npy file's header) and
makes no distribution strategy until `train` is called.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from estimator_gan import checkpoints, fileio, sampling
from estimator_gan import config as config_lib
from estimator_gan.data import pipeline
from estimator_gan.errors import ExportError
from estimator_gan.model import custom, gan, losses, model_fns, networks
from estimator_gan.runtime import cluster as cluster_lib
from estimator_gan.runtime import listeners as listeners_lib
from estimator_gan.runtime import loop
from estimator_gan.serving import export as export_lib


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
        self.config = config_lib.resolve(config).model_copy(deep=True)
        overrides = self._custom_parts(generator_fn, discriminator_fn, loss)
        self.params = {"config": self.config, **overrides}
        if self.config.model.generator.ema_decay is not None and \
                gan.GANParts.from_params(self.params).ema_decay is None:
            warnings.warn("model.generator.ema_decay does not apply to a Keras generator "
                          "(keras_network); training and serving use its raw weights", stacklevel=2)
        model_dir = model_dir or (run_config.model_dir if run_config is not None else None)
        if not model_dir:
            raise ValueError("GAN needs a model_dir or a run_config with one")
        self.model_dir = model_dir
        self._user_run_config = run_config.replace(model_dir=model_dir) if run_config is not None else None
        self._estimators = {}
        self.last_export: Optional[export_lib.ExportResult] = None
        self.last_train: Optional[loop.TrainResult] = None

    def _custom_parts(self, generator_fn, discriminator_fn, loss) -> dict:
        """Check the user's networks and loss now (not at graph-building time); record them in
        the config (an import path, or for functions no import path reaches `in-script:<name>`,
        see `model.custom`), and return those without an import path as `params` overrides."""
        overrides = {}
        for role, fn in (("generator", generator_fn), ("discriminator", discriminator_fn)):
            if fn is None:
                continue
            checked = custom.network_function(fn, role)
            recorded = fn if isinstance(fn, str) else custom.recorded_name(fn)
            setattr(self.config.model, f"{role}_fn", recorded)
            if custom.is_in_script(recorded):
                overrides[f"{role}_fn"] = checked
        networks.networks_for(self.config, overrides.get("generator_fn"),
                              overrides.get("discriminator_fn"))  # resolves and checks import paths
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

    # ------------------------------------------------------------------------ Estimators

    @property
    def run_config(self) -> tf.estimator.RunConfig:
        """The RunConfig of the generator and discriminator Estimators: the one given, else the
        config's checkpoint and summary settings (no distribution strategy; `train` makes the
        training one)."""
        if self._user_run_config is not None:
            return self._user_run_config
        train = self.config.train
        return tf.estimator.RunConfig(
            model_dir=self.model_dir, tf_random_seed=train.seed,
            save_checkpoints_steps=train.save_checkpoints_steps,
            save_summary_steps=train.save_summary_steps,
            keep_checkpoint_max=train.keep_checkpoint_max, log_step_count_steps=None)

    def _estimator(self, name, model_fn, run_config=None) -> tf.estimator.Estimator:
        if name not in self._estimators:
            self._estimators[name] = tf.estimator.Estimator(
                model_fn=model_fn, config=run_config or self.run_config, params=dict(self.params))
        return self._estimators[name]

    @property
    def estimator(self) -> tf.estimator.Estimator:
        """The orchestrator: TRAIN alternates D and G updates in one train op (one global step
        per run; its input_fn must yield `[1, d_steps, B, ...]` elements, see `train`)."""
        config = self._user_run_config or cluster_lib.make_run_config(
            self.config, self.model_dir, cluster_lib.read_tf_config())
        return self._estimator("gan", model_fns.gan_model_fn, config)

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
        return pipeline.make_input_fn(self.config.data, training=training, seed=self.config.train.seed)

    # ------------------------------------------------------------------------ training

    def train(self, input_fn: Optional[Callable] = None, max_steps: Optional[int] = None,
              hooks: Iterable = (), progress: bool = True, stream=None) -> int:
        """Run the orchestrated loop until global step `max_steps` (default: the config's),
        resuming from the latest checkpoint. Returns the final global step.

        With a cluster in `TF_CONFIG` this process plays its part of the job through
        `tf.estimator.train_and_evaluate` (a ps process does not return: stop it by pid once the
        chief is done); the chief then exports the generator (`last_export`)."""
        started = time.time()
        listeners = []
        if self.config.eval.every_checkpoints:
            listeners.append(listeners_lib.EvaluationListener(
                self.config, self.model_dir, self.generate, stream if progress else None))
        if self.config.export.during_training != "never":
            listeners.append(listeners_lib.ExportListener(
                export_lib.GANExporter(self.generator_estimator, self.discriminator_estimator),
                self.model_dir, self.config.export.eval_steps, self.evaluate, stream))
        if self.config.distribute.strategy == "multi_worker_mirrored" and listeners:
            warnings.warn("multi_worker_mirrored runs no checkpoint listeners: in-training "
                          "evaluation and exports are off (evaluate and export afterwards)")
            listeners = []
        self.last_train = loop.train(self.params, self.model_dir, input_fn, max_steps, hooks,
                                     listeners, progress, stream, self._user_run_config, started)
        result = self.last_train
        if result.cluster is not None and result.is_chief and self.config.distribute.export_at_end:
            self.last_export = export_lib.export(fileio.join(self.model_dir, "export"),
                                                 self.generator_estimator)
        return result.step

    def export(self, export_dir: str, checkpoint_path: Optional[str] = None,
               tflite: Optional[bool] = None, generator_only: bool = False) -> export_lib.ExportResult:
        """Export the latest checkpoint (or `checkpoint_path`) for TensorFlow Serving as a new
        version under `export_dir/generator/` and `export_dir/discriminator/` (see
        `estimator_gan.serving.export.export`); returns the `ExportResult`."""
        self.last_export = export_lib.export(
            export_dir, self.generator_estimator,
            None if generator_only else self.discriminator_estimator,
            checkpoint_path=self.checkpoint(checkpoint_path), tflite=tflite)
        return self.last_export

    def checkpoint(self, checkpoint_path: Optional[str] = None, stream=None) -> str:
        """The checkpoint `export`, `generate` and `evaluate` read: `checkpoint_path` when
        given, else the newest one in the model_dir that reads in full, the one `train` resumes
        from whatever the `checkpoint` state file says (`checkpoints.newest_readable`); with
        `stream`, a note is printed there when that is not the one the state file lists.
        `ExportError` when there is none."""
        if checkpoint_path:
            return checkpoint_path
        newest = checkpoints.newest_readable(self.model_dir)
        if newest.path is None:
            raise ExportError(f"no checkpoint in {self.model_dir}: train first")
        if stream is not None and newest.note():
            print(newest.note(), file=stream, flush=True)
        return newest.path

    def global_step(self) -> int:
        """The global step of the checkpoint `train` resumes from (0 before the first)."""
        return checkpoints.latest_step(self.model_dir)

    def evaluate(self, input_fn: Optional[Callable] = None, steps: Optional[int] = None,
                 name: Optional[str] = None, checkpoint_path: Optional[str] = None) -> dict:
        """EVAL metrics (both losses, D accuracy/probability on real and fake, and the mode
        metrics for 2D mixture data) on the latest checkpoint (or `checkpoint_path`), one pass
        over the config's data unless `steps` is given."""
        return self.generator_estimator.evaluate(input_fn or self.input_fn(training=False),
                                                 steps=steps, name=name,
                                                 checkpoint_path=self.checkpoint(checkpoint_path))

    def generate(self, count: int, seed: int = 0, labels=None,
                 checkpoint_path: Optional[str] = None, codes=None) -> np.ndarray:
        """`count` samples from the latest checkpoint (or `checkpoint_path`), G in inference
        mode, noise `sampling.noise(count, z_dim, seed)`.

        Conditional models: `labels` is one class id for all samples or one per sample
        (default: 0, 1, ..., num_classes-1, 0, ...); ids outside [0, num_classes) raise
        `ExportError`. InfoGAN models (`model.latent_codes`): `codes`, one value (or None) per
        code, fixes those codes in every sample (`sampling.with_codes`). Weights: the generator
        EMA unless `model.generator.inference_weights=raw`.
        """
        model = self.config.model
        features = {"noise": sampling.noise(count, model.z_dim, seed)}
        if codes is not None:
            features["noise"] = sampling.with_codes(features["noise"], model.latent_codes, codes)
        ids = sampling.request_labels(model.conditional, model.num_classes, labels, count)
        if ids is not None:
            features["labels"] = ids

        def input_fn():
            return tf.data.Dataset.from_tensor_slices(features).batch(256)

        return np.stack([p["samples"] for p in self.generator_estimator.predict(
            input_fn, yield_single_examples=True, checkpoint_path=self.checkpoint(checkpoint_path))])

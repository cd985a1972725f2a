"""The Estimator `model_fn`s: generator, discriminator, and the orchestrated GAN step.

Each `model_fn` validates the mode and hands off to a spec builder; every builder derives its
spec from the values of `model.gan`, built once per graph (parts -> model -> losses -> train
ops):

* `generator_model_fn` — TRAIN: one G update through a frozen D; EVAL: losses and D metrics;
  PREDICT: noise -> samples, building only G.
* `discriminator_model_fn` — TRAIN: one D update on fresh fakes; EVAL: as above; PREDICT:
  samples -> logits and probabilities, building only D.
* `gan_model_fn` — the orchestrator's TRAIN: `train.d_steps` D updates (one real batch each)
  then `train.g_steps` G updates per global step, chained with control dependencies, for
  `steps_per_run` global steps per `session.run` (`features` is stacked
  `[steps_per_run, d_steps, B, ...]`); EVAL and PREDICT as the generator's.

`params`: `config` (the `Config`), optionally `generator_fn`, `discriminator_fn` and `loss`
(overriding what the config names), `steps_per_run` (orchestrator, default 1) and
`training_hooks`, a function `(GANTrainOps, Scaffold) -> (hooks, chief_hooks)` whose hooks the
TRAIN spec carries (the way TF-GAN's `get_hooks_fn` does): that is how hooks get the loss and sample
tensors. The TRAIN spec's scaffold saver (`CheckpointSaver`) refuses to save non-finite
weights and refreshes the EMA generator's batch-norm statistics before every save.
"""
from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf

from estimator_gan import checkpoints, fileio
from estimator_gan.errors import TrainingDiverged
from estimator_gan.model import eval_metrics, gan, signatures

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys


def _network_of(name: str) -> str:
    for scope in gan.ROLES:
        if name.startswith(scope + "/"):
            return scope
    return "optimizer" if name.startswith(("G_train", "D_train")) else "model"


class CheckpointSaver(v1.train.Saver):
    """The Estimator's default checkpoint saver, guarded: in the session it saves from, it runs
    `refresh` (the EMA generator's statistics refresh), so a checkpoint's statistics fit its
    weights, then refuses (`TrainingDiverged`) to write a checkpoint holding a NaN/inf
    variable, so the last good checkpoint stays the latest."""

    def __init__(self, refresh: Optional[tf.Operation], **kwargs):
        super().__init__(**kwargs)
        self._refresh = refresh
        self._variables = [v for v in v1.global_variables() if v.dtype.base_dtype.is_floating]
        self._finite = (tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables])
                        if self._variables else None)

    def save(self, sess, save_path, global_step=None, *args, **kwargs):
        if self._refresh is not None:
            sess.run(self._refresh)
        if self._finite is not None:
            finite = sess.run(self._finite)
            if not finite.all():
                name = self._variables[int((~finite).argmax())].op.name
                step = sess.run(global_step) if isinstance(global_step, (tf.Tensor, tf.Variable)) else global_step
                model_dir = fileio.dirname(save_path)
                raise TrainingDiverged(
                    f"{_network_of(name)} weights are non-finite ({name}) at step {int(step)}: "
                    f"training stopped without saving; {checkpoints.last_good(model_dir)} in "
                    f"{model_dir} (lower the learning rate or change the loss)")
        return super().save(sess, save_path, global_step, *args, **kwargs)


def _saver(refresh, run_config) -> CheckpointSaver:
    """Saver settings as `Estimator` makes its own (`RunConfig`'s retention)."""
    keep, hours = 5, 10000.0
    if run_config is not None:
        keep, hours = run_config.keep_checkpoint_max, run_config.keep_checkpoint_every_n_hours
    return CheckpointSaver(refresh, sharded=True, max_to_keep=keep,
                           keep_checkpoint_every_n_hours=hours, defer_build=True,
                           save_relative_paths=True)


def _worker(run_config) -> int:
    """This replica's place among every replica of the job, for its random stream."""
    worker = (getattr(run_config, "global_id_in_cluster", 0) or 0) if run_config is not None else 0
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        replica = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
        worker = worker * 1024 + int(replica or 0)
    return worker


def train_spec(parts: gan.GANParts, features, labels, d_steps: int, g_steps: int, params,
               run_config=None) -> tf.estimator.EstimatorSpec:
    """TRAIN: the train ops of `gan.gan_train_ops`, summaries of the last losses and the
    per-network step counters, hooks from `params["training_hooks"]`, the refreshing saver."""
    ops = gan.gan_train_ops(parts, features, labels, d_steps, g_steps,
                            params.get("steps_per_run", 1), _worker(run_config))
    for name, value in (("loss/discriminator", ops.losses.discriminator),
                        ("loss/generator", ops.losses.generator)):
        if value is not None:
            v1.summary.scalar(name, value)
    v1.summary.scalar("steps/generator", gan.step_counter(gan.GENERATOR_STEP))
    v1.summary.scalar("steps/discriminator", gan.step_counter(gan.DISCRIMINATOR_STEP))
    scaffold = v1.train.Scaffold(saver=_saver(ops.refresh_statistics, run_config))
    hooks_fn = params.get("training_hooks")
    hooks, chief_hooks = hooks_fn(ops, scaffold) if hooks_fn else ([], [])
    total = tf.add_n([v for v in ops.losses if v is not None], name="total_loss")
    return tf.estimator.EstimatorSpec(
        ModeKeys.TRAIN, loss=total, train_op=ops.train_op, training_hooks=list(hooks),
        training_chief_hooks=list(chief_hooks), scaffold=scaffold)


def eval_spec(parts: gan.GANParts, features, labels, role: str) -> tf.estimator.EstimatorSpec:
    """EVAL: both losses, D accuracy and mean D probability on real and on fake, and for 2D
    mixture data the mode metrics. G runs in inference mode, as it is served; the spec's
    `loss` is the role's own loss."""
    real = features
    noise = tf.random.normal([tf.shape(real)[0], parts.model.z_dim], name="noise")
    model = gan.gan_model(parts, real, labels, ModeKeys.EVAL, noise)
    losses = gan.gan_losses(parts, model, ModeKeys.EVAL)
    real_logits, fake_logits = model.real_logits, model.fake_logits
    metrics = {
        "loss/discriminator": v1.metrics.mean(losses.discriminator),
        "loss/generator": v1.metrics.mean(losses.generator),
        "discriminator/accuracy_real": v1.metrics.accuracy(
            tf.ones_like(real_logits), tf.cast(real_logits > 0, tf.float32)),
        "discriminator/accuracy_fake": v1.metrics.accuracy(
            tf.zeros_like(fake_logits), tf.cast(fake_logits > 0, tf.float32)),
        "discriminator/probability_real": v1.metrics.mean(tf.sigmoid(real_logits)),
        "discriminator/probability_fake": v1.metrics.mean(tf.sigmoid(fake_logits)),
    }
    metrics.update(_mixture_metrics(model.generated, parts.config))
    return tf.estimator.EstimatorSpec(
        ModeKeys.EVAL, loss=losses.discriminator if role == gan.DISCRIMINATOR else losses.generator,
        eval_metric_ops=metrics)


def _mixture_metrics(fake, config) -> Dict[str, tuple]:
    if config.data.source != "mixture2d" or list(config.model.sample_shape or []) != [2]:
        return {}
    mixture = config.data.mixture
    return eval_metrics.mixture_metric_ops(fake, mixture.centres(), mixture.std, k=config.eval.mode_std_k)


def generator_predict_spec(parts: gan.GANParts, features) -> tf.estimator.EstimatorSpec:
    """PREDICT: noise `[B, z_dim]` (a tensor, or a dict with `noise` and optional `labels`,
    and the seed inputs of `signatures.generator_receiver_fn`; without labels, a G conditioned
    on `data.clusters` draws them in turn) -> samples, building only G,
    batch norm in inference mode; the export outputs are `signatures.generator_signatures`."""
    raw_noise = tf.convert_to_tensor(signatures.feature(features, "noise"), tf.float32)
    labels = signatures.optional_feature(features, "labels")
    if labels is None:
        labels = signatures.clusters_in_turn(parts.config, raw_noise)
    noise = signatures.checked_labels_count(signatures.checked_finite(
        signatures.checked_shape(raw_noise, [parts.model.z_dim], "noise"), "noise"), labels)
    samples = gan.generator_model(parts, noise, labels).generated
    exported = dict(features) if isinstance(features, dict) else {"noise": raw_noise}
    exported["noise"] = raw_noise
    return tf.estimator.EstimatorSpec(
        ModeKeys.PREDICT, predictions={"samples": samples},
        export_outputs=signatures.generator_signatures(exported, samples))


def discriminator_predict_spec(parts: gan.GANParts, features) -> tf.estimator.EstimatorSpec:
    """PREDICT: samples (a tensor, or a dict with `samples` and optional `labels`) -> logits
    and probabilities, building only D. Samples of the wrong shape fail in-graph."""
    samples = tf.convert_to_tensor(signatures.feature(features, "samples"), tf.float32)
    labels = signatures.optional_feature(features, "labels")
    checked = signatures.checked_labels_count(
        signatures.checked_shape(samples, parts.model.sample_shape, "samples"), labels)
    logits = gan.discriminator_model(parts, checked, labels).real_logits
    predictions = {"logits": logits, "probabilities": tf.sigmoid(logits)}
    return tf.estimator.EstimatorSpec(ModeKeys.PREDICT, predictions=predictions,
                                      export_outputs=signatures.discriminator_signatures(predictions))


def _check_mode(mode):
    if mode not in (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT):
        raise ValueError(f"unknown mode {mode!r}")


def _one_step(tensor):
    """A single batch as `[steps_per_run=1, d_steps=1, B, ...]`."""
    return None if tensor is None else tensor[None, None]


def _role_model_fn(role: str, features, labels, mode, params, config):
    _check_mode(mode)
    parts = gan.GANParts.from_params(params)
    if mode == ModeKeys.TRAIN:
        d_steps, g_steps = (0, 1) if role == gan.GENERATOR else (1, 0)
        return train_spec(parts, _one_step(features), _one_step(labels), d_steps, g_steps, params, config)
    if mode == ModeKeys.EVAL:
        return eval_spec(parts, features, labels, role)
    if role == gan.GENERATOR:
        return generator_predict_spec(parts, features)
    return discriminator_predict_spec(parts, features)


def generator_model_fn(features, labels, mode, params, config=None):
    """The generator Estimator's model_fn (see the module docstring)."""
    return _role_model_fn(gan.GENERATOR, features, labels, mode, params, config)


def discriminator_model_fn(features, labels, mode, params, config=None):
    """The discriminator Estimator's model_fn (see the module docstring)."""
    return _role_model_fn(gan.DISCRIMINATOR, features, labels, mode, params, config)


def gan_model_fn(features, labels, mode, params, config=None):
    """The orchestrator's model_fn: TRAIN alternates D and G in one train op; EVAL reports both
    losses (spec loss: D's); PREDICT generates like the generator Estimator."""
    _check_mode(mode)
    parts = gan.GANParts.from_params(params)
    if mode == ModeKeys.TRAIN:
        train = parts.config.train
        return train_spec(parts, features, labels, train.d_steps, train.g_steps, params, config)
    if mode == ModeKeys.EVAL:
        return eval_spec(parts, features, labels, gan.DISCRIMINATOR)
    return generator_predict_spec(parts, features)

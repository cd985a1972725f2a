"""The Estimator `model_fn`s: generator, discriminator, and the orchestrated GAN step.

Three `model_fn`s share one set of variables and one checkpoint layout:

* `generator_model_fn` — TRAIN: one G update through a frozen D; EVAL: losses and D metrics;
  PREDICT: noise -> samples, building only G.
* `discriminator_model_fn` — TRAIN: one D update against fakes under `stop_gradient`; EVAL: as
  above; PREDICT: samples -> logits and probabilities, building only D.
* `gan_model_fn` — the orchestrator's TRAIN: per global step, `train.d_steps` D updates (one
  real batch each; `features` is stacked `[d_steps, B, ...]`) then `train.g_steps` G updates,
  chained with control dependencies so each update sees the previous one's weights.

Every TRAIN graph builds both networks, both optimizers (`G_Adam` / `D_Adam` slots, beta powers
under `G_train/` / `D_train/`) and the `generator_step` / `discriminator_step` counters, so a
checkpoint written by any of them restores into the others. `params` is `{"config": Config}`,
optionally with `generator_fn`, `discriminator_fn` and `loss` (a `losses.GANLoss`) overriding the
built-ins the config names.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import weakref

import numpy as np
import tensorflow as tf

from estimator_gan import custom
from estimator_gan.config import ConfigError
from estimator_gan import losses as losses_lib
from estimator_gan import nets

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys

GENERATOR_SCOPE = "generator"
DISCRIMINATOR_SCOPE = "discriminator"
GENERATOR_STEP = "generator_step"
DISCRIMINATOR_STEP = "discriminator_step"
_GRAPH_STATE: "weakref.WeakKeyDictionary[tf.Graph, dict]" = weakref.WeakKeyDictionary()


def graph_state(graph: Optional[tf.Graph] = None) -> dict:
    """Python objects a TRAIN graph built (optimizers, loss tensors, the sample tensor), for the
    hooks that run in it. Kept beside the graph, not in its collections, which are serialised
    into every checkpoint's meta graph."""
    graph = graph or v1.get_default_graph()
    return _GRAPH_STATE.setdefault(graph, {})


def _config(params):
    return params["config"]


def _networks(params):
    gen, disc = nets.networks_for(_config(params))
    return params.get("generator_fn") or gen, params.get("discriminator_fn") or disc


def _loss(params) -> losses_lib.GANLoss:
    return params.get("loss") or losses_lib.as_loss(_config(params).loss.name)


def _collection_delta(key, fn):
    before = list(v1.get_collection(key))
    out = fn()
    after = v1.get_collection(key)
    return out, [op for op in after[len(before):]]


def generator(noise, labels, mode, params):
    """Run the generator in its variable scope; returns (samples, its new BN update ops)."""
    gen_fn, _ = _networks(params)

    def call():
        with v1.variable_scope(GENERATOR_SCOPE, reuse=v1.AUTO_REUSE):
            return gen_fn(noise, labels, mode, params)

    samples, updates = _collection_delta(v1.GraphKeys.UPDATE_OPS, lambda: _checked_call(GENERATOR_SCOPE, call))
    expected = list(_config(params).model.sample_shape)
    if not samples.shape[1:].is_compatible_with(expected):
        raise custom.NetworkError(f"the generator returned samples of shape {samples.shape.as_list()}; "
                                  f"expected [batch, {', '.join(map(str, expected))}] (model.sample_shape)")
    return samples, updates


def discriminator(samples, labels, mode, params):
    """Run the discriminator in its variable scope, with the same weights on every call;
    returns (logits [B], its new update ops)."""
    _, disc_fn = _networks(params)

    def call():
        with v1.variable_scope(DISCRIMINATOR_SCOPE, reuse=v1.AUTO_REUSE):
            return disc_fn(samples, labels, mode, params)

    logits, updates = _collection_delta(v1.GraphKeys.UPDATE_OPS, lambda: _checked_call(DISCRIMINATOR_SCOPE, call))
    if logits.shape.rank == 2 and logits.shape[1] == 1:
        logits = tf.squeeze(logits, axis=1)
    if logits.shape.rank != 1:
        raise custom.NetworkError(f"the discriminator returned logits of shape {logits.shape.as_list()}; "
                                  "expected [batch] or [batch, 1]")
    return logits, updates


def _checked_call(scope, call):
    """Run a network; refuse one that makes variables outside its scope or on a repeated call,
    which would silently break weight sharing and var_list separation."""
    existing = role_variables(scope, trainable=False)
    out, new = _collection_delta(v1.GraphKeys.GLOBAL_VARIABLES, call)
    names = ", ".join(v.op.name for v in new[:3]) + (", ..." if len(new) > 3 else "")
    fix = ("build layers with tf.compat.v1.get_variable or tf.compat.v1.layers, or wrap a Keras "
           "model with estimator_gan.keras_network")
    if any(not v.op.name.startswith(scope + "/") for v in new):
        raise custom.NetworkError(f"the {scope} made variables outside the '{scope}/' variable scope "
                                  f"({names}): {fix}")
    if existing and new:
        raise custom.NetworkError(f"the {scope} made new variables when called again ({names}), so its "
                                  f"calls would not share weights: {fix}")
    return tf.convert_to_tensor(out)


def sample_noise(batch_size, params):
    return tf.random.normal([batch_size, _config(params).model.z_dim], name="noise")


def role_variables(scope: str, trainable: bool = True) -> List[tf.Variable]:
    key = v1.GraphKeys.TRAINABLE_VARIABLES if trainable else v1.GraphKeys.GLOBAL_VARIABLES
    return v1.get_collection(key, scope=scope + "/")


def _make_optimizer(cfg, name):
    if cfg.name == "adam":
        return v1.train.AdamOptimizer(cfg.learning_rate, beta1=cfg.beta1, beta2=cfg.beta2, name=name)
    if cfg.name == "rmsprop":
        return v1.train.RMSPropOptimizer(cfg.learning_rate, name=name)
    return v1.train.GradientDescentOptimizer(cfg.learning_rate, name=name)


def _optimizers(params):
    """The graph's (G, D) optimizers, made once per graph so every update shares their slots."""
    state = graph_state()
    if "optimizers" in state:
        return state["optimizers"]
    train = _config(params).train
    prefix = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSProp"}
    pair = (_make_optimizer(train.generator_optimizer, "G_" + prefix[train.generator_optimizer.name]),
            _make_optimizer(train.discriminator_optimizer, "D_" + prefix[train.discriminator_optimizer.name]))
    state["optimizers"] = pair
    return pair


def step_counter(name: str) -> tf.Variable:
    """`generator_step` / `discriminator_step`: updates made to each network."""
    with v1.variable_scope(v1.VariableScope(reuse=v1.AUTO_REUSE, name="")):
        return v1.get_variable(
            name, shape=[], dtype=tf.int64, initializer=v1.zeros_initializer(), trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, use_resource=True)


def _apply(optimizer, loss, var_list, counter, name_scope, update_ops=()):
    if not var_list:
        raise ValueError(f"{name_scope}: the network has no trainable variables")
    with tf.control_dependencies(list(update_ops)):
        grads_and_vars = optimizer.compute_gradients(loss, var_list=var_list)
    # Optimizer state (e.g. Adam's beta powers) is named after the enclosing name scope: fix it
    # per role so it never depends on which update a graph happens to build first.
    with v1.name_scope(name_scope + "/"):
        return optimizer.apply_gradients(grads_and_vars, global_step=counter)


def discriminator_update(real, labels, params):
    """One D update: fakes from G (training mode) under stop_gradient; D's var_list only."""
    loss = _loss(params)
    cfg = _config(params)
    fake, _ = generator(sample_noise(tf.shape(real)[0], params), labels, ModeKeys.TRAIN, params)
    fake = tf.stop_gradient(fake)
    real_logits, upd_real = discriminator(real, labels, ModeKeys.TRAIN, params)
    fake_logits, upd_fake = discriminator(fake, labels, ModeKeys.TRAIN, params)
    inputs = losses_lib.DiscriminatorLossInputs(
        real_logits, fake_logits, real, fake,
        lambda x: discriminator(x, labels, ModeKeys.TRAIN, params)[0])
    d_loss = tf.identity(loss.discriminator_loss(inputs, cfg.loss), name="discriminator_loss")
    _, d_opt = _optimizers(params)
    op = _apply(d_opt, d_loss, role_variables(DISCRIMINATOR_SCOPE), step_counter(DISCRIMINATOR_STEP),
                "D_train", upd_real + upd_fake)
    return op, d_loss


def generator_update(batch_size, labels, params):
    """One G update: the loss back-propagates through D, but only G's variables (and G's batch
    norm statistics) change."""
    loss = _loss(params)
    fake, g_updates = generator(sample_noise(batch_size, params), labels, ModeKeys.TRAIN, params)
    fake_logits, _ = discriminator(fake, labels, ModeKeys.TRAIN, params)
    g_loss = tf.identity(loss.generator_loss(fake_logits, _config(params).loss), name="generator_loss")
    g_opt, _ = _optimizers(params)
    op = _apply(g_opt, g_loss, role_variables(GENERATOR_SCOPE), step_counter(GENERATOR_STEP),
                "G_train", g_updates)
    return op, g_loss


def _sample_grid_tensor(params):
    """G in inference mode on fixed noise, for the sample PNG written at each checkpoint."""
    cfg = _config(params)
    count = 1024 if len(cfg.model.sample_shape) == 1 else cfg.train.sample_grid ** 2
    noise = np.random.RandomState(1234).standard_normal((count, cfg.model.z_dim)).astype(np.float32)
    labels = tf.constant(np.arange(count) % 10, tf.int32)
    samples, _ = generator(tf.constant(noise), labels, ModeKeys.PREDICT, params)
    return samples


def train_spec(features, labels, params, d_steps: int, g_steps: int) -> tf.estimator.EstimatorSpec:
    """TRAIN spec: `d_steps` D updates, then `g_steps` G updates, then global_step += 1.

    `features` is a list of `max(d_steps, 1)` real batches (and `labels` a matching list or None).
    A side with zero steps is still built, unrun, so the graph holds its optimizer state and
    the checkpoint keys match whichever model_fn wrote them.
    """
    batches = list(features)
    label_list = list(labels) if labels is not None else [None] * len(batches)
    expected = list(_config(params).model.sample_shape)
    if not batches[0].shape[1:].is_compatible_with(expected):
        raise ConfigError(f"the input_fn yields examples of shape {batches[0].shape.as_list()[1:]} but "
                          f"model.sample_shape is {expected}: set model.sample_shape to match")
    dependency: List = []
    d_loss = g_loss = None
    for i in range(max(d_steps, 1)):
        with tf.control_dependencies(dependency if d_steps else []):
            op, d_loss = discriminator_update(batches[i], label_list[i], params)
        if d_steps:
            dependency = [op]
    batch_size = tf.shape(batches[-1])[0]
    for _ in range(max(g_steps, 1)):
        with tf.control_dependencies(dependency if g_steps else []):
            op, g_loss = generator_update(batch_size, label_list[-1], params)
        if g_steps:
            dependency = [op]
    with tf.control_dependencies(dependency):
        train_op = v1.assign_add(v1.train.get_global_step(), 1).op

    graph_state()["losses"] = {"discriminator": d_loss, "generator": g_loss}
    v1.summary.scalar("loss/discriminator", d_loss)
    v1.summary.scalar("loss/generator", g_loss)
    v1.summary.scalar("steps/generator", step_counter(GENERATOR_STEP))
    v1.summary.scalar("steps/discriminator", step_counter(DISCRIMINATOR_STEP))
    if tf.distribute.in_cross_replica_context() or tf.distribute.get_replica_context().replica_id_in_sync_group == 0:
        graph_state()["samples"] = _sample_grid_tensor(params)
    total = tf.add(d_loss if d_steps else 0.0, g_loss if g_steps else 0.0, name="loss")
    return tf.estimator.EstimatorSpec(ModeKeys.TRAIN, loss=total, train_op=train_op)


def eval_spec(features, labels, params, role: str) -> tf.estimator.EstimatorSpec:
    """EVAL spec: both losses, D accuracy and mean D probability on real and on fake.

    G runs in inference mode (moving batch-norm statistics), as it would when served. The
    spec's `loss` is the role's own loss.
    """
    cfg = _config(params)
    loss = _loss(params)
    real = features
    fake, _ = generator(sample_noise(tf.shape(real)[0], params), labels, ModeKeys.EVAL, params)
    real_logits, _ = discriminator(real, labels, ModeKeys.EVAL, params)
    fake_logits, _ = discriminator(fake, labels, ModeKeys.EVAL, params)
    inputs = losses_lib.DiscriminatorLossInputs(
        real_logits, fake_logits, real, fake,
        lambda x: discriminator(x, labels, ModeKeys.EVAL, params)[0])
    d_loss = loss.discriminator_loss(inputs, cfg.loss)
    g_loss = loss.generator_loss(fake_logits, cfg.loss)
    real_prob, fake_prob = tf.sigmoid(real_logits), tf.sigmoid(fake_logits)
    metrics = {
        "loss/discriminator": v1.metrics.mean(d_loss),
        "loss/generator": v1.metrics.mean(g_loss),
        "discriminator/accuracy_real": v1.metrics.accuracy(tf.ones_like(real_logits), tf.cast(real_logits > 0, tf.float32)),
        "discriminator/accuracy_fake": v1.metrics.accuracy(tf.zeros_like(fake_logits), tf.cast(fake_logits > 0, tf.float32)),
        "discriminator/probability_real": v1.metrics.mean(real_prob),
        "discriminator/probability_fake": v1.metrics.mean(fake_prob),
    }
    return tf.estimator.EstimatorSpec(
        ModeKeys.EVAL, loss=d_loss if role == DISCRIMINATOR_SCOPE else g_loss,
        eval_metric_ops=metrics)


def _feature(features, key):
    return features[key] if isinstance(features, dict) else features


def _optional(features, key):
    return features.get(key) if isinstance(features, dict) else None


def generator_predict_spec(features, params) -> tf.estimator.EstimatorSpec:
    """PREDICT: noise `[B, z_dim]` (a tensor, or a dict with `noise` and optional `labels`) ->
    samples, building only G, batch norm in inference mode."""
    noise = tf.convert_to_tensor(_feature(features, "noise"), tf.float32)
    samples, _ = generator(noise, _optional(features, "labels"), ModeKeys.PREDICT, params)
    predictions = {"samples": samples}
    return tf.estimator.EstimatorSpec(
        ModeKeys.PREDICT, predictions=predictions,
        export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})


def discriminator_predict_spec(features, params) -> tf.estimator.EstimatorSpec:
    """PREDICT: samples (a tensor, or a dict with `samples`) -> logits and probabilities,
    building only D."""
    samples = tf.convert_to_tensor(_feature(features, "samples"), tf.float32)
    logits, _ = discriminator(samples, _optional(features, "labels"), ModeKeys.PREDICT, params)
    predictions = {"logits": logits, "probabilities": tf.sigmoid(logits)}
    return tf.estimator.EstimatorSpec(
        ModeKeys.PREDICT, predictions=predictions,
        export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})


def _check_mode(mode):
    if mode not in (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT):
        raise ValueError(f"unknown mode {mode!r}")


def generator_model_fn(features, labels, mode, params):
    """The generator Estimator's model_fn (see the module docstring)."""
    _check_mode(mode)
    if mode == ModeKeys.TRAIN:
        return train_spec([features], None if labels is None else [labels], params, d_steps=0, g_steps=1)
    if mode == ModeKeys.EVAL:
        return eval_spec(features, labels, params, GENERATOR_SCOPE)
    return generator_predict_spec(features, params)


def discriminator_model_fn(features, labels, mode, params):
    """The discriminator Estimator's model_fn (see the module docstring)."""
    _check_mode(mode)
    if mode == ModeKeys.TRAIN:
        return train_spec([features], None if labels is None else [labels], params, d_steps=1, g_steps=0)
    if mode == ModeKeys.EVAL:
        return eval_spec(features, labels, params, DISCRIMINATOR_SCOPE)
    return discriminator_predict_spec(features, params)


def gan_model_fn(features, labels, mode, params):
    """The orchestrator's model_fn: TRAIN alternates D and G in one train op; EVAL reports both
    losses (spec loss: D's); PREDICT generates like the generator Estimator."""
    _check_mode(mode)
    if mode == ModeKeys.TRAIN:
        cfg = _config(params).train
        batches = tf.unstack(features, num=cfg.d_steps, axis=0)
        label_list = None if labels is None else tf.unstack(labels, num=cfg.d_steps, axis=0)
        return train_spec(batches, label_list, params, d_steps=cfg.d_steps, g_steps=cfg.g_steps)
    if mode == ModeKeys.EVAL:
        return eval_spec(features, labels, params, DISCRIMINATOR_SCOPE)
    return generator_predict_spec(features, params)

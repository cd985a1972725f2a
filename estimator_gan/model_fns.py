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

Sample-quality state, also in every TRAIN graph and so in every checkpoint:

* Generator EMA (`model.generator.ema_decay`): each trainable G variable `v` has a
  non-trainable shadow `v/ExponentialMovingAverage`, updated right after every G update with
  decay min(ema_decay, (1 + n) / (10 + n)), n = `generator_step` after the update. The EMA
  generator also keeps its own batch-norm moving statistics (`.../moving_mean/
  ExponentialMovingAverage`), updated by one extra TRAIN-mode forward pass of the EMA weights
  per G update (built only when G has batch norm), since the raw weights' statistics do not fit
  the averaged weights. EVAL and PREDICT (hence export) read all of these instead of the raw
  variables through a custom getter, unless `model.generator.inference_weights` is `raw`;
  `generator(..., use_ema=True)` selects them in any mode (in TRAIN mode its batch-norm updates
  go to the EMA statistics, e.g. to recompute standing statistics before an export).
* Spectral norm (`model.discriminator.spectral_norm`): the power-iteration vectors `.../sn_u`
  advance exactly once per D update, after its gradients: every D call of one update (real,
  fake, gradient penalty) uses the same `u`, and the G update's D call uses the updated one.
  G-only training leaves them alone.
* Conditional models get their labels validated in-graph (int32 ids in [0, num_classes)).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import re
import weakref

import numpy as np
import tensorflow as tf

from estimator_gan import custom
from estimator_gan import evaluation
from estimator_gan import losses as losses_lib
from estimator_gan import nets
from estimator_gan.config import ConfigError

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


EMA_SUFFIX = "ExponentialMovingAverage"


def checked_labels(labels, params):
    """The labels a conditional model's networks get: int32 [B], asserted in-graph to lie in
    [0, model.num_classes). Unconditional models get `labels` unchanged (networks ignore them)."""
    model = _config(params).model
    if not model.conditional:
        return labels
    if labels is None:
        raise ValueError(
            "model.conditional is true but no labels reached the model: training and evaluation "
            "need a labelled data source; PREDICT needs features {'noise': ..., 'labels': ...}")
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    n = model.num_classes
    message = f"labels must be class ids in [0, {n}) (model.num_classes={n})"
    with tf.control_dependencies([tf.debugging.assert_non_negative(labels, message=message),
                                  tf.debugging.assert_less(labels, n, message=message)]):
        return tf.identity(labels)


def uses_ema(mode, params, use_ema: Optional[bool] = None) -> bool:
    """Whether G reads its moving-average weights: by default in EVAL and PREDICT when the config
    keeps an EMA and `inference_weights` is `ema`."""
    gcfg = _config(params).model.generator
    if use_ema is None:
        use_ema = mode != ModeKeys.TRAIN and gcfg.inference_weights == "ema"
    return bool(use_ema) and ema_decay(params) is not None


def ema_decay(params) -> Optional[float]:
    """The generator EMA decay in force: the config's, or None for a Keras generator (its
    variables bypass the variable-scope getter through which PREDICT reads the shadows)."""
    gen_fn, _ = _networks(params)
    return None if getattr(gen_fn, "is_keras_network", False) else _config(params).model.generator.ema_decay


def _ema_getter(getter, name, *args, **kwargs):
    """Hands out the EMA generator's variable (a weight's shadow, or its own batch-norm
    statistic) in place of each raw one."""
    kwargs["trainable"] = False
    return getter(f"{name}/{EMA_SUFFIX}", *args, **kwargs)


def generator(noise, labels, mode, params, use_ema: Optional[bool] = None):
    """Run the generator in its variable scope; returns (samples, its new BN update ops).
    `use_ema` (default: `uses_ema(mode, params)`) makes it read the moving-average weights."""
    gen_fn, _ = _networks(params)
    labels = checked_labels(labels, params)
    getter = _ema_getter if uses_ema(mode, params, use_ema) else None

    def call():
        with v1.variable_scope(GENERATOR_SCOPE, reuse=v1.AUTO_REUSE, custom_getter=getter):
            return gen_fn(noise, labels, mode, params)

    samples, updates = _collection_delta(v1.GraphKeys.UPDATE_OPS, lambda: _checked_call(GENERATOR_SCOPE, call))
    expected = list(_config(params).model.sample_shape)
    if not samples.shape[1:].is_compatible_with(expected):
        raise custom.NetworkError(f"the generator returned samples of shape {samples.shape.as_list()}; "
                                  f"expected [batch, {', '.join(map(str, expected))}] (model.sample_shape)")
    return samples, updates


def discriminator(samples, labels, mode, params):
    """Run the discriminator in its variable scope, with the same weights on every call;
    returns (logits [B], its new update ops). With `model.discriminator.packing` m > 1 the
    network sees packed samples and the logits are per group of m: [B / m]."""
    _, disc_fn = _networks(params)
    labels = checked_labels(labels, params)
    samples = nets.pack(samples, _config(params).model.discriminator.packing)

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
    if tf.distribute.has_strategy():
        # Mirrored variables add per-replica components to the collection; the single-device
        # graphs (PREDICT, EVAL, any first run) have made the check already.
        return tf.convert_to_tensor(call())
    existing = role_variables(scope, trainable=False)
    out, new = _collection_delta(v1.GraphKeys.GLOBAL_VARIABLES, call)
    # The EMA generator's first call makes its shadows (weights and batch-norm statistics).
    new = [v for v in new if not v.op.name.endswith("/" + EMA_SUFFIX)]
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


def _spectral_norm_assignments(fn):
    """Run `fn` (one D call); return its result and the assignments of the power-iteration
    vectors it recorded (see `nets.spectral_normalize`)."""
    (out, vectors) = _collection_delta(nets.SPECTRAL_NORM_VECTORS, lambda: _collection_delta(
        nets.SPECTRAL_NORM_UPDATES, fn))
    result, updates = out
    return result, list(zip(vectors, updates))


def discriminator_update(real, labels, params):
    """One D update: fakes from G (training mode) under stop_gradient; D's var_list only.
    Spectral-norm vectors advance after the update, from the real-batch call's power step."""
    loss = _loss(params)
    cfg = _config(params)
    fake, _ = generator(sample_noise(tf.shape(real)[0], params), labels, ModeKeys.TRAIN, params)
    fake = tf.stop_gradient(fake)
    (real_logits, upd_real), sn_pairs = _spectral_norm_assignments(
        lambda: discriminator(real, labels, ModeKeys.TRAIN, params))
    fake_logits, upd_fake = discriminator(fake, labels, ModeKeys.TRAIN, params)
    inputs = losses_lib.DiscriminatorLossInputs(
        real_logits, fake_logits, real, fake,
        lambda x: discriminator(x, labels, ModeKeys.TRAIN, params)[0])
    d_loss = tf.identity(loss.discriminator_loss(inputs, cfg.loss), name="discriminator_loss")
    _, d_opt = _optimizers(params)
    op = _apply(d_opt, d_loss, role_variables(DISCRIMINATOR_SCOPE), step_counter(DISCRIMINATOR_STEP),
                "D_train", upd_real + upd_fake)
    if sn_pairs:
        # After the update: every read of `u` in this update (all feed its gradients) is done.
        with tf.control_dependencies([op]):
            op = tf.group([v1.assign(u, u_new) for u, u_new in sn_pairs])
    return op, d_loss


def ema_variable(var) -> tf.Variable:
    """The moving-average shadow of a generator variable. Its initializer reuses the variable's
    initial-value tensor, so one initializer run (the Estimator's) gives both the same value."""
    with v1.variable_scope(v1.VariableScope(reuse=v1.AUTO_REUSE, name="")):
        # Under MirroredStrategy `var.op` is the current replica's component (`.../replica_1`).
        name = re.sub(r"/replica_\d+$", "", var.op.name)
        return v1.get_variable(f"{name}/{EMA_SUFFIX}", initializer=var.initial_value,
                               trainable=False, aggregation=tf.VariableAggregation.MEAN)


def _update_ema(params, after, batch_size, labels):
    """Once `after` (a G update) has run: move every shadow towards its G variable, then update
    the EMA generator's batch-norm statistics on a fresh noise batch."""
    decay = ema_decay(params)
    if decay is None:
        return after
    with tf.control_dependencies([after]):
        n = tf.cast(step_counter(GENERATOR_STEP).read_value(), tf.float32)
        rate = 1.0 - tf.minimum(decay, (1.0 + n) / (10.0 + n))
        updates = []
        for var in role_variables(GENERATOR_SCOPE):
            shadow = ema_variable(var)
            updates.append(v1.assign_sub(shadow, (shadow - var.read_value()) * rate))
    with tf.control_dependencies(updates):
        _, statistics = generator(sample_noise(batch_size, params), labels, ModeKeys.TRAIN, params,
                                  use_ema=True)
    return tf.group(updates + statistics)


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
    return _update_ema(params, op, batch_size, labels), g_loss


def _sample_grid_tensor(params):
    """G in inference mode on fixed noise, for the sample PNG written at each checkpoint."""
    cfg = _config(params)
    count = 1024 if len(cfg.model.sample_shape) == 1 else cfg.train.sample_grid ** 2
    noise = np.random.RandomState(1234).standard_normal((count, cfg.model.z_dim)).astype(np.float32)
    labels = tf.constant(np.arange(count) % cfg.model.num_classes, tf.int32) if cfg.model.conditional else None
    samples, _ = generator(tf.constant(noise), labels, ModeKeys.PREDICT, params)
    return samples


def first_replica() -> bool:
    """True outside a distribution strategy and in the model_fn call of the strategy's first
    replica (the hooks fetch that replica's tensors). The replica id is a constant tensor in
    graph mode: comparing it with `==` would compare object identity and always be False."""
    if tf.distribute.in_cross_replica_context():
        return True
    replica_id = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
    return replica_id is not None and int(replica_id) == 0


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

    v1.summary.scalar("loss/discriminator", d_loss)
    v1.summary.scalar("loss/generator", g_loss)
    v1.summary.scalar("steps/generator", step_counter(GENERATOR_STEP))
    v1.summary.scalar("steps/discriminator", step_counter(DISCRIMINATOR_STEP))
    if first_replica():
        graph_state()["losses"] = {"discriminator": d_loss, "generator": g_loss}
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
    metrics.update(_mixture_metrics(fake, cfg))
    return tf.estimator.EstimatorSpec(
        ModeKeys.EVAL, loss=d_loss if role == DISCRIMINATOR_SCOPE else g_loss,
        eval_metric_ops=metrics)


def _mixture_metrics(fake, cfg) -> Dict[str, tuple]:
    """Mode coverage, high-quality share and KL to uniform of the fakes, for 2D mixture data."""
    if cfg.data.source != "mixture2d" or list(cfg.model.sample_shape or []) != [2]:
        return {}
    mixture = cfg.data.mixture
    return evaluation.mixture_metric_ops(fake, mixture.centres(), mixture.std, k=cfg.eval.mode_std_k)


def _feature(features, key):
    return features[key] if isinstance(features, dict) else features


def _optional(features, key):
    return features.get(key) if isinstance(features, dict) else None


class SignatureOutput(tf.estimator.export.PredictOutput):
    """A predict signature with its own inputs, so one PREDICT graph serves several input
    signatures (noise; seed and count), each listing only the tensors its callers feed (TF
    Serving requires a request to feed exactly a signature's inputs)."""

    def __init__(self, inputs: Dict[str, tf.Tensor], outputs: Dict[str, tf.Tensor]):
        super().__init__(outputs)
        self.inputs = dict(inputs)

    def as_signature_def(self, receiver_tensors):
        return v1.saved_model.predict_signature_def(self.inputs, self.outputs)


def checked_shape(tensor, shape: Sequence[int], name: str) -> tf.Tensor:
    """`tensor` after an in-graph check that it is `[batch, *shape]`, failing with a readable
    message: TF Serving's C++ server feeds requests without checking them against the
    signature, and a mismatch would otherwise surface as an obscure matmul or reshape error."""
    expected = f"{name} must have shape (batch, {', '.join(str(d) for d in shape)})"
    actual = tf.shape(tensor)
    ok = tf.logical_and(tf.equal(tf.size(actual), len(shape) + 1),
                        tf.reduce_all(tf.equal(actual[1:], list(shape))))
    with tf.control_dependencies([tf.debugging.Assert(ok, [expected + "; got shape", actual])]):
        return tf.identity(tensor)


def _checked_labels_count(tensor, labels):
    """`tensor` after an in-graph check that `labels` (if any) has one entry per row of it."""
    if labels is None:
        return tensor
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.size(labels), tf.shape(tensor)[0], message="labels must hold one class id per sample")]):
        return tf.identity(tensor)


def image_outputs(samples) -> Dict[str, tf.Tensor]:
    """Images `[B, H, W, C]` in [-1, 1] as uint8 `images` and PNG `png_bytes` [B] (TF Serving's
    REST API base64-encodes outputs whose name ends in `_bytes`); nothing for other samples."""
    if samples.shape.rank != 4 or samples.shape[-1] not in (1, 3, 4):
        return {}
    pixels = tf.cast(tf.clip_by_value(tf.round((samples + 1.0) * 127.5), 0.0, 255.0), tf.uint8)
    png = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
    return {"images": pixels, "png_bytes": png}


def generator_predict_spec(features, params) -> tf.estimator.EstimatorSpec:
    """PREDICT: noise `[B, z_dim]` (a tensor, or a dict with `noise` and optional `labels`) ->
    samples, building only G, batch norm in inference mode.

    Signatures (export outputs): `serving_default` and `noise` take `noise` (and `labels`);
    when the features also hold the `seed` and `count` the noise was drawn from (and the
    optional `truncation`, see `export.generator_receiver_fn`), `seed` takes `seed` and `count`
    and `seed_truncated` adds `truncation`. All return `samples` in the training range and, for
    images, uint8 `images` and `png_bytes`. Noise of the wrong shape fails in-graph.
    """
    model = _config(params).model
    raw_noise = tf.convert_to_tensor(_feature(features, "noise"), tf.float32)
    raw_labels = _optional(features, "labels")
    noise = _checked_labels_count(checked_shape(raw_noise, [model.z_dim], "noise"), raw_labels)
    samples, _ = generator(noise, raw_labels, ModeKeys.PREDICT, params)
    predictions = {"samples": samples}
    outputs = {**predictions, **image_outputs(samples)}
    labelled = {} if raw_labels is None else {"labels": raw_labels}
    signatures = {"noise": {"noise": raw_noise, **labelled}}
    if isinstance(features, dict) and "seed" in features:
        by_seed = {"seed": features["seed"], "count": features["count"], **labelled}
        signatures["seed"] = by_seed
        signatures["seed_truncated"] = {**by_seed, "truncation": features["truncation"]}
    export_outputs = {name: SignatureOutput(inputs, outputs) for name, inputs in signatures.items()}
    export_outputs["serving_default"] = export_outputs["noise"]
    return tf.estimator.EstimatorSpec(ModeKeys.PREDICT, predictions=predictions,
                                      export_outputs=export_outputs)


def discriminator_predict_spec(features, params) -> tf.estimator.EstimatorSpec:
    """PREDICT: samples (a tensor, or a dict with `samples` and optional `labels`) -> logits
    and probabilities, building only D. Samples of the wrong shape fail in-graph."""
    samples = tf.convert_to_tensor(_feature(features, "samples"), tf.float32)
    labels = _optional(features, "labels")
    checked = _checked_labels_count(checked_shape(samples, _config(params).model.sample_shape, "samples"), labels)
    logits, _ = discriminator(checked, labels, ModeKeys.PREDICT, params)
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

"""Built-in networks: plain functions of tensors, an MLP pair and a DCGAN pair, and the layers
they are made of.

Every network has the signature the model_fns call:

    generator(noise, labels, mode, params) -> samples  [B, *sample_shape]
    discriminator(samples, labels, mode, params) -> logits  [B]

`params["config"]` is the run's `Config`; `labels` may be None. The model_fns open the role's
variable scope (`generator` / `discriminator`, with reuse) around each call, so a network only
names its layers and can be called any number of times with the same weights. Variables are made
with `tf.compat.v1.get_variable`; batch norm puts its moving-statistics updates in the
`UPDATE_OPS` collection when `mode` is TRAIN and uses the moving statistics otherwise.

What a TRAIN-mode call leaves for its caller (`model.gan` reads it right after the call, as the
model_fns read `UPDATE_OPS`): each `batch_norm` its moving statistics and batch moments in the
`BATCH_NORM_*` collections (for standing statistics), each spectrally normalised weight its
power-iteration vector and that vector's one-step update in the `SPECTRAL_NORM_*` collections.

Adding an architecture: write its generator and discriminator here and add the pair to
`ARCHITECTURES` (the name `model.architecture` takes).

Conditional models (`model.conditional`) get int32 class ids `labels` [B] in
[0, model.num_classes): the generator concatenates a one-hot code to the noise and uses
class-conditional batch norm; the discriminator adds a projection term <embed(y), h> to its logit
(Miyato & Koyama, 2018). With `model.discriminator.spectral_norm`, every D weight is divided by an
estimate of its largest singular value (`spectral_normalize`).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf


ModeKeys = tf.estimator.ModeKeys
v1 = tf.compat.v1

_DCGAN_INIT = v1.random_normal_initializer(stddev=0.02)

# Per TRAIN-mode batch_norm call, in matching order: its moving statistics and batch moments.
BATCH_NORM_MOVING_MEANS = "batch_norm_moving_means"
BATCH_NORM_MOVING_VARIANCES = "batch_norm_moving_variances"
BATCH_NORM_MEANS = "batch_norm_means"
BATCH_NORM_VARIANCES = "batch_norm_variances"
BATCH_NORM_COLLECTIONS = (BATCH_NORM_MOVING_MEANS, BATCH_NORM_MOVING_VARIANCES,
                          BATCH_NORM_MEANS, BATCH_NORM_VARIANCES)


def _get(name, shape, initializer, trainable=True, **kwargs):
    return v1.get_variable(name, shape=shape, dtype=tf.float32, initializer=initializer,
                           trainable=trainable, **kwargs)


# Spectral normalisation's power-iteration state, per TRAIN-mode call, in matching order: the
# `u` variables and their one-step updates. The caller assigns them once per D update, after
# every read of `u` in that update (see model.gan), so all calls of one update see the same `u`.
SPECTRAL_NORM_VECTORS = "spectral_norm_vectors"
SPECTRAL_NORM_UPDATES = "spectral_norm_updates"


def _l2_normalize(x):
    return x * tf.math.rsqrt(tf.reduce_sum(tf.square(x)) + 1e-12)


def spectral_normalize(kernel, training: bool) -> tf.Tensor:
    """`kernel / sigma`, sigma the largest singular value of the kernel reshaped to
    [-1, out_channels] (for a conv kernel an estimate of the layer's operator norm, as in
    Miyato et al., 2018), from one power-iteration step on a non-trainable vector `sn_u`.

    Every call computes the step from the stored `u` without changing it, so EVAL and PREDICT
    are deterministic. In TRAIN mode the call also records (`u`, its update) in the
    `SPECTRAL_NORM_VECTORS` / `SPECTRAL_NORM_UPDATES` collections for the caller to assign.
    """
    out = int(kernel.shape[-1])
    w = tf.reshape(kernel, [-1, out])
    u = _get("sn_u", [1, out], v1.random_normal_initializer(), trainable=False,
             aggregation=tf.VariableAggregation.MEAN)
    v = tf.stop_gradient(_l2_normalize(tf.matmul(u, w, transpose_b=True)))
    u_new = tf.stop_gradient(_l2_normalize(tf.matmul(v, w)))
    sigma = tf.reduce_sum(tf.matmul(v, w) * u_new)
    if training:
        v1.add_to_collection(SPECTRAL_NORM_VECTORS, u)
        v1.add_to_collection(SPECTRAL_NORM_UPDATES, u_new)
    return kernel / sigma


def _kernel(shape, initializer, spectral_norm: bool, training: bool):
    kernel = _get("kernel", shape, initializer)
    return spectral_normalize(kernel, training) if spectral_norm else kernel


def dense(x, units: int, name: str, initializer=None, spectral_norm: bool = False,
          training: bool = False) -> tf.Tensor:
    with v1.variable_scope(name):
        kernel = _kernel([int(x.shape[-1]), units], initializer or v1.glorot_uniform_initializer(),
                         spectral_norm, training)
        bias = _get("bias", [units], v1.zeros_initializer())
        return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def conv2d(x, filters: int, name: str, kernel_size: int = 4, stride: int = 2, initializer=None,
           spectral_norm: bool = False, training: bool = False):
    with v1.variable_scope(name):
        kernel = _kernel([kernel_size, kernel_size, int(x.shape[-1]), filters],
                         initializer or _DCGAN_INIT, spectral_norm, training)
        bias = _get("bias", [filters], v1.zeros_initializer())
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=stride, padding="SAME"), bias)


def embedding(labels, num_classes: int, dim: int, name: str, spectral_norm: bool = False,
              training: bool = False) -> tf.Tensor:
    """Rows of a learned [num_classes, dim] matrix, one per label: [B, dim]."""
    with v1.variable_scope(name):
        table = _kernel([num_classes, dim], v1.glorot_uniform_initializer(), spectral_norm, training)
        return tf.gather(table, labels)


def projection(features, labels, num_classes: int, name: str = "projection",
               spectral_norm: bool = False, training: bool = False) -> tf.Tensor:
    """The projection discriminator's class term <embed(y), h> for features h [B, D]: [B]."""
    embedded = embedding(labels, num_classes, int(features.shape[-1]), name, spectral_norm, training)
    return tf.reduce_sum(embedded * features, axis=1)


def conv2d_transpose(x, filters: int, name: str, kernel_size: int = 4, stride: int = 2,
                     initializer=None):
    with v1.variable_scope(name):
        kernel = _get("kernel", [kernel_size, kernel_size, filters, int(x.shape[-1])],
                      initializer or _DCGAN_INIT)
        bias = _get("bias", [filters], v1.zeros_initializer())
        batch = tf.shape(x)[0]
        out_shape = tf.stack([batch, int(x.shape[1]) * stride, int(x.shape[2]) * stride, filters])
        y = tf.nn.conv2d_transpose(x, kernel, out_shape, strides=stride, padding="SAME")
        y.set_shape([x.shape[0], int(x.shape[1]) * stride, int(x.shape[2]) * stride, filters])
        return y + bias


def batch_norm(x, training: bool, name: str, decay: float = 0.99, epsilon: float = 1e-5,
               labels=None, num_classes: Optional[int] = None):
    """Batch norm over all axes but the last, with TensorFlow's fused kernel.

    Training: normalises with the batch's statistics (population variance) and adds the
    moving-average updates to `UPDATE_OPS` (the caller decides whether they run). Otherwise:
    uses the moving statistics, so inference is deterministic. With `labels` (and
    `num_classes`) the scale and offset are per class (conditional batch norm): `gamma`/`beta`
    are [num_classes, channels] tables.
    """
    channels = int(x.shape[-1])
    with v1.variable_scope(name):
        if labels is None:
            gamma = _get("gamma", [channels], v1.ones_initializer())
            beta = _get("beta", [channels], v1.zeros_initializer())
        else:
            gamma_table = _get("gamma", [num_classes, channels], v1.ones_initializer())
            beta_table = _get("beta", [num_classes, channels], v1.zeros_initializer())
        stat_kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.MEAN)
        moving_mean = _get("moving_mean", [channels], v1.zeros_initializer(), **stat_kwargs)
        moving_var = _get("moving_variance", [channels], v1.ones_initializer(), **stat_kwargs)
        shape = tf.shape(x)
        images = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
        scale, offset = (gamma, beta) if labels is None else (tf.ones([channels]), tf.zeros([channels]))
        if training:
            y, mean, unbiased = v1.nn.fused_batch_norm(images, scale, offset, epsilon=epsilon,
                                                       is_training=True)
            count = tf.cast(tf.size(images) // channels, tf.float32)
            variance = unbiased * (count - 1.0) / tf.maximum(count, 1.0)  # the kernel's is Bessel-corrected
            for key, value in zip(BATCH_NORM_COLLECTIONS, (moving_mean, moving_var, mean, variance)):
                v1.add_to_collection(key, value)
            for var, value in ((moving_mean, mean), (moving_var, variance)):
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                     v1.assign_sub(var, (var - value) * (1.0 - decay)))
        else:
            y, _, _ = v1.nn.fused_batch_norm(images, scale, offset, mean=moving_mean,
                                             variance=moving_var, epsilon=epsilon, is_training=False)
        y = y if x.shape.rank == 4 else tf.reshape(y, shape)
        if labels is None:
            return y
        per_example = [-1] + [1] * (x.shape.rank - 2) + [channels]
        return (y * tf.reshape(tf.gather(gamma_table, labels), per_example)
                + tf.reshape(tf.gather(beta_table, labels), per_example))


def _config(params):
    return params["config"]


def pack(samples, packing: int) -> tf.Tensor:
    """PacGAN packing: [B, ..., C] -> [B / packing, ..., C * packing], each group of `packing`
    consecutive samples stacked along the last axis (B must be a multiple of `packing`)."""
    if packing == 1:
        return samples
    message = f"the batch size must be a multiple of model.discriminator.packing ({packing})"
    if samples.shape[0] is not None and samples.shape[0] % packing:
        raise ValueError(f"{message}, got {samples.shape[0]}")
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(samples)[0] % packing, 0, message=message)]):
        rank = samples.shape.rank
        grouped = tf.reshape(samples, tf.concat([[-1, packing], tf.shape(samples)[1:]], axis=0))
        moved = tf.transpose(grouped, [0] + list(range(2, rank + 1)) + [1])
        inner = list(samples.shape[1:-1])
        return tf.reshape(moved, [-1] + inner + [packing * int(samples.shape[-1])])


def minibatch_stddev(x) -> tf.Tensor:
    """ProGAN's minibatch standard deviation: one more feature map (or feature) holding the
    standard deviation of every feature over the batch, averaged, so D can tell a batch of
    too-similar samples from a real one. D's output for a sample then depends on the rest of
    its batch (a batch of one sees 0)."""
    _, variance = tf.nn.moments(x, axes=[0])
    stat = tf.reduce_mean(tf.sqrt(variance + 1e-8))
    return tf.concat([x, tf.ones_like(x[..., :1]) * stat], axis=-1)


def _condition(cfg, labels):
    """The labels if the model is conditional, else None (the networks then ignore labels)."""
    return labels if cfg.model.conditional else None


def _with_one_hot(noise, labels, cfg):
    if labels is None:
        return noise
    return tf.concat([noise, tf.one_hot(labels, cfg.model.num_classes, dtype=noise.dtype)], axis=1)


def _upsampling_plan(height: int, width: int) -> Tuple[int, int, int]:
    """How many stride-2 layers fit: halve while both sides stay whole and >= 4 (at most 4)."""
    n = 0
    while n < 4 and height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, n = height // 2, width // 2, n + 1
    return n, height, width


def dcgan_generator(noise, labels, mode, params):
    """DCGAN generator sized from the sample shape: dense -> (deconv, BN, ReLU)* -> tanh.
    Conditional: one-hot label concatenated to the noise, class-conditional batch norm."""
    cfg = _config(params)
    gcfg = cfg.model.generator
    labels = _condition(cfg, labels)
    height, width, channels = cfg.model.sample_shape
    n_up, h0, w0 = _upsampling_plan(height, width)
    training = mode == ModeKeys.TRAIN
    filters = [gcfg.filters * 2 ** (n_up - 1 - i) for i in range(max(n_up, 1))]

    def norm_relu(x, name):
        if gcfg.batch_norm:
            x = batch_norm(x, training, name, decay=gcfg.bn_decay, labels=labels,
                           num_classes=cfg.model.num_classes)
        return tf.nn.relu(x)

    x = dense(_with_one_hot(noise, labels, cfg), h0 * w0 * filters[0], "project", initializer=_DCGAN_INIT)
    x = norm_relu(tf.reshape(x, [-1, h0, w0, filters[0]]), "project_bn")
    for i in range(1, n_up):
        x = norm_relu(conv2d_transpose(x, filters[i], f"deconv{i}"), f"deconv{i}_bn")
    if n_up:
        x = conv2d_transpose(x, channels, "to_image")
    else:
        x = conv2d(x, channels, "to_image", kernel_size=3, stride=1)
    return tf.tanh(x)


def dcgan_discriminator(samples, labels, mode, params):
    """DCGAN discriminator: (stride-2 conv, leaky ReLU)* -> dense logit. No batch norm, so the
    same network works with every loss (gradient penalty included). Conditional: plus the
    projection term on the flattened features."""
    cfg = _config(params)
    height, width, _ = cfg.model.sample_shape
    n_down, _, _ = _upsampling_plan(height, width)
    sn = dict(spectral_norm=cfg.model.discriminator.spectral_norm, training=mode == ModeKeys.TRAIN)
    x = samples
    for i in range(max(n_down, 1)):
        x = tf.nn.leaky_relu(conv2d(x, cfg.model.discriminator.filters * 2 ** i, f"conv{i}", **sn), 0.2)
    if cfg.model.discriminator.minibatch_stddev:
        x = minibatch_stddev(x)
    x = tf.reshape(x, [-1, int(math.prod(x.shape[1:]))])
    return _logits(x, _condition(cfg, labels), cfg, sn, initializer=_DCGAN_INIT)


def _logits(features, labels, cfg, sn, initializer=None):
    logits = tf.squeeze(dense(features, 1, "logit", initializer=initializer, **sn), axis=1)
    if labels is None:
        return logits
    return logits + projection(features, labels, cfg.model.num_classes, **sn)


def mlp_generator(noise, labels, mode, params):
    """MLP generator for low-dimensional data (e.g. 2D mixtures); linear output.
    Conditional: one-hot label concatenated to the noise, class-conditional batch norm."""
    cfg = _config(params)
    gcfg = cfg.model.generator
    labels = _condition(cfg, labels)
    training = mode == ModeKeys.TRAIN
    x = _with_one_hot(noise, labels, cfg)
    for i, units in enumerate(gcfg.hidden_units):
        x = dense(x, units, f"hidden{i}")
        if gcfg.batch_norm:
            x = batch_norm(x, training, f"hidden{i}_bn", decay=gcfg.bn_decay, labels=labels,
                           num_classes=cfg.model.num_classes)
        x = tf.nn.relu(x)
    shape = list(cfg.model.sample_shape)
    x = dense(x, int(math.prod(shape)), "output")
    return tf.reshape(x, [-1] + shape)


def mlp_discriminator(samples, labels, mode, params):
    """MLP discriminator, leaky ReLU; conditional: plus the projection term on the last hidden
    layer."""
    cfg = _config(params)
    sn = dict(spectral_norm=cfg.model.discriminator.spectral_norm, training=mode == ModeKeys.TRAIN)
    x = tf.reshape(samples, [-1, int(math.prod(samples.shape[1:]))])
    for i, units in enumerate(cfg.model.discriminator.hidden_units):
        x = tf.nn.leaky_relu(dense(x, units, f"hidden{i}", **sn), 0.2)
    if cfg.model.discriminator.minibatch_stddev:
        x = minibatch_stddev(x)
    return _logits(x, _condition(cfg, labels), cfg, sn)


NetworkFn = Callable[..., tf.Tensor]

ARCHITECTURES: Dict[str, Tuple[NetworkFn, NetworkFn]] = {
    "dcgan": (dcgan_generator, dcgan_discriminator),
    "mlp": (mlp_generator, mlp_discriminator),
}

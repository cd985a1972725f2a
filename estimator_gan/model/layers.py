"""The layers the built-in networks are made of: plain functions of tensors that make their
variables with `tf.compat.v1.get_variable` in the caller's variable scope.

A layer names its variables (`kernel`, `bias`, `gamma`, ...) under the scope `name` it is
given, so a network calls it in its role's scope (`generator/`, `discriminator/`, opened with
reuse by the model_fns) and every call of the network shares the same weights.

What a TRAIN-mode call leaves for its caller (`model.gan` reads it right after each network
call, as the model_fns read `UPDATE_OPS`): each `batch_norm` its moving-statistics updates in
`UPDATE_OPS` and its moving statistics and batch moments in the `BATCH_NORM_*` collections (for
standing statistics); each spectrally normalised weight its power-iteration vector and that
vector's one-step update in the `SPECTRAL_NORM_*` collections.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

DCGAN_INIT = v1.random_normal_initializer(stddev=0.02)

# Per TRAIN-mode batch_norm call, in matching order: its moving statistics and batch moments.
BATCH_NORM_MOVING_MEANS = "batch_norm_moving_means"
BATCH_NORM_MOVING_VARIANCES = "batch_norm_moving_variances"
BATCH_NORM_MEANS = "batch_norm_means"
BATCH_NORM_VARIANCES = "batch_norm_variances"
BATCH_NORM_COLLECTIONS = (BATCH_NORM_MOVING_MEANS, BATCH_NORM_MOVING_VARIANCES,
                          BATCH_NORM_MEANS, BATCH_NORM_VARIANCES)

# Spectral normalisation's power-iteration state, per TRAIN-mode call, in matching order: the
# `u` variables and their one-step updates. The caller assigns them once per D update, after
# every read of `u` in that update (see model.gan), so all calls of one update see the same `u`.
SPECTRAL_NORM_VECTORS = "spectral_norm_vectors"
SPECTRAL_NORM_UPDATES = "spectral_norm_updates"


def variable(name, shape, initializer, trainable=True, **kwargs):
    return v1.get_variable(name, shape=shape, dtype=tf.float32, initializer=initializer,
                           trainable=trainable, **kwargs)


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
    u = variable("sn_u", [1, out], v1.random_normal_initializer(), trainable=False,
                 aggregation=tf.VariableAggregation.MEAN)
    v = tf.stop_gradient(_l2_normalize(tf.matmul(u, w, transpose_b=True)))
    u_new = tf.stop_gradient(_l2_normalize(tf.matmul(v, w)))
    sigma = tf.reduce_sum(tf.matmul(v, w) * u_new)
    if training:
        v1.add_to_collection(SPECTRAL_NORM_VECTORS, u)
        v1.add_to_collection(SPECTRAL_NORM_UPDATES, u_new)
    return kernel / sigma


def _kernel(shape, initializer, spectral_norm: bool, training: bool):
    kernel = variable("kernel", shape, initializer)
    return spectral_normalize(kernel, training) if spectral_norm else kernel


def dense(x, units: int, name: str, initializer=None, spectral_norm: bool = False,
          training: bool = False) -> tf.Tensor:
    with v1.variable_scope(name):
        kernel = _kernel([int(x.shape[-1]), units], initializer or v1.glorot_uniform_initializer(),
                         spectral_norm, training)
        bias = variable("bias", [units], v1.zeros_initializer())
        return tf.nn.bias_add(tf.matmul(x, kernel), bias)


# How a 3x3 kernel's taps add up along one axis (rows: the 4 taps of the equivalent stride-2
# kernel; columns: offsets -1, 0, 1) when its convolution follows a nearest 2x up-sampling, or
# precedes a 2x2 average pooling (see `conv2d`).
_UP_TAPS = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], np.float32)
_DOWN_TAPS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32) / 2


def conv2d(x, filters: int, name: str, kernel_size: int = 4, stride: int = 2, initializer=None,
           spectral_norm: bool = False, training: bool = False, use_bias: bool = True,
           resample: Optional[str] = None):
    """A 'SAME'-padded convolution (DCGAN's 4x4, stride 2, N(0, 0.02) unless told).

    `resample` (3x3 kernels, stride 1): `"up"` convolves the input up-sampled 2x (nearest
    neighbour), `"down"` average-pools the convolution's output 2x2. Either is computed exactly
    (up to rounding) as one stride-2 4x4 convolution (transposed for "up") whose kernel is
    built from the 3x3 one: 16 instead of 36 multiply-adds per input ("up") or output ("down")
    pixel and channel pair. The variables, and spectral norm, are those of the 3x3 kernel.
    """
    with v1.variable_scope(name):
        kernel = _kernel([kernel_size, kernel_size, int(x.shape[-1]), filters],
                         initializer or DCGAN_INIT, spectral_norm, training)
        if resample is None:
            y = tf.nn.conv2d(x, kernel, strides=stride, padding="SAME")
        elif resample not in ("up", "down") or kernel_size != 3 or stride != 1:
            raise ValueError(f"resample={resample!r} needs 'up' or 'down', a 3x3 kernel and stride 1")
        elif resample == "up":
            height, width = 2 * int(x.shape[1]), 2 * int(x.shape[2])
            up = tf.einsum("au,bv,uvio->aboi", _UP_TAPS, _UP_TAPS, kernel)
            y = tf.nn.conv2d_transpose(x, up, tf.stack([tf.shape(x)[0], height, width, filters]),
                                       strides=2, padding="SAME")
            y.set_shape([x.shape[0], height, width, filters])
        else:
            if int(x.shape[1]) % 2 or int(x.shape[2]) % 2:
                raise ValueError(f"resample='down' needs even sides, got {x.shape.as_list()}")
            down = tf.einsum("au,bv,uvio->abio", _DOWN_TAPS, _DOWN_TAPS, kernel)
            y = tf.nn.conv2d(x, down, strides=2, padding="SAME")
        if not use_bias:
            return y
        return tf.nn.bias_add(y, variable("bias", [filters], v1.zeros_initializer()))


def conv2d_transpose(x, filters: int, name: str, kernel_size: int = 4, stride: int = 2,
                     initializer=None):
    with v1.variable_scope(name):
        kernel = variable("kernel", [kernel_size, kernel_size, filters, int(x.shape[-1])],
                          initializer or DCGAN_INIT)
        bias = variable("bias", [filters], v1.zeros_initializer())
        batch = tf.shape(x)[0]
        out_shape = tf.stack([batch, int(x.shape[1]) * stride, int(x.shape[2]) * stride, filters])
        y = tf.nn.conv2d_transpose(x, kernel, out_shape, strides=stride, padding="SAME")
        y.set_shape([x.shape[0], int(x.shape[1]) * stride, int(x.shape[2]) * stride, filters])
        return y + bias


def upsample(x) -> tf.Tensor:
    """Nearest-neighbour 2x up-sampling: [B, H, W, C] -> [B, 2H, 2W, C]."""
    height, width = int(x.shape[1]), int(x.shape[2])
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=[2 * height, 2 * width],
                                            align_corners=False, half_pixel_centers=False)


def downsample(x) -> tf.Tensor:
    """2x2 average pooling, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
    return tf.nn.avg_pool2d(x, 2, 2, "VALID")


def embedding(labels, num_classes: int, dim: int, name: str, spectral_norm: bool = False,
              training: bool = False) -> tf.Tensor:
    """Rows of a learned [num_classes, dim] matrix, one per label: [B, dim]. Labels [B, m] (a
    packed discriminator's, one per packed sample) get a table per position, [m * num_classes,
    dim], and the sum of their m rows."""
    positions = 1 if labels.shape.rank == 1 else int(labels.shape[-1])
    with v1.variable_scope(name):
        table = _kernel([positions * num_classes, dim], v1.glorot_uniform_initializer(),
                        spectral_norm, training)
        if positions == 1:
            return tf.gather(table, labels)
        return tf.reduce_sum(tf.gather(table, labels + num_classes * tf.range(positions)), axis=1)


def projection(features, labels, num_classes: int, name: str = "projection",
               spectral_norm: bool = False, training: bool = False) -> tf.Tensor:
    """The projection discriminator's class term <embed(y), h> for features h [B, D]: [B]
    (labels [B], or [B, m] for packed samples: see `embedding`)."""
    embedded = embedding(labels, num_classes, int(features.shape[-1]), name, spectral_norm, training)
    return tf.reduce_sum(embedded * features, axis=1)


def logit(features, labels, num_classes: Optional[int], initializer=None, code_width: int = 0,
          spectral_norm: bool = False, training: bool = False) -> tf.Tensor:
    """A discriminator's logit [B] from features [B, D]: a dense layer (`logit`), plus the
    projection term (`projection`, Miyato & Koyama 2018) when `labels` are given. With a code
    head (`code_width` > 0, InfoGAN: see `model.info`) [B, 1 + code_width]: the logit, then a
    dense layer (`code_logits`) on the same features."""
    sn = dict(spectral_norm=spectral_norm, training=training)
    logits = tf.squeeze(dense(features, 1, "logit", initializer=initializer, **sn), axis=1)
    if labels is not None:
        logits = logits + projection(features, labels, num_classes, **sn)
    if not code_width:
        return logits
    codes = dense(features, code_width, "code_logits", initializer=initializer, **sn)
    return tf.concat([logits[:, None], codes], axis=1)


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
            gamma = variable("gamma", [channels], v1.ones_initializer())
            beta = variable("beta", [channels], v1.zeros_initializer())
        else:
            gamma_table = variable("gamma", [num_classes, channels], v1.ones_initializer())
            beta_table = variable("beta", [num_classes, channels], v1.zeros_initializer())
        stat_kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.MEAN)
        moving_mean = variable("moving_mean", [channels], v1.zeros_initializer(), **stat_kwargs)
        moving_var = variable("moving_variance", [channels], v1.ones_initializer(), **stat_kwargs)
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


def self_attention(x, name: str, spectral_norm: bool = False, training: bool = False) -> tf.Tensor:
    """A SAGAN self-attention block (Zhang et al. 2019) on [B, H, W, C] (H, W even):
    every position attends to all positions of a 2x2 max-pooled map through 1x1 projections
    (`query`, `key` to C/8 channels, `value` to C/2, at least 1; `output` back to C; no biases),
    added to the input scaled by a learned `gamma` that starts at 0 (the block starts as the
    identity)."""
    height, width, channels = (int(d) for d in x.shape[1:])
    narrow, half = max(channels // 8, 1), max(channels // 2, 1)
    conv = dict(kernel_size=1, stride=1, initializer=v1.glorot_uniform_initializer(),
                spectral_norm=spectral_norm, training=training, use_bias=False)
    with v1.variable_scope(name):
        query = tf.reshape(conv2d(x, narrow, "query", **conv), [-1, height * width, narrow])
        pooled = [tf.nn.max_pool2d(conv2d(x, c, n, **conv), 2, 2, "VALID")
                  for c, n in ((narrow, "key"), (half, "value"))]
        key, value = (tf.reshape(p, [-1, height * width // 4, int(p.shape[-1])]) for p in pooled)
        attention = tf.nn.softmax(tf.matmul(query, key, transpose_b=True))
        attended = tf.reshape(tf.matmul(attention, value), [-1, height, width, half])
        gamma = variable("gamma", [], v1.zeros_initializer())
        return x + gamma * conv2d(attended, channels, "output", **conv)


def minibatch_stddev(x) -> tf.Tensor:
    """ProGAN's minibatch standard deviation: one more feature map (or feature) holding the
    standard deviation of every feature over the batch, averaged, so D can tell a batch of
    too-similar samples from a real one. D's output for a sample then depends on the rest of
    its batch (a batch of one sees 0)."""
    _, variance = tf.nn.moments(x, axes=[0])
    stat = tf.reduce_mean(tf.sqrt(variance + 1e-8))
    return tf.concat([x, tf.ones_like(x[..., :1]) * stat], axis=-1)


def conditioning(config, labels):
    """The labels a built-in network conditions on: `labels` when `model.conditional`, else
    None (a labelled data set can feed an unconditional model)."""
    return labels if config.model.conditional else None

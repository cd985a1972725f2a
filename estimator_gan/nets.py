"""Built-in networks: plain functions of tensors, an MLP pair and a DCGAN pair.

Every network has the signature the model_fns call:

    generator(noise, labels, mode, params) -> samples  [B, *sample_shape]
    discriminator(samples, labels, mode, params) -> logits  [B]

`params["config"]` is the run's `Config`; `labels` may be None. The model_fns open the role's
variable scope (`generator` / `discriminator`, with reuse) around each call, so a network only
names its layers and can be called any number of times with the same weights. Variables are made
with `tf.compat.v1.get_variable`; batch norm puts its moving-statistics updates in the
`UPDATE_OPS` collection when `mode` is TRAIN and uses the moving statistics otherwise.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from estimator_gan import custom

ModeKeys = tf.estimator.ModeKeys
v1 = tf.compat.v1

_DCGAN_INIT = v1.random_normal_initializer(stddev=0.02)


def _get(name, shape, initializer, trainable=True, **kwargs):
    return v1.get_variable(name, shape=shape, dtype=tf.float32, initializer=initializer,
                           trainable=trainable, **kwargs)


def dense(x, units: int, name: str, initializer=None) -> tf.Tensor:
    with v1.variable_scope(name):
        kernel = _get("kernel", [int(x.shape[-1]), units], initializer or v1.glorot_uniform_initializer())
        bias = _get("bias", [units], v1.zeros_initializer())
        return tf.matmul(x, kernel) + bias


def conv2d(x, filters: int, name: str, kernel_size: int = 4, stride: int = 2, initializer=None):
    with v1.variable_scope(name):
        kernel = _get("kernel", [kernel_size, kernel_size, int(x.shape[-1]), filters],
                      initializer or _DCGAN_INIT)
        bias = _get("bias", [filters], v1.zeros_initializer())
        return tf.nn.conv2d(x, kernel, strides=stride, padding="SAME") + bias


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


def batch_norm(x, training: bool, name: str, decay: float = 0.99, epsilon: float = 1e-5):
    """Batch norm over all axes but the last.

    Training: normalises with the batch's statistics and adds the moving-average updates to
    `UPDATE_OPS` (the caller decides whether they run). Otherwise: uses the moving statistics,
    so inference is deterministic.
    """
    channels = int(x.shape[-1])
    with v1.variable_scope(name):
        gamma = _get("gamma", [channels], v1.ones_initializer())
        beta = _get("beta", [channels], v1.zeros_initializer())
        stat_kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.MEAN)
        moving_mean = _get("moving_mean", [channels], v1.zeros_initializer(), **stat_kwargs)
        moving_var = _get("moving_variance", [channels], v1.ones_initializer(), **stat_kwargs)
        if training:
            mean, variance = tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
            for var, value in ((moving_mean, mean), (moving_var, variance)):
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                     v1.assign_sub(var, (var - value) * (1.0 - decay)))
        else:
            mean, variance = moving_mean, moving_var
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)


def _config(params):
    return params["config"]


def _upsampling_plan(height: int, width: int) -> Tuple[int, int, int]:
    """How many stride-2 layers fit: halve while both sides stay whole and >= 4 (at most 4)."""
    n = 0
    while n < 4 and height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, n = height // 2, width // 2, n + 1
    return n, height, width


def dcgan_generator(noise, labels, mode, params):
    """DCGAN generator sized from the sample shape: dense -> (deconv, BN, ReLU)* -> tanh."""
    cfg = _config(params)
    gcfg = cfg.model.generator
    height, width, channels = cfg.model.sample_shape
    n_up, h0, w0 = _upsampling_plan(height, width)
    training = mode == ModeKeys.TRAIN
    filters = [gcfg.filters * 2 ** (n_up - 1 - i) for i in range(max(n_up, 1))]

    def norm_relu(x, name):
        if gcfg.batch_norm:
            x = batch_norm(x, training, name, decay=gcfg.bn_decay)
        return tf.nn.relu(x)

    x = dense(noise, h0 * w0 * filters[0], "project", initializer=_DCGAN_INIT)
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
    same network works with every loss (gradient penalty included)."""
    cfg = _config(params)
    height, width, _ = cfg.model.sample_shape
    n_down, _, _ = _upsampling_plan(height, width)
    x = samples
    for i in range(max(n_down, 1)):
        x = tf.nn.leaky_relu(conv2d(x, cfg.model.discriminator.filters * 2 ** i, f"conv{i}"), 0.2)
    x = tf.reshape(x, [-1, int(math.prod(x.shape[1:]))])
    return tf.squeeze(dense(x, 1, "logit", initializer=_DCGAN_INIT), axis=1)


def mlp_generator(noise, labels, mode, params):
    """MLP generator for low-dimensional data (e.g. 2D mixtures); linear output."""
    cfg = _config(params)
    gcfg = cfg.model.generator
    training = mode == ModeKeys.TRAIN
    x = noise
    for i, units in enumerate(gcfg.hidden_units):
        x = dense(x, units, f"hidden{i}")
        if gcfg.batch_norm:
            x = batch_norm(x, training, f"hidden{i}_bn", decay=gcfg.bn_decay)
        x = tf.nn.relu(x)
    shape = list(cfg.model.sample_shape)
    x = dense(x, int(math.prod(shape)), "output")
    return tf.reshape(x, [-1] + shape)


def mlp_discriminator(samples, labels, mode, params):
    """MLP discriminator: (dense, leaky ReLU)* -> dense logit; any sample shape is flattened."""
    cfg = _config(params)
    x = tf.reshape(samples, [-1, int(math.prod(samples.shape[1:]))])
    for i, units in enumerate(cfg.model.discriminator.hidden_units):
        x = tf.nn.leaky_relu(dense(x, units, f"hidden{i}"), 0.2)
    return tf.squeeze(dense(x, 1, "logit"), axis=1)


NetworkFn = Callable[..., tf.Tensor]

ARCHITECTURES: Dict[str, Tuple[NetworkFn, NetworkFn]] = {
    "dcgan": (dcgan_generator, dcgan_discriminator),
    "mlp": (mlp_generator, mlp_discriminator),
}


def networks_for(config) -> Tuple[NetworkFn, NetworkFn]:
    """The (generator, discriminator) pair a config names: the architecture's, each replaced by
    the function at `model.generator_fn` / `model.discriminator_fn` when set."""
    gen, disc = ARCHITECTURES[config.model.architecture]
    if config.model.generator_fn:
        gen = custom.network_function(config.model.generator_fn, "generator", "model.generator_fn")
    if config.model.discriminator_fn:
        disc = custom.network_function(config.model.discriminator_fn, "discriminator",
                                       "model.discriminator_fn")
    return gen, disc

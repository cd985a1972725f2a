"""Built-in networks: plain functions of tensors, and the registry that names each pair.

Every network has the signature the model_fns call:

    generator(noise, labels, mode, params) -> samples  [B, *sample_shape]
    discriminator(samples, labels, mode, params) -> logits  [B]

`params["config"]` is the run's `Config`; `labels` may be None. The model_fns open the role's
variable scope (`generator` / `discriminator`, with reuse) around each call, so a network only
names its layers and can be called any number of times with the same weights. The layers
(`model.layers`) make their variables with `tf.compat.v1.get_variable` and leave batch-norm
and spectral-norm state in graph collections for `model.gan` to wire (see `model.layers`).

Here: an MLP pair (2D points and other flat data) and a DCGAN pair (images of any size); the
residual SN-GAN pair for 32-128 px images is in `model.resnet`. Adding an architecture: write
its generator and discriminator and add an `Architecture` to `ARCHITECTURES` (the name
`model.architecture` takes).

Conditional models (`model.conditional`) get int32 class ids `labels` [B] in
[0, model.num_classes): the DCGAN and MLP generators concatenate a one-hot code to the noise
and use class-conditional batch norm; the discriminators add a projection term <embed(y), h>
to their logit (Miyato & Koyama, 2018). With `model.discriminator.spectral_norm`, every D
weight is divided by an estimate of its largest singular value (`layers.spectral_normalize`).

With InfoGAN codes (`model.latent_codes`, see `model.info`) the generators get the codes one-hot
at the end of `noise` (wider than z_dim), and the discriminators return [B, 1 + code width]:
the logit, then the code head's logits (`layers.logit` with a `code_width`).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import tensorflow as tf

from estimator_gan.errors import ConfigError
from estimator_gan.model import custom, info, layers, resnet
from estimator_gan.model.layers import DCGAN_INIT, batch_norm, conv2d, conv2d_transpose, dense

ModeKeys = tf.estimator.ModeKeys
v1 = tf.compat.v1


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
    labels = layers.conditioning(cfg, labels)
    height, width, channels = cfg.model.sample_shape
    n_up, h0, w0 = _upsampling_plan(height, width)
    training = mode == ModeKeys.TRAIN
    width = resolved_filters(cfg.model)[0]
    filters = [width * 2 ** (n_up - 1 - i) for i in range(max(n_up, 1))]

    def norm_relu(x, name):
        if gcfg.batch_norm:
            x = batch_norm(x, training, name, decay=gcfg.bn_decay, labels=labels,
                           num_classes=cfg.model.num_classes)
        return tf.nn.relu(x)

    x = dense(_with_one_hot(noise, labels, cfg), h0 * w0 * filters[0], "project", initializer=DCGAN_INIT)
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
    width = resolved_filters(cfg.model)[1]
    x = samples
    for i in range(max(n_down, 1)):
        x = tf.nn.leaky_relu(conv2d(x, width * 2 ** i, f"conv{i}", **sn), 0.2)
    if cfg.model.discriminator.minibatch_stddev:
        x = layers.minibatch_stddev(x)
    x = tf.reshape(x, [-1, int(math.prod(x.shape[1:]))])
    return layers.logit(x, layers.conditioning(cfg, labels), cfg.model.num_classes, DCGAN_INIT,
                        info.code_width(cfg.model), **sn)


def mlp_generator(noise, labels, mode, params):
    """MLP generator for low-dimensional data (e.g. 2D mixtures); linear output.
    Conditional: one-hot label concatenated to the noise, class-conditional batch norm."""
    cfg = _config(params)
    gcfg = cfg.model.generator
    labels = layers.conditioning(cfg, labels)
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
        x = layers.minibatch_stddev(x)
    return layers.logit(x, layers.conditioning(cfg, labels), cfg.model.num_classes,
                        code_width=info.code_width(cfg.model), **sn)


NetworkFn = Callable[..., tf.Tensor]


def _no_self_attention(model) -> None:
    if model.self_attention is not None:
        raise ConfigError(f"model.self_attention applies to architecture resnet, not "
                          f"{model.architecture}: set it to null")


class Architecture(NamedTuple):
    """A built-in network pair and what it needs from the config.

    `default_filters(model)`: the (generator, discriminator) `filters` that null
    `model.generator.filters` / `model.discriminator.filters` stand for, for a `model` config
    with a sample shape. `check(model)`: raise `ConfigError` for a `model` config the pair cannot
    build. `filters_doc`: the (generator, discriminator) defaults in words, for the reference.
    """

    generator: NetworkFn
    discriminator: NetworkFn
    default_filters: Callable[..., Tuple[int, int]]
    check: Callable[..., None]
    filters_doc: Tuple[str, str]


ARCHITECTURES: Dict[str, Architecture] = {
    "dcgan": Architecture(dcgan_generator, dcgan_discriminator, lambda model: (64, 64),
                          _no_self_attention, ("64", "64")),
    "mlp": Architecture(mlp_generator, mlp_discriminator, lambda model: (64, 64),
                        _no_self_attention, ("unused", "unused")),
    "resnet": Architecture(resnet.generator, resnet.discriminator, resnet.default_filters,
                           resnet.check, (resnet.filters_doc(0), resnet.filters_doc(1))),
}


def filters_doc(role: int) -> str:
    """The `filters` defaults of every architecture in words; role 0: G, 1: D."""
    return ", ".join(f"{name} {arch.filters_doc[role]}" for name, arch in ARCHITECTURES.items())


def resolved_filters(model) -> Tuple[int, int]:
    """The (generator, discriminator) `filters` of a `model` config with a sample shape: the
    config's, or the architecture's defaults where null (`ConfigError` for a sample shape the
    architecture has no defaults for)."""
    g, d = model.generator.filters, model.discriminator.filters
    if g is None or d is None:
        default_g, default_d = ARCHITECTURES[model.architecture].default_filters(model)
        g, d = g or default_g, d or default_d
    return g, d


def uses_architecture(model) -> bool:
    """Whether a `model` config builds at least one of its architecture's networks."""
    return not (model.generator_fn and model.discriminator_fn)


def check(model) -> None:
    """`ConfigError` for a `model` config (with a sample shape) whose architecture cannot build
    the networks it is used for."""
    if uses_architecture(model):
        ARCHITECTURES[model.architecture].check(model)


def networks_for(config, generator_fn: Optional[NetworkFn] = None,
                 discriminator_fn: Optional[NetworkFn] = None) -> Tuple[NetworkFn, NetworkFn]:
    """The (generator, discriminator) pair: `generator_fn` / `discriminator_fn` when given,
    else the function at `model.generator_fn` / `model.discriminator_fn` when set, else the
    architecture's. `ConfigError` for a model the architecture cannot build (checked when the
    sample shape is known)."""
    arch = ARCHITECTURES[config.model.architecture]
    gen, disc = arch.generator, arch.discriminator
    if config.model.sample_shape is not None:
        check(config.model)
    if generator_fn is not None:
        gen = generator_fn
    elif config.model.generator_fn:
        gen = custom.network_function(config.model.generator_fn, "generator", "model.generator_fn")
    if discriminator_fn is not None:
        disc = discriminator_fn
    elif config.model.discriminator_fn:
        disc = custom.network_function(config.model.discriminator_fn, "discriminator",
                                       "model.discriminator_fn")
    return gen, disc

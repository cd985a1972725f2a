"""Residual SN-GAN networks (`model.architecture: resnet`) for square images of 28, 32, 48, 64
and 128 px: the layouts of Miyato et al. 2018 (CIFAR-10 at 32 px, STL-10 at 48 px) and of Miyato &
Koyama 2018 (64 and 128 px), with the papers' widths as defaults. 28 px (MNIST's size) is not a
paper's: the CIFAR-10 layout from a 7x7 map with one up-sampling block fewer (7, 14, 28; D's
blocks 14, 7, 7, 7), at width 64 for both networks.

Generator: noise -> linear to a `bottom` x `bottom` map -> up-sampling residual blocks (BN,
ReLU, nearest 2x up, 3x3 conv, BN, ReLU, 3x3 conv; shortcut: 1x1 conv of the up-sampled input)
-> BN, ReLU, 3x3 conv, tanh. Conditional models use class-conditional batch norm in the blocks.

Discriminator: an "optimized" first block (3x3 conv, ReLU, 3x3 conv, 2x2 average pool;
shortcut: pool then 1x1 conv), then blocks of (ReLU, 3x3 conv, ReLU, 3x3 conv, pool when it
down-samples; shortcut: 1x1 conv and pool when the width or size changes, identity otherwise),
then (with `model.discriminator.minibatch_stddev`) one more feature map, the batch's feature
standard deviation, then ReLU, global sum pooling, linear to the logit, plus the projection
term <embed(y), h> when conditional. Every D weight is spectrally normalised with
`model.discriminator.spectral_norm`.

Up-sampling then a 3x3 conv, and a 3x3 conv then pooling, each run as one stride-2 4x4
convolution (`layers.conv2d`'s `resample`): the same function, 2.25x fewer multiply-adds.

Widths: `model.generator.filters` is the width of G's last block and
`model.discriminator.filters` that of D's first block; the layout gives the others as
multiples (`LAYOUTS`). `model.self_attention` inserts one SAGAN block in both networks after
the block that first reaches that resolution.

Variables (under `generator/` and `discriminator/`): `linear`, `block1`... (each with `bn1`,
`conv1`, `bn2`, `conv2`, `shortcut`; D's blocks without batch norm), `attention`, `final_bn`,
`to_image`; D's `logit` and `projection`.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import tensorflow as tf

from estimator_gan.errors import ConfigError
from estimator_gan.model import info, layers

ModeKeys = tf.estimator.ModeKeys
v1 = tf.compat.v1

# Glorot uniform, with gain sqrt(2) for the convolutions followed by a ReLU (as the papers).
_INIT = v1.glorot_uniform_initializer()
_RELU_INIT = v1.variance_scaling_initializer(scale=2.0, mode="fan_avg", distribution="uniform")


class Layout(NamedTuple):
    """One image size's networks.

    `bottom`: side of G's first feature map. `generator`: widths, as multiples of
    `generator.filters`, of that map and of each up-sampling block's output. `discriminator`:
    widths, as multiples of `discriminator.filters`, of each block's output; the first
    `down` blocks halve the size. `filters`: the papers' (G, D) `filters`.
    """

    bottom: int
    generator: Tuple[int, ...]
    discriminator: Tuple[int, ...]
    down: int
    filters: Tuple[int, int]

    def generator_sizes(self) -> List[int]:
        """Output side of each G block."""
        return [self.bottom * 2 ** (i + 1) for i in range(len(self.generator) - 1)]

    def discriminator_sizes(self, size: int) -> List[int]:
        """Output side of each D block for `size`-px input."""
        return [size // 2 ** min(i + 1, self.down) for i in range(len(self.discriminator))]

    def attention_sizes(self, size: int) -> List[int]:
        """Resolutions where a self-attention block fits: reached by a block of both networks."""
        return sorted(set(self.generator_sizes()) & set(self.discriminator_sizes(size)))


LAYOUTS: Dict[int, Layout] = {
    28: Layout(7, (1, 1, 1), (1, 1, 1, 1), 2, (64, 64)),                      # MNIST's size
    32: Layout(4, (1, 1, 1, 1), (1, 1, 1, 1), 2, (256, 128)),                 # SN-GAN CIFAR-10
    48: Layout(6, (8, 4, 2, 1), (1, 2, 4, 8, 16), 4, (64, 64)),               # SN-GAN STL-10
    64: Layout(4, (16, 8, 4, 2, 1), (1, 2, 4, 8, 16), 5, (64, 64)),           # projection, 64 px
    128: Layout(4, (16, 16, 8, 4, 2, 1), (1, 2, 4, 8, 16, 16), 5, (64, 64)),  # projection, 128 px
}


def layout(model) -> Layout:
    """The layout for `model.sample_shape`; `ConfigError` for a shape it does not cover, or a
    `model.self_attention` resolution that no block of both networks reaches."""
    shape = list(model.sample_shape or [])
    sizes = ", ".join(map(str, LAYOUTS))
    if len(shape) != 3 or shape[0] != shape[1] or shape[0] not in LAYOUTS:
        raise ConfigError(f"architecture resnet builds square images of {sizes} px; "
                          f"model.sample_shape is {shape} (set data.image_size to one of them)")
    found = LAYOUTS[shape[0]]
    allowed = found.attention_sizes(shape[0])
    if model.self_attention is not None and model.self_attention not in allowed:
        raise ConfigError(f"model.self_attention={model.self_attention} is not a resolution both "
                          f"networks reach at {shape[0]} px; choose one of "
                          f"{', '.join(map(str, allowed))} (or null)")
    return found


def check(model) -> None:
    """Refuse a model config these networks cannot build (see `layout`)."""
    layout(model)


def default_filters(model) -> Tuple[int, int]:
    """The papers' (generator, discriminator) `filters` for `model.sample_shape`."""
    return layout(model).filters


def filters_doc(role: int) -> str:
    """The papers' `filters` per image size in words; role 0: G, 1: D."""
    sizes: Dict[int, List[int]] = {}
    for size, found in LAYOUTS.items():
        sizes.setdefault(found.filters[role], []).append(size)
    return " and ".join(f"{width} at {', '.join(map(str, s))} px" for width, s in sizes.items())


def _widths(cfg) -> Tuple[Layout, int, int]:
    """The layout and the (G, D) `filters` in force (the papers' where the config has null)."""
    found = layout(cfg.model)
    g, d = found.filters
    return found, cfg.model.generator.filters or g, cfg.model.discriminator.filters or d


def _up_block(x, channels: int, name: str, norm):
    """G's residual block: norm-ReLU-up-conv-norm-ReLU-conv, plus a 1x1 conv of the input
    up-sampled. The up-sampling and the next conv run as one (`layers.conv2d`'s `resample`);
    the 1x1 conv runs before the up-sampling, on the small map (the two commute)."""
    with v1.variable_scope(name):
        h = layers.conv2d(tf.nn.relu(norm(x, "bn1")), channels, "conv1", 3, 1, _RELU_INIT, resample="up")
        h = layers.conv2d(tf.nn.relu(norm(h, "bn2")), channels, "conv2", 3, 1, _RELU_INIT)
        return h + layers.upsample(layers.conv2d(x, channels, "shortcut", 1, 1, _INIT))


def generator(noise, labels, mode, params):
    """Residual generator: see the module docstring."""
    cfg = params["config"]
    model, gcfg = cfg.model, cfg.model.generator
    found, filters, _ = _widths(cfg)
    labels = layers.conditioning(cfg, labels)
    training = mode == ModeKeys.TRAIN

    def norm(x, name, conditional=True):
        if not gcfg.batch_norm:
            return x
        return layers.batch_norm(x, training, name, decay=gcfg.bn_decay,
                                 labels=labels if conditional else None,
                                 num_classes=model.num_classes)

    widths = [filters * m for m in found.generator]
    x = layers.dense(noise, found.bottom ** 2 * widths[0], "linear", _INIT)
    x = tf.reshape(x, [-1, found.bottom, found.bottom, widths[0]])
    for i, (channels, size) in enumerate(zip(widths[1:], found.generator_sizes())):
        x = _up_block(x, channels, f"block{i + 1}", norm)
        if size == model.self_attention:
            x = layers.self_attention(x, "attention")
    x = tf.nn.relu(norm(x, "final_bn", conditional=False))
    return tf.tanh(layers.conv2d(x, model.sample_shape[-1], "to_image", 3, 1, _INIT))


def _down_block(x, channels: int, name: str, down: bool, first: bool, sn: dict):
    """D's residual block. The first ("optimized") block has no ReLU on the image and pools its
    shortcut before the 1x1 conv; the others pool after it, which is the same function (the
    two commute), so every shortcut pools first, on the smaller map. The second conv and the
    pooling run as one (`layers.conv2d`'s `resample`)."""
    conv = lambda h, c, n, k, init, resample=None: layers.conv2d(  # noqa: E731
        h, c, n, k, 1, init, resample=resample, **sn)
    with v1.variable_scope(name):
        h = x if first else tf.nn.relu(x)
        h = conv(h, int(x.shape[-1]) if not first else channels, "conv1", 3, _RELU_INIT)
        h = conv(tf.nn.relu(h), channels, "conv2", 3, _RELU_INIT, "down" if down else None)
        shortcut = layers.downsample(x) if down else x
        if down or int(x.shape[-1]) != channels:
            shortcut = conv(shortcut, channels, "shortcut", 1, _INIT)
        return h + shortcut


def discriminator(samples, labels, mode, params):
    """Residual discriminator: see the module docstring."""
    cfg = params["config"]
    model = cfg.model
    found, _, filters = _widths(cfg)
    sn = dict(spectral_norm=model.discriminator.spectral_norm, training=mode == ModeKeys.TRAIN)
    x = samples
    size = int(samples.shape[1])
    for i, multiple in enumerate(found.discriminator):
        down = i < found.down
        x = _down_block(x, filters * multiple, f"block{i + 1}", down, i == 0, sn)
        if down and size // 2 ** (i + 1) == model.self_attention:
            x = layers.self_attention(x, "attention", **sn)
    if model.discriminator.minibatch_stddev:
        x = layers.minibatch_stddev(x)
    features = tf.reduce_sum(tf.nn.relu(x), axis=[1, 2])
    return layers.logit(features, layers.conditioning(cfg, labels), model.num_classes, _INIT,
                        info.code_width(model), **sn)

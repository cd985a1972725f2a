"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) of the images D sees in training.

With `model.augment` set (e.g. "color,translation,cutout"), every batch D judges in a TRAIN
update, real and fake, in the D update and in the G update, is augmented first with fresh
random parameters per sample. The transforms are differentiable, so G learns through them;
D never sees an un-augmented image during training, which keeps it from memorising a small
data set. EVAL, PREDICT and exports are unaffected. Randomness is stateless, keyed like the
noise (see `model.gan`), so a resumed run draws the same augmentations.

Adding a transform: a function `(images [B, H, W, C] in [-1, 1], key) -> images` in
`TRANSFORMS`, named by what `model.augment` lists.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import tensorflow as tf


def _uniform(key, shape, index: int) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=tf.random.experimental.stateless_fold_in(key, index),
                                       alg="philox")


def color(x, key):
    """Brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's channel mean) and
    contrast (x U(0.5, 1.5) around the image mean), per sample."""
    batch = tf.shape(x)[0]
    x = x + (_uniform(key, [batch, 1, 1, 1], 0) - 0.5)
    mean = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - mean) * (_uniform(key, [batch, 1, 1, 1], 1) * 2.0) + mean
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * (_uniform(key, [batch, 1, 1, 1], 2) + 0.5) + mean


def translation(x, key, ratio: float = 0.125):
    """Shift each image by up to `ratio` of its size along each axis, filling with zeros."""
    batch, height, width = tf.shape(x)[0], int(x.shape[1]), int(x.shape[2])
    pad_h, pad_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = tf.cast(tf.floor(_uniform(key, [batch, 1], 0) * (2 * pad_h + 1)), tf.int32)
    dx = tf.cast(tf.floor(_uniform(key, [batch, 1], 1) * (2 * pad_w + 1)), tf.int32)
    padded = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    rows = dy + tf.range(height)[None, :]
    cols = dx + tf.range(width)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def cutout(x, key, ratio: float = 0.5):
    """Set a square of `ratio` times the image size, at a random place, to zero."""
    batch, height, width = tf.shape(x)[0], int(x.shape[1]), int(x.shape[2])
    size_h, size_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = tf.floor(_uniform(key, [batch, 1, 1], 0) * (height + 1 - size_h % 2)) - size_h // 2
    left = tf.floor(_uniform(key, [batch, 1, 1], 1) * (width + 1 - size_w % 2)) - size_w // 2
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :]
    inside = ((rows >= top) & (rows < top + size_h)) & ((cols >= left) & (cols < left + size_w))
    return x * (1.0 - tf.cast(inside, x.dtype))[..., None]


TRANSFORMS: Dict[str, Callable] = {"color": color, "translation": translation, "cutout": cutout}


def policy(text) -> Sequence[str]:
    """The transform names of a `model.augment` value ("color,translation", a list, or None)."""
    if not text:
        return ()
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(TRANSFORMS)}")
    return tuple(names)


def augment(images, names: Sequence[str], key) -> tf.Tensor:
    """`images` through the transforms `names`, in order, each with its own part of `key`."""
    for i, name in enumerate(names):
        images = TRANSFORMS[name](images, tf.random.experimental.stateless_fold_in(key, i))
    return images

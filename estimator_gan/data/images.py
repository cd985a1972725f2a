"""Image conversions shared by the data sources and the input pipeline: decoding, channel
conversion, centre crop and resize, and scaling to [-1, 1]; and the TF plumbing both use
(a private session, host arrays as tensors).

Images travel as uint8 (0..255) until the batch is formed and as float32 in [-1, 1] after.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

TF_DECODABLE = {"PNG", "JPEG", "GIF", "BMP"}
_CHUNK = 2048


@contextlib.contextmanager
def private_session() -> Iterator[tf.compat.v1.Session]:
    """A session on a fresh graph: runs TF ops the same way whether or not we are eager."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        yield sess


def drain(sess, fetch) -> Iterator:
    """Every value of `fetch` (e.g. an iterator's `get_next()`) until the end of its data."""
    while True:
        try:
            yield sess.run(fetch)
        except tf.errors.OutOfRangeError:
            return


def host_tensor(array: np.ndarray) -> tf.Tensor:
    """`array` as a tensor that is computed when the iterator is initialised (a py_func with
    no inputs), so the data never becomes a constant of the graph."""
    tensor = tf.numpy_function(lambda: array, [], tf.as_dtype(array.dtype), stateful=False)
    tensor.set_shape(array.shape)
    return tensor


def square_resize(images, size: int):
    """Center-crop float images ([H, W, C] or [N, H, W, C]) to a square, resize to `size`
    (bilinear, antialiased)."""
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    side = tf.minimum(h, w)
    images = tf.image.crop_to_bounding_box(images, (h - side) // 2, (w - side) // 2, side, side)
    return tf.image.resize(images, [size, size], antialias=True)


def decode_image(encoded, size: int, channels: int):
    """An encoded PNG/JPEG/GIF/BMP -> uint8 `[size, size, channels]`."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, channels])
    image = square_resize(tf.cast(image, tf.float32), size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def scale_batch(x, y=None):
    """uint8 (or float) images -> float32 in [-1, 1]; labels pass through."""
    if x.dtype == tf.uint8:
        x = tf.cast(x, tf.float32) / 127.5 - 1.0
    return x if y is None else (x, y)


def to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.array(x, dtype=np.float32)


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


def _like(original: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Float results back to the dtype convention of `original`."""
    if original.dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.clip(values, -1.0, 1.0).astype(np.float32)


def fit_images(x: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """[N, H, W, C] uint8 or float32 images to `shape` (channels, then crop+resize)."""
    channels = shape[2]
    if x.shape[3] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=3)
    elif x.shape[3] == 3 and channels == 1:
        grey = x.astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        x = _like(x, grey[..., None])
    if x.shape[1:3] != shape[:2]:
        out = []
        with private_session() as sess:
            images = tf.compat.v1.placeholder(tf.float32, (None,) + x.shape[1:])
            resized = square_resize(images, shape[0])
            for start in range(0, len(x), _CHUNK):
                chunk = x[start:start + _CHUNK].astype(np.float32)
                out.append(_like(x, sess.run(resized, {images: chunk})))
        x = np.concatenate(out) if out else np.zeros((0,) + tuple(shape), x.dtype)
    return x


def image_problem(source) -> Optional[str]:
    """Why PIL (and so probably TF) cannot decode `source` (a path or file object), or None."""
    try:
        with Image.open(source) as image:
            fmt = image.format
            image.verify()
    except Exception as err:  # PIL signals a bad file with many exception types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(source, str):
            reason = reason.replace(repr(source), "").replace(source, "").strip()
        return reason or type(err).__name__
    if fmt not in TF_DECODABLE:
        return f"unsupported format {fmt}"
    return None

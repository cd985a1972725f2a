"""Input-function builders for `GAN.train(input_fn=...)` and `evaluate`: `input_fn_for(source,
...)` for any registered source, and one named builder per built-in source.

Each builder validates its options like the `data` section of a config (same names, same
defaults, `ConfigError` on a bad value), loads and checks the data at once (`DataError` naming
the file), and returns `input_fn(input_context=None) -> tf.data.Dataset`.

What any input_fn, yours included, must yield: `features` float32 `[B, *model.sample_shape]`
(images in [-1, 1]), or `(features, labels)` with int32 labels `[B]`; batches of one fixed size
(`drop_remainder=True`); for training, repeating forever. `GAN` takes `model.sample_shape` from
the config's `data` section, so set `model.sample_shape` when your input_fn yields another shape.
"""
from __future__ import annotations

from typing import Callable, Optional

from estimator_gan import config as config_lib
from estimator_gan.data import pipeline


def input_fn_for(source: str, training: bool = True, seed: Optional[int] = None,
                 **options) -> Callable:
    """An input_fn for any registered data source, with `data` section options by name."""
    options = {k: v for k, v in options.items() if v is not None}
    cfg = config_lib.data_config(source=source, what=f"{source}_input_fn option", **options)
    return pipeline.make_input_fn(cfg, training=training, seed=seed)


def digits_input_fn(batch_size: int = 64, image_size: Optional[int] = None, training: bool = True,
                    seed: Optional[int] = None, **options) -> Callable:
    """scikit-learn's bundled 8x8 digits (no download), upsampled to `image_size` (16), with
    labels 0-9."""
    return input_fn_for("digits", training, seed, batch_size=batch_size, image_size=image_size, **options)


def mixture_input_fn(kind: str = "ring", modes: int = 8, radius: float = 2.0, std: float = 0.02,
                     num_examples: int = 100_000, batch_size: int = 64, training: bool = True,
                     seed: Optional[int] = None, **options) -> Callable:
    """2D points from a mixture of Gaussians on a `ring` or a square `grid`; label = mode."""
    mixture = dict(kind=kind, modes=modes, radius=radius, std=std, num_examples=num_examples)
    return input_fn_for("mixture2d", training, seed, batch_size=batch_size, mixture=mixture, **options)


def mnist_input_fn(path: Optional[str] = None, batch_size: int = 64,
                   image_size: Optional[int] = None, training: bool = True,
                   seed: Optional[int] = None, **options) -> Callable:
    """MNIST-format files: a folder of IDX files (`.gz` or not), one IDX images file, or an
    `mnist.npz`; with labels. Without `path`, Keras' cache `~/.keras/datasets/mnist.npz`
    (fetched once when online)."""
    return input_fn_for("mnist", training, seed, path=path, batch_size=batch_size,
                    image_size=image_size, **options)


def stacked_mnist_input_fn(path: Optional[str] = None, num_examples: int = 100_000,
                           stacked_seed: int = 0, batch_size: int = 64, training: bool = True,
                           seed: Optional[int] = None, **options) -> Callable:
    """Stacked MNIST: three MNIST digits (from `path`, as `mnist_input_fn` takes it) as R, G, B;
    `num_examples` stacks chosen with `stacked_seed`; label = 100 r + 10 g + b."""
    return input_fn_for("stacked_mnist", training, seed, path=path, batch_size=batch_size,
                        stacked=dict(num_examples=num_examples, seed=stacked_seed), **options)


def images_input_fn(path: str, batch_size: int = 64, image_size: Optional[int] = None,
                    channels: Optional[int] = None, training: bool = True,
                    seed: Optional[int] = None, **options) -> Callable:
    """A folder of PNG/JPEG files (recursive), center-cropped and resized to `image_size` (64)
    with `channels` (3); no labels. `on_corrupt="skip"` skips undecodable files."""
    return input_fn_for("images", training, seed, path=path, batch_size=batch_size,
                    image_size=image_size, channels=channels, **options)


def tfrecord_input_fn(path: str, batch_size: int = 64, image_size: Optional[int] = None,
                      channels: Optional[int] = None, training: bool = True,
                      seed: Optional[int] = None, **options) -> Callable:
    """A file, glob or folder of `tf.train.Example` records: the encoded image at `image_key`,
    an optional int label at `label_key`."""
    return input_fn_for("tfrecord", training, seed, path=path, batch_size=batch_size,
                    image_size=image_size, channels=channels, **options)


def npy_input_fn(path: str, labels_path: Optional[str] = None, batch_size: int = 64,
                 training: bool = True, seed: Optional[int] = None, **options) -> Callable:
    """A `.npy`/`.npz` array: `(N, 2)` points or `(N, H, W[, C])` images, optional labels."""
    return input_fn_for("npy", training, seed, path=path, labels_path=labels_path,
                    batch_size=batch_size, **options)


def tfds_input_fn(name: str, split: str = "train", data_dir: Optional[str] = None,
                  download: bool = False, image_key: str = "image", label_key: Optional[str] = "label",
                  batch_size: int = 64, image_size: Optional[int] = None,
                  channels: Optional[int] = None, training: bool = True,
                  seed: Optional[int] = None, **options) -> Callable:
    """A TensorFlow Datasets data set (`pip install estimator-gan[tfds]`), prepared in
    `data_dir` (or downloaded first with `download=True`): the image feature `image_key`, center-
    cropped and resized to `image_size` (default: its own size when square, else 64), with the
    ClassLabel `label_key` as labels (None: unlabelled)."""
    tfds = dict(name=name, split=split, data_dir=data_dir, download=download,
                image_key=image_key, label_key=label_key)
    return input_fn_for("tfds", training, seed, tfds=tfds, batch_size=batch_size,
                        image_size=image_size, channels=channels, **options)

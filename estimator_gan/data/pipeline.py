"""The one tf.data input pipeline that feeds both GAN networks, for every data source.

`make_input_fn(cfg)` loads and validates the data once (so a bad file fails before training
starts, with a one-line `DataError` that names it) and returns an `input_fn(input_context=None)`
for `Estimator.train/evaluate`. It can be called any number of times, eagerly or inside a graph.

What a caller must know:

* Elements are `(features, labels)` when the source has labels, else just `features`.
  `features` is float32 `[B, *sample_shape]`: images in [-1, 1], mixture points as raw
  coordinates. `labels` is int32 `[B]`. Batches always have a static size
  (`drop_remainder=True`): a training pass repeats forever; an evaluation pass is one
  unshuffled epoch that drops the last partial batch.
* `data.batch_size` is the global batch. Given an `input_context`, each input pipeline reads
  its own shard and yields per-replica batches.
* **In memory** are the digits, mixture2d, mnist and npy sources, and image folders, TFRecords
  and TFDS data sets when `data.cache` is on and the decoded examples fit in a quarter of the
  memory (`memory.available()`: the RAM or a cgroup's limit; they are decoded once, when the
  input_fn is made). Their training order is a pure function of
  the seed: epoch `e` visits the examples in a stateless permutation keyed on `(seed, e)`, and
  the stream is cut into batches across epoch boundaries. `start_example` starts that stream
  at an exact position, which is how a resumed run continues the order of an uninterrupted
  one. The examples reach the graph once, when the iterator is initialised (never as graph
  constants, which would be copied into every checkpoint's meta graph); batches are then
  gathered by TensorFlow ops, without Python.
* **Streamed** (data too large to keep): decoded as they are read, shuffled through a
  buffer of `data.shuffle_buffer` examples. A resumed stream is reshuffled with a seed keyed on
  `start_example`, so no batch is systematically replayed, but the order is not the
  uninterrupted one.
* `data.clusters` replaces the labels of in-memory examples by their cluster ids
  (`clusters.balanced_kmeans`, computed here, a few seconds per 100,000 small images).
* Image files are checked with PIL before training (`on_corrupt`: fail with the file's name,
  or skip it, which `make_input_fn` notes once on stderr, as it notes a training set smaller
  than one batch). A TFRecord source is checked on its first record only; a later undecodable
  record stops the pipeline with a TensorFlow error ('fail') or is dropped ('skip').
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from estimator_gan import memory
from estimator_gan.data import clusters
from estimator_gan.data import images as image_lib
from estimator_gan.data import sources
from estimator_gan.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
_MAX_EPOCHS = 2 ** 62


def make_input_fn(cfg, training: bool = True, seed: Optional[int] = None,
                  start_example: int = 0) -> Callable[..., tf.data.Dataset]:
    """Load and validate the data now; return `input_fn(input_context=None)` for an Estimator.

    `cfg` is a config's `data` section (`config.data`). `seed` seeds the training order and
    the mixture2d generator (None: a random seed). `start_example` is how many examples of the
    training stream (all input pipelines together) were already consumed, e.g. by the steps
    of a checkpoint being resumed.
    """
    cfg = cfg.model_copy(deep=True)
    if seed is None:
        seed = int(np.random.randint(2 ** 31 - 1))
    src = sources.load(cfg, seed)
    _print_notes(cfg, src, training)
    if isinstance(src, sources.Files) and cfg.cache and _fits_in_memory(src.count, src.shape):
        src = decode_all(cfg, src)
    if cfg.clusters.count:
        src = cluster_labelled(cfg, src)

    def input_fn(input_context=None) -> tf.data.Dataset:
        shards, shard_id, batch = _sharding(cfg, input_context)
        start = start_example // shards
        if isinstance(src, sources.Arrays):
            ds = _array_batches(cfg, src, training, seed, shards, shard_id, batch, start)
        else:
            ds = _streamed_batches(cfg, src, training, seed, shards, shard_id, batch, start)
        return ds.prefetch(AUTOTUNE)

    return input_fn


def cluster_labelled(cfg, src: sources.Loaded, stream=None) -> sources.Arrays:
    """`src` with the `data.clusters` ids as its labels (any labels it had are set aside)."""
    if not isinstance(src, sources.Arrays):
        raise DataError(f"{cfg.source}: data.clusters needs the examples in memory, and these "
                        "do not fit (or data.cache is off)")
    if len(src.x) < cfg.clusters.count:
        raise DataError(f"{cfg.source}: {len(src.x)} examples cannot fill data.clusters.count="
                        f"{cfg.clusters.count} clusters")
    started = time.perf_counter()
    labels = clusters.balanced_kmeans(src.x, cfg.clusters.count, cfg.clusters.seed)
    print(f"{cfg.source}: {cfg.clusters.count} clusters of {len(src.x) // cfg.clusters.count} "
          f"examples as labels (balanced k-means, {time.perf_counter() - started:.1f}s)",
          file=stream or sys.stderr, flush=True)
    return sources.Arrays(src.x, labels)


def _print_notes(cfg, src: sources.Loaded, training: bool, stream=None) -> None:
    """What a user should know about the data, said once per input_fn (not again by
    `load_examples`, which reads the same data for pictures and metrics): files skipped as
    undecodable, and a training set smaller than one batch, whose batches repeat examples."""
    stream = stream or sys.stderr
    skipped = getattr(src, "skipped", ())
    if skipped:
        print(f"{cfg.source}: skipped {len(skipped)} undecodable files (first: {skipped[0]})",
              file=stream, flush=True)
    count = len(src.x) if isinstance(src, sources.Arrays) else (src.count if src.count_is_exact else None)
    if training and count is not None and count < cfg.batch_size:
        print(f"note: {cfg.source} has {count} examples, fewer than one batch "
              f"(data.batch_size={cfg.batch_size}): every batch repeats them", file=stream, flush=True)


def load_examples(cfg, limit: Optional[int] = None,
                  seed: Optional[int] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The real examples as numpy `(features, labels or None)`, scaled like the pipeline.

    In source order, or a seeded permutation when `seed` is given (streamed sources other than
    image folders, e.g. tfrecord and tfds: a seeded shuffle with `shuffle_buffer`); at most
    `limit` of them.
    """
    src = sources.load(cfg, seed)
    if isinstance(src, sources.Arrays):
        pick = slice(None, limit)
        if seed is not None:
            pick = np.random.RandomState(seed).permutation(len(src.x))[:limit]
        return image_lib.to_float(src.x[pick]), (None if src.y is None else src.y[pick].copy())
    if seed is not None and src.source.name == "images":
        order = np.random.RandomState(seed).permutation(len(src.files))
        src = replace(src, files=tuple(src.files[k] for k in order))
    shuffle = seed if src.source.name != "images" else None
    x, y = _decode(cfg, src, limit, shuffle)
    return image_lib.to_float(x), y


def decode_all(cfg, src: sources.Files) -> sources.Arrays:
    """Every example of a file source, decoded into memory (uint8 images, int32 labels)."""
    x, y = _decode(cfg, src, None, None)
    if not len(x):
        raise DataError(f"{cfg.source}: no decodable examples in {src.source.describe(cfg)}")
    return sources.Arrays(x, y)


def _decode(cfg, src: sources.Files, limit: Optional[int], shuffle_seed: Optional[int]):
    xs, ys = [], []
    with image_lib.private_session() as sess:
        ds = _file_examples(cfg, src, 1, 0, shuffle_seed=None)
        if shuffle_seed is not None:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=shuffle_seed)
        if limit is not None:
            ds = ds.take(limit)
        nxt = tf.compat.v1.data.make_one_shot_iterator(ds.batch(256).prefetch(AUTOTUNE)).get_next()
        for batch in image_lib.drain(sess, nxt):
            xs.append(batch[0] if src.labeled else batch)
            if src.labeled:
                ys.append(batch[1])
    x = np.concatenate(xs) if xs else np.zeros((0,) + src.shape, np.uint8)
    y = (np.concatenate(ys) if ys else np.zeros((0,), np.int32)) if src.labeled else None
    return x, y


# ------------------------------------------------------------------------ pipeline pieces


def _sharding(cfg, ctx) -> Tuple[int, int, int]:
    if ctx is None:
        return 1, 0, cfg.batch_size
    if cfg.batch_size % ctx.num_replicas_in_sync:
        raise DataError(f"data.batch_size {cfg.batch_size} is not divisible by the "
                        f"{ctx.num_replicas_in_sync} replicas in sync")
    return (ctx.num_input_pipelines, ctx.input_pipeline_id,
            ctx.get_per_replica_batch_size(cfg.batch_size))


def _check_one_batch(cfg, training, count, shards, shard_id, batch) -> None:
    in_shard = (count - shard_id + shards - 1) // shards
    if in_shard == 0 or (not training and in_shard < batch):
        raise DataError(f"{cfg.source}: {in_shard} examples in input pipeline {shard_id} of "
                        f"{shards} cannot fill one batch of {batch}")


def epoch_permutation(count: int, seed: int, epoch) -> tf.Tensor:
    """A permutation of range(count), a pure function of (seed, epoch)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.argsort(tf.random.stateless_uniform([count], seed=key), stable=True)


def _array_batches(cfg, src: sources.Arrays, training, seed, shards, shard_id, batch, start):
    count = len(src.x)
    _check_one_batch(cfg, training, count, shards, shard_id, batch)
    in_shard = (count - shard_id + shards - 1) // shards
    if training:
        first_epoch, offset = divmod(int(start), in_shard)
        positions = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(
            lambda e: tf.data.Dataset.from_tensor_slices(
                tf.cast(epoch_permutation(in_shard, seed, e), tf.int64))).skip(offset)
    else:
        positions = tf.data.Dataset.range(in_shard)
    x = image_lib.host_tensor(src.x)
    y = None if src.y is None else image_lib.host_tensor(src.y)

    def gather(position):
        index = position * shards + shard_id
        features = image_lib.scale_batch(tf.gather(x, index))
        return features if y is None else (features, tf.gather(y, index))

    return positions.batch(batch, drop_remainder=True).map(gather, num_parallel_calls=AUTOTUNE)


def _file_examples(cfg, src: sources.Files, shards, shard_id, shuffle_seed) -> tf.data.Dataset:
    """Single decoded examples (uint8 images, int32 labels) of this input pipeline's shard;
    the file order is reshuffled every epoch when `shuffle_seed` is given."""
    ds = src.source.shard_examples(cfg, src, shards, shard_id, shuffle_seed)
    if cfg.on_corrupt == "skip":
        ds = ds.ignore_errors()
    return ds


def _streamed_batches(cfg, src: sources.Files, training, seed, shards, shard_id, batch, start):
    if src.count_is_exact:
        _check_one_batch(cfg, training, src.count, shards, shard_id, batch)
    if training:
        shuffle_seed = int(np.random.RandomState([seed % 2 ** 32, start % 2 ** 32]).randint(2 ** 31 - 1))
        ds = _file_examples(cfg, src, shards, shard_id, shuffle_seed)
        ds = ds.shuffle(cfg.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    else:
        ds = _file_examples(cfg, src, shards, shard_id, None)
    return ds.batch(batch, drop_remainder=True).map(image_lib.scale_batch, num_parallel_calls=AUTOTUNE)


def _fits_in_memory(examples: int, shape) -> bool:
    return examples * int(np.prod(shape)) <= memory.available().bytes // 4

"""The one tf.data input pipeline that feeds both GAN networks, for every data source.

`make_input_fn(cfg)` loads and validates the data once (so a bad file fails before training
starts, with a one-line `DataError` that names it) and returns an `input_fn(input_context=None)`
for `Estimator.train/evaluate`. It can be called any number of times, eagerly or inside a graph.

What a caller must know:

* Elements are `(features, labels)` when the source has labels (digits, mnist, mixture2d, npy
  with labels, tfrecord whose first record has `label_key`), else just `features`.
  `features` is float32 `[B, *sample_shape(cfg)]`: images in [-1, 1], mixture points as raw
  coordinates. `labels` is int32 `[B]`. Batches always have a static size
  (`drop_remainder=True`): a training pass repeats forever; an evaluation pass is one
  unshuffled epoch that drops the last partial batch.
* `data.batch_size` is the global batch. Given an `input_context`, each input pipeline reads
  its own shard and yields per-replica batches.
* Images of every source are converted to `channels`, center-cropped to a square and resized
  (bilinear, antialiased) to `image_size` when their size differs from `sample_shape(cfg)`.
* In-memory sources (digits, mixture2d, mnist, npy) are never baked into the graph as
  constants (that would copy the whole data set into every checkpoint's meta graph): the
  pipeline shuffles indices and gathers each batch from host memory with `tf.numpy_function`
  (so it runs in the Python process that built it; it cannot be serialized). They need no
  `cache()`; the `cache` option applies to the decoded images of file sources
  (images, tfrecord), kept as uint8 when training and when they fit in a quarter of the RAM.
* Image files are checked with PIL before training (`on_corrupt`: fail with the file's name,
  or skip it). A TFRecord source is checked on its first record only; a later undecodable
  record stops the pipeline with a TensorFlow error ('fail') or is dropped ('skip').
* `sample_shape` and `num_classes` read no data files, except the header (and labels file)
  of an npy source, so they also work where the data is absent, e.g. at export time.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import io
import os
import re
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError as ProtobufDecodeError
from PIL import Image

from estimator_gan.config import DataConfig

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords")
_DEFAULT_SIZE = {"digits": 16, "mnist": 28, "images": 64, "tfrecord": 64}
_TF_DECODABLE = {"PNG", "JPEG", "GIF", "BMP"}
_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_MNIST_IMAGES_RE = re.compile(r"^(?P<stem>.+)-images(?P<sep>[-.])idx3-ubyte(?:\.gz)?$")
_CHUNK = 2048


class DataError(ValueError):
    """A bad-input problem; the message is one line naming the file or setting at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class _Arrays:
    """An in-memory source. `x` is uint8 (0..255, scaled on the way out) or final float32."""

    x: np.ndarray
    y: Optional[np.ndarray]


@dataclass(frozen=True)
class _Files:
    """A file source decoded in the pipeline: image files or TFRecord files."""

    source: str
    files: Tuple[str, ...]
    shape: Tuple[int, int, int]
    labeled: bool
    count: int
    count_is_exact: bool  # tfrecord: estimated from file sizes, for the cache decision only


# ---------------------------------------------------------------------------- public API


def sample_shape(cfg: DataConfig) -> Tuple[int, ...]:
    """The shape of one example, from the config (npy: from the array header)."""
    if cfg.source == "mixture2d":
        return (2,)
    if cfg.source == "npy":
        path, key = _npy_location(cfg)
        shape, _ = _npy_header(path, key)
        if _npy_kind(path, shape) == "points":
            return (2,)
        h, w = shape[1:3]
        if cfg.image_size:
            h = w = cfg.image_size
        return (h, w, cfg.channels or (shape[3] if len(shape) == 4 else 1))
    size = cfg.image_size or _DEFAULT_SIZE[cfg.source]
    return (size, size, cfg.channels or (3 if cfg.source in ("images", "tfrecord") else 1))


def num_classes(cfg: DataConfig) -> Optional[int]:
    """Number of label values (labels are 0..n-1), or None when unknown or unlabeled.

    digits and mnist: always 10 (an mnist source without labels files just yields no labels).
    """
    if cfg.source in ("digits", "mnist"):
        return 10
    if cfg.source == "mixture2d":
        return cfg.mixture.modes
    if cfg.source == "npy":
        path, key = _npy_location(cfg)
        shape, _ = _npy_header(path, key)
        labels = _npy_labels(cfg, path, key, shape[0])
        return int(labels.max()) + 1 if labels is not None and len(labels) else None
    return None


def make_input_fn(cfg: DataConfig, training: bool = True,
                  seed: Optional[int] = None) -> Callable[..., tf.data.Dataset]:
    """Load and validate the data now; return `input_fn(input_context=None)` for an Estimator.

    `cfg` is a config's `data` section (`config.data`).

    `seed` seeds shuffling and the mixture2d generator (which uses 0 when it is None).
    """
    cfg = cfg.model_copy(deep=True)
    src = _load(cfg, seed)

    def input_fn(input_context=None) -> tf.data.Dataset:
        shards, shard_id, batch = _sharding(cfg, input_context)
        if isinstance(src, _Arrays):
            count = len(src.x)
            _check_one_batch(cfg, training, count, shards, shard_id, batch)
            ds = tf.data.Dataset.range(count).shard(shards, shard_id)
            ds = _shuffle_repeat_batch(ds, cfg, training, seed, batch, count)
            ds = ds.map(_gather_fn(src, batch), num_parallel_calls=AUTOTUNE)
        else:
            if src.count_is_exact:
                _check_one_batch(cfg, training, src.count, shards, shard_id, batch)
            ds = _file_examples(src, cfg, shards, shard_id, shuffle_files=training, seed=seed)
            if cfg.cache and training and _cache_fits(src.count // shards, src.shape):
                ds = ds.cache()
            ds = _shuffle_repeat_batch(ds, cfg, training, seed, batch)
            ds = ds.map(_scale_batch, num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    return input_fn


def load_examples(cfg: DataConfig, limit: Optional[int] = None,
                  seed: Optional[int] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The real examples as numpy `(features, labels or None)`, scaled like the pipeline.

    In source order, or a seeded permutation when `seed` is given (tfrecord: a seeded shuffle
    with `shuffle_buffer`); at most `limit` of them.
    """
    src = _load(cfg, seed)
    if isinstance(src, _Arrays):
        pick = slice(None, limit)
        if seed is not None:
            pick = np.random.RandomState(seed).permutation(len(src.x))[:limit]
        return _to_float(src.x[pick]), (None if src.y is None else src.y[pick].copy())

    if seed is not None and src.source == "images":
        order = np.random.RandomState(seed).permutation(len(src.files))
        src = replace(src, files=tuple(src.files[k] for k in order))
    xs, ys = [], []
    with _private_session() as sess:
        ds = _file_examples(src, cfg, 1, 0, shuffle_files=False, seed=None)
        if seed is not None and src.source == "tfrecord":
            ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
        if limit is not None:
            ds = ds.take(limit)
        nxt = tf.compat.v1.data.make_one_shot_iterator(
            ds.batch(256).map(_scale_batch).prefetch(AUTOTUNE)).get_next()
        for batch in _drain(sess, nxt):
            xs.append(batch[0] if src.labeled else batch)
            if src.labeled:
                ys.append(batch[1])
    x = np.concatenate(xs) if xs else np.zeros((0,) + src.shape, np.float32)
    y = (np.concatenate(ys) if ys else np.zeros((0,), np.int32)) if src.labeled else None
    return x, y


# ------------------------------------------------------------------------ pipeline pieces


def _sharding(cfg: DataConfig, ctx) -> Tuple[int, int, int]:
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


def _shuffle_repeat_batch(ds, cfg, training, seed, batch, count=None) -> tf.data.Dataset:
    if training:
        buffer = cfg.shuffle_buffer if count is None else max(1, min(cfg.shuffle_buffer, count))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.batch(batch, drop_remainder=True)


def _gather_fn(src: _Arrays, batch: int):
    shape = [batch] + list(src.x.shape[1:])

    def take(idx):
        x = _to_float(src.x[idx])
        return x if src.y is None else (x, src.y[idx])

    def gather(idx):
        if src.y is None:
            x = tf.numpy_function(take, [idx], tf.float32, stateful=False)
            x.set_shape(shape)
            return x
        x, y = tf.numpy_function(take, [idx], [tf.float32, tf.int32], stateful=False)
        x.set_shape(shape)
        y.set_shape([batch])
        return x, y

    return gather


def _file_examples(src: _Files, cfg, shards, shard_id, shuffle_files, seed) -> tf.data.Dataset:
    """Single decoded examples (uint8 images, int32 labels) of this input pipeline's shard."""
    size, _, channels = src.shape
    files = tf.data.Dataset.from_tensor_slices(list(src.files))
    shard_files = src.source == "images" or len(src.files) >= shards
    if shard_files:
        files = files.shard(shards, shard_id)
    if shuffle_files and shard_files:  # record-level shards need the same file order everywhere
        files = files.shuffle(len(src.files), seed=seed, reshuffle_each_iteration=True)
    if src.source == "images":
        ds = files.map(lambda p: _decode_image(tf.io.read_file(p), size, channels),
                       num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=AUTOTUNE)
        if not shard_files:
            ds = ds.shard(shards, shard_id)
        spec = {cfg.image_key: tf.io.FixedLenFeature([], tf.string)}
        if src.labeled:
            spec[cfg.label_key] = tf.io.FixedLenFeature([], tf.int64)

        def decode(record):
            ex = tf.io.parse_single_example(record, spec)
            image = _decode_image(ex[cfg.image_key], size, channels)
            return (image, tf.cast(ex[cfg.label_key], tf.int32)) if src.labeled else image

        ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
    if cfg.on_corrupt == "skip":
        ds = ds.ignore_errors()
    return ds


def _decode_image(encoded, size: int, channels: int):
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False,
                               dtype=tf.uint8)
    image.set_shape([None, None, channels])
    image = _square_resize(tf.cast(image, tf.float32), size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _square_resize(images, size: int):
    """Center-crop float images ([H, W, C] or [N, H, W, C]) to a square, resize to `size`."""
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    side = tf.minimum(h, w)
    images = tf.image.crop_to_bounding_box(images, (h - side) // 2, (w - side) // 2, side, side)
    return tf.image.resize(images, [size, size], antialias=True)


def _scale_batch(x, y=None):
    x = tf.cast(x, tf.float32) / 127.5 - 1.0
    return x if y is None else (x, y)


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.array(x, dtype=np.float32)


def _cache_fits(examples: int, shape) -> bool:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 8 << 30
    return examples * int(np.prod(shape)) <= ram // 4


@contextlib.contextmanager
def _private_session() -> Iterator[tf.compat.v1.Session]:
    """A session on a fresh graph: runs TF ops the same way whether or not we are eager."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        yield sess


def _drain(sess, fetch) -> Iterator:
    while True:
        try:
            yield sess.run(fetch)
        except tf.errors.OutOfRangeError:
            return


# ---------------------------------------------------------------------- in-memory images


def _fit_images(x: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """[N, H, W, C] uint8 or float32 images to `shape` (channels, then crop+resize)."""
    channels = shape[2]
    if x.shape[3] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=3)
    elif x.shape[3] == 3 and channels == 1:
        grey = x.astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        x = _like(x, grey[..., None])
    if x.shape[1:3] != shape[:2]:
        out = []
        with _private_session() as sess:
            images = tf.compat.v1.placeholder(tf.float32, (None,) + x.shape[1:])
            resized = _square_resize(images, shape[0])
            for start in range(0, len(x), _CHUNK):
                chunk = x[start:start + _CHUNK].astype(np.float32)
                out.append(_like(x, sess.run(resized, {images: chunk})))
        x = np.concatenate(out) if out else np.zeros((0,) + tuple(shape), x.dtype)
    return x


def _like(original: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Float results back to the dtype convention of `original`."""
    if original.dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.clip(values, -1.0, 1.0).astype(np.float32)


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


# ----------------------------------------------------------------------------- loaders


def _load(cfg: DataConfig, seed: Optional[int]) -> Union[_Arrays, _Files]:
    src = _LOADERS[cfg.source](cfg, seed)
    return src if cfg.split is None else _split(cfg, src)


def _split_indices(cfg: DataConfig, count: int) -> np.ndarray:
    """The indices (in source order) of the part of `count` examples that `cfg.split` selects."""
    split = cfg.split
    order = np.random.RandomState(split.seed).permutation(count)
    cut = int(round(split.fraction * count))
    picked = np.sort(order[:cut] if split.part == "first" else order[cut:])
    if not len(picked):
        raise DataError(f"{cfg.source}: data.split part '{split.part}' of {count} examples "
                        f"with fraction {split.fraction} is empty")
    return picked


def _split(cfg: DataConfig, src: Union[_Arrays, _Files]) -> Union[_Arrays, _Files]:
    if isinstance(src, _Arrays):
        picked = _split_indices(cfg, len(src.x))
        return _Arrays(src.x[picked], None if src.y is None else src.y[picked])
    if src.source != "images":
        raise DataError(f"data.split is not supported for source '{src.source}'; "
                        "split the record files instead")
    files = tuple(src.files[k] for k in _split_indices(cfg, len(src.files)))
    return replace(src, files=files, approx_count=len(files))


def _require_path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"data.path is required for source '{cfg.source}'")
    path = os.path.expanduser(cfg.path)
    is_glob = cfg.source == "tfrecord" and any(c in path for c in "*?[")
    if not os.path.exists(path) and not is_glob:
        raise DataError(f"{cfg.source}: {path} does not exist")
    return path


def _load_digits(cfg: DataConfig, seed) -> _Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    return _Arrays(_fit_images(x, sample_shape(cfg)), digits.target.astype(np.int32))


def _load_mixture(cfg: DataConfig, seed) -> _Arrays:
    m = cfg.mixture
    rng = np.random.RandomState(0 if seed is None else seed)
    modes = rng.randint(m.modes, size=m.num_examples)
    points = np.asarray(m.centres())[modes] + rng.normal(0.0, m.std, (m.num_examples, 2))
    return _Arrays(points.astype(np.float32), modes.astype(np.int32))


def _load_mnist(cfg: DataConfig, seed) -> _Arrays:
    path = _require_path(cfg)
    parts = _mnist_parts(path)
    labeled = [y is not None for _, y, _ in parts]
    if any(labeled) and not all(labeled):
        missing = parts[labeled.index(False)][2]
        raise DataError(f"mnist: {missing} has no labels file beside it (others do)")
    for x, y, where in parts:
        if x.ndim != 3:
            raise DataError(f"mnist: {where} holds shape {x.shape}; expected (N, H, W)")
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            raise DataError(f"mnist: {where} has {len(x)} images but {y.size} labels")
        if y is not None and len(y) and not 0 <= int(y.min()) <= int(y.max()) <= 9:
            raise DataError(f"mnist: labels of {where} span {int(y.min())}..{int(y.max())}; "
                            f"expected 0..9")
    x = np.concatenate([np.asarray(p[0], np.uint8) for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int32) if all(labeled) else None
    if not len(x):
        raise DataError(f"mnist: {path} holds no images")
    return _Arrays(_fit_images(x[..., None], sample_shape(cfg)), y)


def _mnist_parts(path: str) -> List[Tuple[np.ndarray, Optional[np.ndarray], str]]:
    """(images, labels or None, description) for each train/test part found at `path`."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        images = {}
        for name in names:
            m = _MNIST_IMAGES_RE.match(name)
            if m and os.path.isfile(os.path.join(path, name)):
                images.setdefault(name[:-3] if name.endswith(".gz") else name, name)
        if not images:
            if "mnist.npz" in names:
                return _mnist_npz(os.path.join(path, "mnist.npz"))
            raise DataError(f"mnist: no *-images-idx3-ubyte[.gz] files or mnist.npz in {path}")
        order = sorted(images, key=lambda n: (not n.startswith("train"), n))
        return [_mnist_idx_pair(os.path.join(path, images[n])) for n in order]
    if not os.path.isfile(path):
        raise DataError(f"mnist: {path} is neither a file nor a directory")
    if path.endswith(".npz"):
        return _mnist_npz(path)
    return [_mnist_idx_pair(path)]


def _mnist_idx_pair(images_path: str):
    folder, name = os.path.split(images_path)
    m = _MNIST_IMAGES_RE.match(name)
    labels = None
    if m:
        stem = f"{m['stem']}-labels{m['sep']}idx1-ubyte"
        for candidate in (stem, stem + ".gz"):
            if os.path.isfile(os.path.join(folder, candidate)):
                labels = _read_idx(os.path.join(folder, candidate), _IDX_LABELS)
                break
    return _read_idx(images_path, _IDX_IMAGES), labels, images_path


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"mnist: cannot read {path} ({err})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"mnist: {path} is too short for an IDX header ({len(data)} bytes)")
    found = struct.unpack(">i", data[:4])[0]
    if found != magic:
        raise DataError(f"mnist: {path} has magic {found}, expected {magic}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"mnist: {path} holds {len(data) - header} data bytes; its header "
                        f"{dims} needs {int(np.prod(dims))}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _mnist_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"mnist: cannot read {path} ({str(err).splitlines()[0]})") from None
    parts = []
    for split in ("train", "test"):
        if f"x_{split}" in arrays:
            y = arrays.get(f"y_{split}")
            parts.append((arrays[f"x_{split}"], None if y is None else y.astype(np.int64),
                          f"{path}[x_{split}]"))
    if not parts:
        raise DataError(f"mnist: {path} has keys {sorted(arrays)}; expected x_train/y_train "
                        f"and/or x_test/y_test")
    return parts


def _load_images(cfg: DataConfig, seed) -> _Files:
    root = _require_path(cfg)
    if not os.path.isdir(root):
        raise DataError(f"images: {root} is not a directory")
    def unreadable(err: OSError):
        raise DataError(f"images: cannot read folder {err.filename} ({err.strerror})")

    files = sorted(
        os.path.join(d, name) for d, _, names in os.walk(root, onerror=unreadable) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"images: no PNG/JPEG files in {root}")
    good, bad = [], []
    for f in files:
        problem = _image_problem(f)
        if problem is None:
            good.append(f)
        elif cfg.on_corrupt == "fail":
            raise DataError(f"images: cannot decode {f} ({problem})")
        else:
            bad.append(f)
    if bad:
        print(f"images: skipped {len(bad)} undecodable files (first: {bad[0]})", file=sys.stderr)
    if not good:
        raise DataError(f"images: no decodable PNG/JPEG files in {root} ({len(bad)} skipped)")
    return _Files("images", tuple(good), sample_shape(cfg), False, len(good), True)


def _image_problem(source) -> Optional[str]:
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
    if fmt not in _TF_DECODABLE:
        return f"unsupported format {fmt}"
    return None


def _load_tfrecord(cfg: DataConfig, seed) -> _Files:
    path = _require_path(cfg)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.lower().endswith(TFRECORD_EXTENSIONS))
        if not files:
            raise DataError(f"tfrecord: no *.tfrecord/*.tfrecords files in {path}")
    elif os.path.isfile(path):
        files = [path]
    else:
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise DataError(f"tfrecord: no files match {path}")
    where, record = _first_record(files, path)
    try:
        features = tf.train.Example.FromString(record).features.feature
    except ProtobufDecodeError as err:
        raise DataError(f"tfrecord: first record of {where} is not a tf.train.Example "
                        f"({err})") from None
    if cfg.image_key not in features or not features[cfg.image_key].bytes_list.value:
        raise DataError(f"tfrecord: {where} has no feature '{cfg.image_key}'")
    problem = _image_problem(io.BytesIO(features[cfg.image_key].bytes_list.value[0]))
    if problem and cfg.on_corrupt == "fail":
        raise DataError(f"tfrecord: cannot decode the first image in {where} ({problem})")
    labeled = bool(cfg.label_key and cfg.label_key in features
                   and features[cfg.label_key].int64_list.value)
    total = sum(os.path.getsize(f) for f in files)
    return _Files("tfrecord", tuple(files), sample_shape(cfg), labeled,
                  max(1, total // (len(record) + 16)), False)


def _first_record(files: List[str], path: str) -> Tuple[str, bytes]:
    with _private_session() as sess:
        name = tf.compat.v1.placeholder(tf.string, [])
        it = tf.compat.v1.data.make_initializable_iterator(tf.data.TFRecordDataset(name).take(1))
        nxt = it.get_next()
        for f in files:
            try:
                sess.run(it.initializer, {name: f})
                return f, sess.run(nxt)
            except tf.errors.OutOfRangeError:
                continue
            except tf.errors.OpError as err:
                raise DataError(f"tfrecord: cannot read {f} ({err.message})") from None
    raise DataError(f"tfrecord: no records in {path}")


def _load_npy(cfg: DataConfig, seed) -> _Arrays:
    path, key = _npy_location(cfg)
    try:
        x = np.load(path, allow_pickle=False) if key is None else _npz_member(path, key)
    except (OSError, ValueError) as err:
        raise DataError(f"npy: cannot read {path} ({str(err).splitlines()[0]})") from None
    kind = _npy_kind(path, x.shape)
    if len(x) == 0:
        raise DataError(f"npy: {path} holds no examples")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)
            or (kind == "points" and np.issubdtype(x.dtype, np.integer))):
        raise DataError(f"npy: {path} holds {x.dtype} data; expected uint8 (0..255) or floats")
    if kind == "points":
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"npy: {path} holds non-finite points")
    else:
        if x.dtype != np.uint8:
            lo, hi = float(x.min()), float(x.max())
            if not (lo >= -1.0 and hi <= 1.0):
                raise DataError(f"npy: {path} holds floats in [{lo:g}, {hi:g}]; expected "
                                f"[-1, 1] (or uint8 0..255)")
            x = x.astype(np.float32)
        x = _fit_images(_to_nhwc(x), sample_shape(cfg))
    return _Arrays(x, _npy_labels(cfg, path, key, len(x)))


def _npy_location(cfg: DataConfig) -> Tuple[str, Optional[str]]:
    """(path, key of the data array in an .npz, or None for an .npy)."""
    path = _require_path(cfg)
    if not os.path.isfile(path):
        raise DataError(f"npy: {path} is not a file")
    if not path.lower().endswith(".npz"):
        return path, None
    try:
        with zipfile.ZipFile(path) as z:
            keys = sorted(n[:-4] for n in z.namelist() if n.endswith(".npy"))
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"npy: cannot read {path} ({err})") from None
    if len(keys) == 1:
        return path, keys[0]
    if "x" in keys:
        return path, "x"
    raise DataError(f"npy: {path} holds arrays {keys}; expected a single array or keys x (and y)")


def _npy_header(path: str, key: Optional[str]) -> Tuple[Tuple[int, ...], np.dtype]:
    try:
        if key is None:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return array.shape, array.dtype
        with zipfile.ZipFile(path) as z, z.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            return shape, dtype
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"npy: cannot read {path} ({str(err).splitlines()[0]})") from None


def _npy_kind(path: str, shape: Tuple[int, ...]) -> str:
    if len(shape) == 2 and shape[1] == 2:
        return "points"
    if len(shape) == 4 and shape[3] not in (1, 3):
        raise DataError(f"npy: {path} holds shape {shape}; images need 1 or 3 channels")
    if len(shape) in (3, 4):
        return "images"
    raise DataError(f"npy: {path} holds shape {shape}; expected (N, 2), (N, H, W) or "
                    f"(N, H, W, C)")


def _npy_labels(cfg: DataConfig, path: str, key: Optional[str],
                count: int) -> Optional[np.ndarray]:
    """The labels of an npy source: from labels_path, else an .npz's `y`, else None."""
    if cfg.labels_path is None and key != "x":
        return None
    where = f"{path}[y]" if cfg.labels_path is None else os.path.expanduser(cfg.labels_path)
    if cfg.labels_path is not None and not os.path.isfile(where):
        raise DataError(f"npy: labels file {where} does not exist")
    try:
        if cfg.labels_path is None:
            y = _npz_member(path, "y")
        else:
            y = np.load(where, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"npy: cannot read {where} ({str(err).splitlines()[0]})") from None
    return None if y is None else _check_labels(y, where, path, count)


def _npz_member(path: str, name: str) -> Optional[np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return npz[name] if name in npz.files else None


def _check_labels(y: np.ndarray, where: str, data_path: str, count: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npy: {where} holds {y.dtype} shape {y.shape}; expected 1-D integers")
    if len(y) != count:
        raise DataError(f"npy: {where} holds {len(y)} labels; {data_path} has {count} examples")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"npy: {where} holds negative label {int(y.min())}")
    return np.asarray(y, np.int32)


_LOADERS = {
    "digits": _load_digits,
    "mixture2d": _load_mixture,
    "mnist": _load_mnist,
    "images": _load_images,
    "tfrecord": _load_tfrecord,
    "npy": _load_npy,
}

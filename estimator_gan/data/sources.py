"""Data sources: where real examples come from, one class per source, registered by name.

`data.source` in a config names one of them. A source says what one example looks like
(`sample_shape`, without reading the data), how many classes its labels have (`num_classes`)
and how to load and check the data (`load`), which returns either

* `Arrays` — every example in memory (uint8 images, or float32 points), with labels or None; or
* `Files` — examples the input pipeline reads and decodes as it goes: files (`examples` turns
  a dataset of file names into uint8 images, or (image, label) pairs), or another stream that a
  source reads itself (`shard_examples`, e.g. a TensorFlow Datasets split).

Adding a source is one class in this file: subclass `Source`, set `name` (the `data.source`
value) and `summary` (one line for the docs), implement `load` (and `sample_shape` /
`num_classes` where the defaults do not fit), and decorate it with `@register`. Everything else
(the config's check of `data.source`, `data.split`, sharding, batching, exact resume, the
input_fn builders' generic form) works for it unchanged. Problems are `DataError`s whose one-line
message names the file or setting at fault.
"""
from __future__ import annotations

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
from typing import ClassVar, Dict, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError as ProtobufDecodeError

from estimator_gan.data import images as image_lib
from estimator_gan.errors import DataError, op_error_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords")


@dataclass(frozen=True)
class Arrays:
    """An in-memory source. `x` is uint8 images (0..255, scaled on the way out) or float32."""

    x: np.ndarray
    y: Optional[np.ndarray]


@dataclass(frozen=True)
class Files:
    """Files the pipeline decodes; `count` is exact for images, estimated for tfrecord.
    `skipped`: files left out as undecodable (`on_corrupt: skip`), for the pipeline's note."""

    source: "Source"
    files: Tuple[str, ...]
    shape: Tuple[int, ...]
    labeled: bool
    count: int
    count_is_exact: bool
    skipped: Tuple[str, ...] = ()


Loaded = Union[Arrays, Files]


class Source:
    """One kind of data (see the module docstring). Instances hold no state."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_image_size: ClassVar[Optional[int]] = None
    default_channels: ClassVar[int] = 1

    def sample_shape(self, cfg) -> Tuple[int, ...]:
        """The shape of one example, from the config alone."""
        size = cfg.image_size or self.default_image_size
        return (size, size, cfg.channels or self.default_channels)

    def num_classes(self, cfg) -> Optional[int]:
        """Number of label values (labels are 0..n-1), or None when unlabelled or unknown."""
        return None

    def load(self, cfg, seed: Optional[int]) -> Loaded:
        raise NotImplementedError

    def examples(self, cfg, src: Files, files: tf.data.Dataset) -> tf.data.Dataset:
        """`Files` sources: file names -> decoded uint8 examples (or (image, label) pairs)."""
        raise NotImplementedError

    def shard_examples(self, cfg, src: Files, shards: int, shard_id: int,
                       shuffle_seed: Optional[int]) -> tf.data.Dataset:
        """`Files` sources: the decoded examples of input pipeline `shard_id` of `shards`, in
        one pass; the file order is reshuffled every pass when `shuffle_seed` is given.

        Files are sharded when there are enough of them (always for image folders), else the
        records (every pipeline then reads every file, in one order, and keeps its share)."""
        files = tf.data.Dataset.from_tensor_slices(list(src.files))
        shard_files = self.name == "images" or len(src.files) >= shards
        if shard_files:
            files = files.shard(shards, shard_id)
        if shuffle_seed is not None and shard_files:  # record-level shards need one file order
            files = files.shuffle(len(src.files), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = self.examples(cfg, src, files)
        return ds if shard_files else ds.shard(shards, shard_id)

    def describe(self, cfg) -> str:
        """Where the data of `cfg` is, for messages."""
        return str(cfg.path)

    def split(self, cfg, src: Loaded) -> Loaded:
        """The part of `src` that `cfg.split` selects (examples, or image files)."""
        if isinstance(src, Arrays):
            picked = split_indices(cfg, len(src.x))
            return Arrays(src.x[picked], None if src.y is None else src.y[picked])
        raise DataError(f"data.split is not supported for source '{self.name}'; split the files instead")


_REGISTRY: Dict[str, Source] = {}


def register(cls):
    """Class decorator: make a `Source` subclass available as `data.source: <cls.name>`."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"a data source needs a new name, got {cls.name!r}")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> List[str]:
    return list(_REGISTRY)


def get(name: str) -> Source:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown data source {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def sample_shape(cfg) -> Tuple[int, ...]:
    """The shape of one example of `cfg` (a config's `data` section)."""
    return tuple(get(cfg.source).sample_shape(cfg))


def num_classes(cfg) -> Optional[int]:
    """The class count of the labels `cfg`'s input pipeline gives (`data.clusters.count` when
    set), where known without reading all the data."""
    return cfg.clusters.count or get(cfg.source).num_classes(cfg)


def load(cfg, seed: Optional[int] = None) -> Loaded:
    """Load and check the data of `cfg`, then apply `cfg.split`."""
    source = get(cfg.source)
    src = source.load(cfg, seed)
    return src if cfg.split is None else source.split(cfg, src)


def split_indices(cfg, count: int) -> np.ndarray:
    """The indices (in source order) of the part of `count` examples that `cfg.split` selects."""
    split = cfg.split
    order = np.random.RandomState(split.seed).permutation(count)
    cut = int(round(split.fraction * count))
    picked = np.sort(order[:cut] if split.part == "first" else order[cut:])
    if not len(picked):
        raise DataError(f"{cfg.source}: data.split part '{split.part}' of {count} examples "
                        f"with fraction {split.fraction} is empty")
    return picked


def require_path(cfg) -> str:
    if not cfg.path:
        raise DataError(f"data.path is required for source '{cfg.source}'")
    path = os.path.expanduser(cfg.path)
    is_glob = cfg.source == "tfrecord" and any(c in path for c in "*?[")
    if not os.path.exists(path) and not is_glob:
        raise DataError(f"{cfg.source}: {path} does not exist")
    return path


# ----------------------------------------------------------------------------- sources


@register
class Digits(Source):
    name = "digits"
    summary = "scikit-learn's bundled 8x8 digits (no download), upsampled to `image_size` (16); labels"
    default_image_size = 16

    def num_classes(self, cfg) -> Optional[int]:
        return 10

    def load(self, cfg, seed) -> Arrays:
        from sklearn.datasets import load_digits  # scikit-learn loads slowly; only this source needs it

        digits = load_digits()
        x = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
        return Arrays(image_lib.fit_images(x, self.sample_shape(cfg)), digits.target.astype(np.int32))


@register
class Mixture2D(Source):
    name = "mixture2d"
    summary = "a ring or grid of 2D Gaussians (`data.mixture`), generated; label = mode"

    def sample_shape(self, cfg) -> Tuple[int, ...]:
        return (2,)

    def num_classes(self, cfg) -> Optional[int]:
        return len(cfg.mixture.centres())

    def load(self, cfg, seed) -> Arrays:
        m = cfg.mixture
        centres = np.asarray(m.centres())
        rng = np.random.RandomState(0 if seed is None else seed)
        modes = rng.randint(len(centres), size=m.num_examples)
        points = centres[modes] + rng.normal(0.0, m.std, (m.num_examples, 2))
        return Arrays(points.astype(np.float32), modes.astype(np.int32))


_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_MNIST_IMAGES_RE = re.compile(r"^(?P<stem>.+)-images(?P<sep>[-.])idx3-ubyte(?:\.gz)?$")


@register
class Mnist(Source):
    name = "mnist"
    summary = "MNIST-format files: a folder of IDX files (`.gz` or not), one IDX images file, or `mnist.npz`; labels"
    default_image_size = 28

    def num_classes(self, cfg) -> Optional[int]:
        return 10

    def load(self, cfg, seed) -> Arrays:
        path = require_path(cfg) if cfg.path else keras_mnist_cache()
        parts = self._parts(path)
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
        return Arrays(image_lib.fit_images(x[..., None], self.sample_shape(cfg)), y)

    def _parts(self, path: str) -> List[Tuple[np.ndarray, Optional[np.ndarray], str]]:
        """(images, labels or None, description) for each train/test part found at `path`."""
        if os.path.isdir(path):
            names_here = sorted(os.listdir(path))
            found = {}
            for name in names_here:
                m = _MNIST_IMAGES_RE.match(name)
                if m and os.path.isfile(os.path.join(path, name)):
                    found.setdefault(name[:-3] if name.endswith(".gz") else name, name)
            if not found:
                if "mnist.npz" in names_here:
                    return self._npz(os.path.join(path, "mnist.npz"))
                raise DataError(f"mnist: no *-images-idx3-ubyte[.gz] files or mnist.npz in {path}")
            order = sorted(found, key=lambda n: (not n.startswith("train"), n))
            return [self._idx_pair(os.path.join(path, found[n])) for n in order]
        if not os.path.isfile(path):
            raise DataError(f"mnist: {path} is neither a file nor a directory")
        if path.endswith(".npz"):
            return self._npz(path)
        return [self._idx_pair(path)]

    def _idx_pair(self, images_path: str):
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

    def _npz(self, path: str):
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


def keras_mnist_cache() -> str:
    """Where Keras keeps MNIST (`$KERAS_HOME` or `~/.keras`, then `datasets/mnist.npz`),
    fetched there once by Keras' own loader when it is missing; `DataError` when that fails
    (offline), naming the file and the alternative (`data.path`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "datasets", "mnist.npz")
    if not os.path.isfile(path):
        print(f"mnist: data.path is not set; fetching MNIST into {path} (once)", file=sys.stderr)
        try:
            tf.keras.datasets.mnist.load_data()
        except Exception as err:  # noqa: BLE001 - any failure to fetch means the same to a user
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"mnist: data.path is not set and {path} could not be fetched "
                            f"({reason}); put mnist.npz there or set data.path to a folder of "
                            f"MNIST IDX files or an mnist.npz") from None
        if not os.path.isfile(path):
            raise DataError(f"mnist: fetching MNIST did not leave {path}; set data.path")
    return path


def stack_digits(x: np.ndarray, y: Optional[np.ndarray], count: int,
                 seed: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Stacked MNIST from single-channel digits `x` [N, H, W, 1] (labels `y` [N] or None):
    `count` images [count, H, W, 3], each three digits drawn independently and uniformly with
    a RandomState(seed) as R, G, B, and the mode ids 100 r + 10 g + b (None without labels)."""
    picks = np.random.RandomState(seed).randint(len(x), size=(count, 3))
    stacks = np.concatenate([x[picks[:, c]] for c in range(3)], axis=-1)
    modes = None if y is None else (100 * y[picks[:, 0]] + 10 * y[picks[:, 1]]
                                    + y[picks[:, 2]]).astype(np.int32)
    return stacks, modes


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


@register
class StackedMnist(Source):
    name = "stacked_mnist"
    summary = ("Stacked MNIST (VEEGAN, PacGAN): three MNIST digits as R, G, B, 28x28x3, from the "
               "`mnist` source's files; 1,000 modes; label = 100 r + 10 g + b (`data.stacked`)")
    default_image_size = 28
    default_channels = 3

    def sample_shape(self, cfg) -> Tuple[int, ...]:
        size = cfg.image_size or self.default_image_size
        return (size, size, 3)

    def num_classes(self, cfg) -> Optional[int]:
        return 1000

    def load(self, cfg, seed) -> Arrays:
        if cfg.channels not in (None, 3):
            raise DataError(f"stacked_mnist: images have 3 channels, data.channels is {cfg.channels}")
        digits = Mnist().load(cfg.model_copy(update={"channels": 1}), seed)
        if cfg.split is not None:
            picked = split_indices(cfg, len(digits.x))
            digits = Arrays(digits.x[picked], None if digits.y is None else digits.y[picked])
        x, y = stack_digits(digits.x, digits.y, cfg.stacked.num_examples, cfg.stacked.seed)
        return Arrays(x, y)

    def split(self, cfg, src: Loaded) -> Loaded:
        """`data.split` divides the digits, before they are stacked (in `load`)."""
        return src


@register
class ImageFolder(Source):
    name = "images"
    summary = "a folder of PNG/JPEG files (recursive), center-cropped and resized to `image_size` (64), `channels` (3)"
    default_image_size = 64
    default_channels = 3

    def load(self, cfg, seed) -> Files:
        root = require_path(cfg)
        if not os.path.isdir(root):
            raise DataError(f"images: {root} is not a directory")

        def unreadable(err: OSError):
            raise DataError(f"images: cannot read folder {err.filename} ({err.strerror})")

        files = sorted(
            os.path.join(d, name) for d, _, names_here in os.walk(root, onerror=unreadable)
            for name in names_here if name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"images: no PNG/JPEG files in {root}")
        good, bad = [], []
        for f in files:
            problem = image_lib.image_problem(f)
            if problem is None:
                good.append(f)
            elif cfg.on_corrupt == "fail":
                raise DataError(f"images: cannot decode {f} ({problem})")
            else:
                bad.append(f)
        if not good:
            raise DataError(f"images: no decodable PNG/JPEG files in {root} ({len(bad)} skipped)")
        return Files(self, tuple(good), self.sample_shape(cfg), False, len(good), True, tuple(bad))

    def examples(self, cfg, src: Files, files: tf.data.Dataset) -> tf.data.Dataset:
        size, _, channels = src.shape
        return files.map(lambda p: image_lib.decode_image(tf.io.read_file(p), size, channels),
                         num_parallel_calls=tf.data.AUTOTUNE)

    def split(self, cfg, src: Loaded) -> Loaded:
        files = tuple(src.files[k] for k in split_indices(cfg, len(src.files)))
        return replace(src, files=files, count=len(files))


@register
class TFRecords(Source):
    name = "tfrecord"
    summary = ("a file, glob or folder of `tf.train.Example` records: the encoded image at "
               "`image_key`, an optional int label at `label_key`")
    default_image_size = 64
    default_channels = 3

    def load(self, cfg, seed) -> Files:
        path = require_path(cfg)
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
        problem = image_lib.image_problem(io.BytesIO(features[cfg.image_key].bytes_list.value[0]))
        if problem and cfg.on_corrupt == "fail":
            raise DataError(f"tfrecord: cannot decode the first image in {where} ({problem})")
        labeled = bool(cfg.label_key and cfg.label_key in features
                       and features[cfg.label_key].int64_list.value)
        total = sum(os.path.getsize(f) for f in files)
        return Files(self, tuple(files), self.sample_shape(cfg), labeled,
                     max(1, total // (len(record) + 16)), False)

    def examples(self, cfg, src: Files, files: tf.data.Dataset) -> tf.data.Dataset:
        size, _, channels = src.shape
        spec = {cfg.image_key: tf.io.FixedLenFeature([], tf.string)}
        if src.labeled:
            spec[cfg.label_key] = tf.io.FixedLenFeature([], tf.int64)

        def decode(record):
            ex = tf.io.parse_single_example(record, spec)
            image = image_lib.decode_image(ex[cfg.image_key], size, channels)
            return (image, tf.cast(ex[cfg.label_key], tf.int32)) if src.labeled else image

        records = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _first_record(files: List[str], path: str) -> Tuple[str, bytes]:
    with image_lib.private_session() as sess:
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
                raise DataError(f"tfrecord: cannot read {f} ({op_error_text(err.message)})") from None
    raise DataError(f"tfrecord: no records in {path}")


@register
class NumpyArrays(Source):
    name = "npy"
    summary = "a `.npy` / `.npz` array: `(N, 2)` points or `(N, H, W[, C])` images; optional `labels_path`"

    def sample_shape(self, cfg) -> Tuple[int, ...]:
        path, key = _npy_location(cfg)
        shape, _ = _npy_header(path, key)
        if _npy_kind(path, shape) == "points":
            return (2,)
        h, w = shape[1:3]
        if cfg.image_size:
            h = w = cfg.image_size
        return (h, w, cfg.channels or (shape[3] if len(shape) == 4 else 1))

    def num_classes(self, cfg) -> Optional[int]:
        path, key = _npy_location(cfg)
        shape, _ = _npy_header(path, key)
        labels = _npy_labels(cfg, path, key, shape[0])
        return int(labels.max()) + 1 if labels is not None and len(labels) else None

    def load(self, cfg, seed) -> Arrays:
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
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            value = x[tuple(bad)]
            raise DataError(f"npy: {path} holds {'NaN' if np.isnan(value) else value} at index "
                            f"{tuple(int(i) for i in bad)}; every value must be finite")
        if kind == "points":
            x = x.astype(np.float32)
        else:
            if x.dtype != np.uint8:
                lo, hi = float(x.min()), float(x.max())
                if not (lo >= -1.0 and hi <= 1.0):
                    raise DataError(f"npy: {path} holds floats in [{lo:g}, {hi:g}]; expected "
                                    f"[-1, 1] (or uint8 0..255)")
                x = x.astype(np.float32)
            x = image_lib.fit_images(image_lib.to_nhwc(x), self.sample_shape(cfg))
        return Arrays(x, _npy_labels(cfg, path, key, len(x)))


def _npy_location(cfg) -> Tuple[str, Optional[str]]:
    """(path, key of the data array in an .npz, or None for an .npy)."""
    path = require_path(cfg)
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


def _npy_labels(cfg, path: str, key: Optional[str], count: int) -> Optional[np.ndarray]:
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
    if y is None:
        return None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npy: {where} holds {y.dtype} shape {y.shape}; expected 1-D integers")
    if len(y) != count:
        raise DataError(f"npy: {where} holds {len(y)} labels; {path} has {count} examples")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"npy: {where} holds negative label {int(y.min())}")
    return np.asarray(y, np.int32)


def _npz_member(path: str, name: str) -> Optional[np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return npz[name] if name in npz.files else None


TFDS_EXTRA = "pip install 'estimator-gan[tfds]'"


@dataclass(frozen=True)
class TfdsSplit(Files):
    """A TensorFlow Datasets split, read by the `tfds` source itself (`files` is empty).
    `keep` is None, or one bool per example of the split: the part `data.split` selects."""

    keep: Optional[np.ndarray] = None


@register
class TensorFlowDatasets(Source):
    name = "tfds"
    summary = ("a TensorFlow Datasets data set (`data.tfds`: name, split, data_dir, download), "
               "resized to `image_size`; labels from `label_key`; needs the `tfds` extra")
    default_image_size = 64
    default_channels = 3

    def sample_shape(self, cfg) -> Tuple[int, ...]:
        if cfg.image_size and cfg.channels:
            return (cfg.image_size, cfg.image_size, cfg.channels)
        height, width, channels = self._image_feature(cfg, self._builder(cfg)).shape
        size = cfg.image_size or (height if height and height == width else self.default_image_size)
        return (size, size, cfg.channels or (channels if channels in (1, 3) else self.default_channels))

    def num_classes(self, cfg) -> Optional[int]:
        if cfg.tfds.label_key is None:
            return None
        return int(self._label_feature(cfg, self._builder(cfg)).num_classes)

    def describe(self, cfg) -> str:
        return f"TFDS {cfg.tfds.name} split '{cfg.tfds.split}'"

    def load(self, cfg, seed) -> TfdsSplit:
        t = cfg.tfds
        builder = self._builder(cfg)
        self._image_feature(cfg, builder)
        labeled = t.label_key is not None
        if labeled:
            self._label_feature(cfg, builder)
        if t.download and not builder.is_prepared():
            print(f"tfds: downloading and preparing {t.name} in {builder.data_dir_root} (once)",
                  file=sys.stderr)
            try:
                builder.download_and_prepare()
            except Exception as err:  # TFDS reports download trouble with many exception types
                raise DataError(f"tfds: could not download and prepare {t.name} in "
                                f"{builder.data_dir_root} ({type(err).__name__}: "
                                f"{_first_line(err)})") from None
        with image_lib.private_session() as sess:
            count = int(sess.run(self._split_dataset(cfg, builder, None).cardinality()))
        if count < 0:
            raise DataError(f"tfds: the size of {self.describe(cfg)} is unknown")
        if count == 0:
            raise DataError(f"tfds: {self.describe(cfg)} holds no examples")
        return TfdsSplit(self, (), self.sample_shape(cfg), labeled, count, True)

    def split(self, cfg, src: Loaded) -> Loaded:
        keep = np.zeros(src.count, bool)
        keep[split_indices(cfg, src.count)] = True
        return replace(src, keep=keep, count=int(keep.sum()))

    def shard_examples(self, cfg, src: TfdsSplit, shards, shard_id, shuffle_seed) -> tf.data.Dataset:
        """The split in TFDS's order (its files shuffled each pass when `shuffle_seed` is given
        and there is one input pipeline), the `data.split` part, then every `shards`-th
        example; images are decoded after sharding, so each pipeline decodes only its own."""
        t = cfg.tfds
        ds = self._split_dataset(cfg, self._builder(cfg), shuffle_seed if shards == 1 else None)
        if src.keep is not None:
            keep = image_lib.host_tensor(src.keep)
            ds = ds.enumerate().filter(lambda i, ex: tf.gather(keep, i)).map(lambda i, ex: ex)
        if shards > 1:
            ds = ds.shard(shards, shard_id)
        size, _, channels = src.shape

        def decode(ex):
            image = image_lib.decode_image(ex[t.image_key], size, channels)
            return (image, tf.cast(ex[t.label_key], tf.int32)) if src.labeled else image

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    # ------------------------------------------------------------------------------ TFDS

    def _builder(self, cfg):
        tfds = _tfds()
        t = cfg.tfds
        data_dir = os.path.expanduser(t.data_dir) if t.data_dir else None
        try:
            return tfds.builder(t.name, data_dir=data_dir)
        except (ValueError, AssertionError, KeyError) as err:  # unknown name, config or version
            raise DataError(f"tfds: cannot load data set {t.name!r} ({_first_line(err)})") from None

    def _split_dataset(self, cfg, builder, shuffle_seed: Optional[int]) -> tf.data.Dataset:
        """The split's examples, images still encoded."""
        tfds = _tfds()
        t = cfg.tfds
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
        try:
            return builder.as_dataset(split=t.split, shuffle_files=shuffle_seed is not None,
                                      decoders={t.image_key: tfds.decode.SkipDecoding()},
                                      read_config=read_config)
        except AssertionError:
            if builder.is_prepared():
                raise
            where = builder.data_dir_root
            raise DataError(
                f"tfds: data set {t.name} is not prepared in {where} and data.tfds.download is "
                f"false: download it once with --set data.tfds.download=true (or `tfds build "
                f"{t.name} --data_dir {where}`)") from None
        except ValueError as err:  # an unknown split or a bad slice
            raise DataError(f"tfds: bad data.tfds.split {t.split!r} for {t.name} "
                            f"({_first_line(err)})") from None

    def _feature(self, cfg, builder, key: str, kind, setting: str):
        features = builder.info.features
        if key not in features:
            raise DataError(f"tfds: {cfg.tfds.name} has no feature '{key}' (it has "
                            f"{', '.join(features.keys())}); set {setting}")
        feature = features[key]
        if not isinstance(feature, kind):
            raise DataError(f"tfds: feature '{key}' of {cfg.tfds.name} is a "
                            f"{type(feature).__name__}, expected {kind.__name__}; set {setting}")
        return feature

    def _image_feature(self, cfg, builder):
        feature = self._feature(cfg, builder, cfg.tfds.image_key, _tfds().features.Image,
                                "data.tfds.image_key to its image feature")
        if feature.np_dtype != np.uint8:
            raise DataError(f"tfds: images '{cfg.tfds.image_key}' of {cfg.tfds.name} are "
                            f"{feature.np_dtype}; only uint8 images are supported")
        return feature

    def _label_feature(self, cfg, builder):
        return self._feature(cfg, builder, cfg.tfds.label_key, _tfds().features.ClassLabel,
                             "data.tfds.label_key to a ClassLabel feature, or null for no labels")


def _tfds():
    """The `tensorflow_datasets` module, or a DataError that names the extra installing it."""
    try:
        # Imported here, not at the top: an optional dependency that only this source needs.
        import tensorflow_datasets
    except ImportError as err:
        why = ("it is not installed" if isinstance(err, ModuleNotFoundError)
               and err.name == "tensorflow_datasets" else f"import failed: {_first_line(err)}")
        raise DataError(f"data.source tfds needs TensorFlow Datasets ({why}): {TFDS_EXTRA}") from None
    return tensorflow_datasets


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""The Inception feature space of FID, KID and the Inception Score, as the reference
implementations compute them (TTUR's FID, OpenAI's improved-gan Inception Score).

The network is the frozen graph of `inception-2015-12-05` (`classify_image_graph_def.pb`, the
file TTUR and improved-gan load; Keras' `InceptionV3(weights="imagenet")` is another checkpoint
and gives other numbers). Images go in at its `ExpandDims:0` tensor as float pixels in
[0, 255], any size: the graph itself resizes them to 299x299 (bilinear) and normalises them.
Features are the 2048 values of `pool_3:0`; class probabilities are the softmax of `pool_3`
times the weights of `softmax/logits/MatMul` (1008 classes, no bias, as improved-gan forms them).

Samples in the training range [-1, 1] become pixels as the export's `images` output makes them
(round((x + 1) * 127.5), clipped to 0..255), so the numbers match those of the same samples
saved as PNG files; one channel is repeated to three.

The graph is looked for at `eval.inception_graph` (default `~/.keras/models/
inception-2015-12-05/classify_image_graph_def.pb`) and, when missing there, downloaded once
from `eval.inception_url` (default: TensorFlow's download site) and kept there. Without network
the error says which file to fetch and where to put it. Any graph is checked for the tensors
above; `info` says whether it is byte for byte the reference file (size and md5), since only
then are the numbers comparable with published ones.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError as ProtobufDecodeError

from estimator_gan import fileio
from estimator_gan.errors import DataError
from estimator_gan.evaluation.metrics import as_images

GRAPH_FILENAME = "classify_image_graph_def.pb"
GRAPH_URL = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
GRAPH_SIZE = 95_673_916
GRAPH_MD5 = "e6bb154e85f5d4331c22abcddb5dcf31"
DEFAULT_DIR = os.path.join("~", ".keras", "models", "inception-2015-12-05")
INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
LOGITS_MATMUL = "softmax/logits/MatMul"
FEATURE_DIM = 2048
BATCH_SIZE = 50
DOWNLOAD_TIMEOUT_SECS = 60


def default_graph_path() -> str:
    return os.path.join(os.path.expanduser(DEFAULT_DIR), GRAPH_FILENAME)


def _download_graph(url: str, path: str, log: Callable[[str], None]) -> None:
    """Fetch the .tgz at `url`, take `classify_image_graph_def.pb` out of it and write it to
    `path` atomically; `DataError` naming the file and where to put it on any failure."""
    def fail(reason: str) -> DataError:
        return DataError(
            f"the Inception graph {GRAPH_FILENAME} is not at {path} and could not be downloaded "
            f"from {url} ({reason}); on a machine with network fetch {url}, take {GRAPH_FILENAME} "
            f"out of it and put it at {path}, or set eval.inception_graph to where it is")

    log(f"inception: downloading {url} (about 90 MB) for {path}")
    with tempfile.TemporaryDirectory(prefix="estimator-gan-inception-") as scratch:
        archive = os.path.join(scratch, "inception.tgz")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECS) as response, \
                    open(archive, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            with tarfile.open(archive, "r:gz") as tar:
                member = tar.extractfile(GRAPH_FILENAME)
                data = member.read() if member is not None else None
        except KeyError:
            raise fail(f"the archive holds no {GRAPH_FILENAME}") from None
        except (urllib.error.URLError, socket.timeout, OSError, tarfile.TarError, EOFError) as err:
            reason = getattr(err, "reason", None) or err
            raise fail(" ".join(str(reason).split()) or type(err).__name__) from None
    if data is None or len(data) != GRAPH_SIZE:
        raise fail(f"the archive's {GRAPH_FILENAME} has {0 if data is None else len(data)} "
                   f"bytes, not {GRAPH_SIZE}")
    fileio.atomic_write(path, data)
    log(f"inception: wrote {path}")


def ensure_graph(path: Optional[str] = None, url: Optional[str] = None,
                 log: Callable[[str], None] = lambda message: None) -> str:
    """The path of the Inception graph: `path` (default `default_graph_path()`), downloaded
    there from `url` (default `GRAPH_URL`) first if it is missing."""
    path = os.path.expanduser(path) if path else default_graph_path()
    if fileio.exists(path) and not fileio.isdir(path):
        return path
    if fileio.isdir(path):
        raise DataError(f"eval.inception_graph {path} is a directory; give the path of "
                        f"{GRAPH_FILENAME} itself")
    _download_graph(url or GRAPH_URL, path, log)
    return path


def to_pixels(images) -> np.ndarray:
    """[N, H, W, 1 or 3] images in [-1, 1] as float32 RGB pixels in 0..255 (whole numbers)."""
    images = as_images(images)
    if images.shape[-1] not in (1, 3):
        raise DataError(f"Inception features need images with 1 or 3 channels, got shape "
                        f"{list(images.shape[1:])}")
    pixels = np.clip(np.round((images + 1.0) * 127.5), 0.0, 255.0).astype(np.float32)
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


class InceptionNetwork:
    """The Inception graph in its own tf.Graph and Session, with `features` (pool_3) and
    `probabilities` (softmax) of batches of images; works eagerly or not.

    `info` records the graph's path, size, md5 and whether it is the reference file.
    """

    def __init__(self, graph_path: str, batch_size: int = BATCH_SIZE):
        self.batch_size = int(batch_size)
        data = fileio.read_bytes(graph_path)
        self.info = {"graph": graph_path, "graph_bytes": len(data),
                     "graph_md5": hashlib.md5(data).hexdigest()}
        self.info["reference_graph"] = (len(data) == GRAPH_SIZE and self.info["graph_md5"] == GRAPH_MD5)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(data)
        except ProtobufDecodeError:
            raise DataError(f"{graph_path} is not a TensorFlow GraphDef (expected "
                            f"{GRAPH_FILENAME} of inception-2015-12-05)") from None
        names = {node.name for node in graph_def.node}
        missing = [op for op in (INPUT_TENSOR.split(":")[0], POOL_TENSOR.split(":")[0], LOGITS_MATMUL)
                   if op not in names]
        if missing:
            raise DataError(f"{graph_path} is not the Inception graph: it has no {missing[0]!r} "
                            f"(expected {GRAPH_FILENAME} of inception-2015-12-05)")
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="pixels")
            pool, matmul = tf.import_graph_def(graph_def, input_map={INPUT_TENSOR: self._images},
                                               return_elements=[POOL_TENSOR, LOGITS_MATMUL],
                                               name="inception")
            weights = matmul.inputs[1]
            if pool.shape[-1] != FEATURE_DIM or weights.shape.rank != 2 or weights.shape[0] != FEATURE_DIM:
                raise DataError(f"{graph_path} is not the Inception graph: {POOL_TENSOR} has shape "
                                f"{pool.shape} and the logits weights {weights.shape}, expected "
                                f"{FEATURE_DIM} features")
            self._features = tf.reshape(pool, [-1, FEATURE_DIM])
            self._probabilities = tf.nn.softmax(tf.matmul(self._features, weights))
        self.num_classes = int(weights.shape[1])
        self._session = tf.compat.v1.Session(graph=self._graph)

    def features_and_probabilities(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """[N, 2048] pool_3 features and [N, 1008] class probabilities, float64, in one pass."""
        images = as_images(images)
        feats, probs = [], []
        for start in range(0, len(images), self.batch_size):
            f, p = self._session.run([self._features, self._probabilities],
                                     {self._images: to_pixels(images[start:start + self.batch_size])})
            feats.append(f)
            probs.append(p)
        return (np.concatenate(feats).astype(np.float64), np.concatenate(probs).astype(np.float64))

    def features(self, images) -> np.ndarray:
        """[N, 2048] float64 pool_3 features."""
        images = as_images(images)
        return np.concatenate([
            self._session.run(self._features, {self._images: to_pixels(images[s:s + self.batch_size])})
            for s in range(0, len(images), self.batch_size)]).astype(np.float64)

    def probabilities(self, images) -> np.ndarray:
        """[N, 1008] float64 softmax class probabilities."""
        return self.features_and_probabilities(images)[1]

    def close(self) -> None:
        self._session.close()


def load(graph: Optional[str] = None, url: Optional[str] = None,
         log: Callable[[str], None] = lambda message: None) -> InceptionNetwork:
    """`InceptionNetwork` of the graph at `graph` (see `ensure_graph`), downloading it once."""
    return InceptionNetwork(ensure_graph(graph, url, log))

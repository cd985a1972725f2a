"""The offline feature network of the image metrics: a small CNN trained on the data set's
own labels, whose penultimate layer plays the role of Inception's pool features (Fréchet and
kernel distances) and whose softmax plays the role of Inception's class probabilities (the
classifier score). Numbers are comparable only between runs that use the same classifier (same
data, seed and cache file), never with published FID/IS values.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Optional

import numpy as np
import tensorflow as tf

from estimator_gan import fileio
from estimator_gan.evaluation.metrics import as_images

FEATURE_LAYER = "features"
FEATURE_DIM = 128


def _require_eager(what: str) -> None:
    if not tf.executing_eagerly():
        raise RuntimeError(
            f"{what} must run eagerly, outside any tf.Graph().as_default() block, Estimator "
            "model_fn or tf.function; call it before or after building the Estimator graph.")


class FeatureClassifier:
    """A trained Keras classifier exposing its 128-d penultimate features and its softmax."""

    def __init__(self, model: tf.keras.Model):
        self.model = model
        self.input_shape = tuple(int(d) for d in model.input_shape[1:])
        self.num_classes = int(model.output_shape[-1])
        self._feature_model = tf.keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)
        self._both_model = tf.keras.Model(model.inputs, [model.get_layer(FEATURE_LAYER).output,
                                                         model.output])

    def _check(self, images) -> np.ndarray:
        _require_eager("FeatureClassifier")
        images = as_images(images)
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images have shape {tuple(images.shape[1:])} but the feature classifier was "
                f"trained on {self.input_shape}; retrain it (or use another cache_path)")
        return images

    def features(self, images, batch_size: int = 256) -> np.ndarray:
        """[N, 128] float64 features from the penultimate ('features') layer."""
        images = self._check(images)
        out = self._feature_model.predict(images, batch_size=batch_size, verbose=0)
        return np.asarray(out, dtype=np.float64)

    def probabilities(self, images, batch_size: int = 256) -> np.ndarray:
        """[N, num_classes] float64 softmax class probabilities."""
        images = self._check(images)
        out = self.model.predict(images, batch_size=batch_size, verbose=0)
        return np.asarray(out, dtype=np.float64)

    def features_and_probabilities(self, images, batch_size: int = 256):
        """`features` and `probabilities` of the same images in one pass (float64)."""
        images = self._check(images)
        feats, probs = self._both_model.predict(images, batch_size=batch_size, verbose=0)
        return np.asarray(feats, dtype=np.float64), np.asarray(probs, dtype=np.float64)

    def accuracy(self, images, labels, batch_size: int = 256) -> float:
        """Top-1 accuracy on labelled images."""
        labels = np.asarray(labels).reshape(-1)
        preds = np.argmax(self.probabilities(images, batch_size=batch_size), axis=1)
        if preds.shape[0] != labels.shape[0]:
            raise ValueError(f"{preds.shape[0]} images but {labels.shape[0]} labels")
        return float(np.mean(preds == labels))


def _build_classifier(input_shape, num_classes: int) -> tf.keras.Model:
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(FEATURE_DIM, activation="relu", name=FEATURE_LAYER)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="feature_classifier")


def _save(model: tf.keras.Model, path: str) -> None:
    """Save through a local temporary file, then `fileio.atomic_write` (any filesystem)."""
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "classifier.keras")
        model.save(local, overwrite=True)
        with open(local, "rb") as f:
            fileio.atomic_write(path, f.read())


def _load(path: str) -> tf.keras.Model:
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "classifier.keras")
        with open(local, "wb") as f:
            f.write(fileio.read_bytes(path))
        return tf.keras.models.load_model(local, compile=False)


def train_feature_classifier(images, labels, num_classes: int, cache_path: Optional[str] = None,
                             seed: int = 0, epochs: int = 3,
                             batch_size: int = 128) -> FeatureClassifier:
    """Train (or load from `cache_path`) the dataset-specific feature classifier.

    images: [N, H, W, C] float32 in [-1, 1]; labels: [N] ints in [0, num_classes). The network
    is conv32-pool-conv64-pool-dense128 ('features')-softmax, trained with Adam on seeded
    per-epoch shuffles (`tf.keras.utils.set_random_seed(seed)`; Python's and numpy's global
    random states are restored afterwards). Must be called eagerly (RuntimeError otherwise).

    If `cache_path` (a `.keras` file) exists it is loaded instead of training, after checking
    that its input shape and class count match; otherwise the trained model is saved there
    atomically (on any filesystem `fileio` reaches).
    """
    _require_eager("train_feature_classifier")
    images = as_images(images)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError("labels must be integers")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    if cache_path is not None and not str(cache_path).endswith(".keras"):
        raise ValueError(f"cache_path must end in '.keras', got {cache_path!r}")

    if cache_path is not None and fileio.exists(cache_path):
        classifier = FeatureClassifier(_load(cache_path))
        if classifier.input_shape != tuple(images.shape[1:]):
            raise ValueError(
                f"cached feature classifier {cache_path} expects images of shape "
                f"{classifier.input_shape}, got {tuple(images.shape[1:])}")
        if classifier.num_classes != num_classes:
            raise ValueError(
                f"cached feature classifier {cache_path} has {classifier.num_classes} classes, "
                f"expected {num_classes}")
        return classifier

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        tf.keras.utils.set_random_seed(seed)
        model = _build_classifier(images.shape[1:], num_classes)
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(images.shape[0])
            model.fit(images[order], labels[order], batch_size=batch_size, epochs=1,
                      shuffle=False, verbose=0)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    if cache_path is not None:
        _save(model, cache_path)
    return FeatureClassifier(model)

"""Offline sample-quality metrics for GANs: the metric math and a dataset-specific feature net.

Everything here runs without network access, so no Inception weights are used. Instead:

* Image sets are compared in the feature space of a small CNN trained on the dataset's *own
  labels* (`train_feature_classifier`). Its penultimate layer plays the role of Inception's
  pool features (for `frechet_distance` and `kernel_distance`) and its softmax the role of
  Inception's class probabilities (for `classifier_score`). The numbers are therefore only
  comparable between runs that use the same classifier (same data, seed and cache file), never
  with published FID/IS values.
* Unlabelled images fall back to `fallback_features`, a fixed random projection of downsampled
  pixels; it measures pixel-statistics distance, not semantic quality.
* 2D mixture data is judged directly against the known modes (`mixture_mode_metrics`).

FID and KID depend on the sample size (FID is biased upwards for small N), so a value on its
own says little. `image_metrics` therefore also reports the real-vs-real reference at the same
sample size: a generator is as good as these metrics can tell once it reaches that floor.

All statistics are computed in float64; functions take numpy arrays and return Python floats
or dicts of them.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import tempfile
import time
from typing import Dict, List, Optional, Union

import numpy as np
import tensorflow as tf

FEATURE_LAYER = "features"
FEATURE_DIM = 128
FALLBACK_MAX_SIDE = 16
FALLBACK_DIM = 64
FALLBACK_SEED = 0


def _as_features(feats, name: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {feats.shape[0]}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return feats


def _as_feature_pair(feats_a, feats_b):
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(mat)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two [N, D] feature sets (the FID formula).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), covariances with ddof=1.
    The trace of the matrix square root comes from the eigenvalues of the symmetric PSD matrix
    S_a^1/2 S_b S_a^1/2, which stays stable for singular covariances (unlike `sqrtm`).
    """
    a, b = _as_feature_pair(feats_a, feats_b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    m = root_a @ cov_b @ root_a
    m = (m + m.T) / 2.0
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kernel_distance(feats_a, feats_b, subset_size: int = 1000, num_subsets: int = 10,
                    seed: int = 0) -> Dict[str, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3.

    Averaged over `num_subsets` random subsets of size min(subset_size, len(a), len(b)) drawn
    without replacement (seeded). Unbiased, so it can be slightly negative for equal
    distributions. Returns {"mean", "std"} over the subsets.
    """
    a, b = _as_feature_pair(feats_a, feats_b)
    if subset_size < 2 or num_subsets < 1:
        raise ValueError("kernel_distance needs subset_size >= 2 and num_subsets >= 1")
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values.append(_mmd2_unbiased(x, y))
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def classifier_score(probs, num_splits: int = 10) -> Dict[str, float]:
    """Inception-Score formula exp(E_x[KL(p(y|x) || p(y))]) on [N, K] class-probability rows.

    Computed on `num_splits` contiguous splits (p(y) is each split's mean row); returns
    {"mean", "std"} over the splits. Ranges from 1 (one class, or uninformative rows) to K.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D [N, K] array, got shape {p.shape}")
    if not 1 <= num_splits <= p.shape[0]:
        raise ValueError(f"num_splits must be in [1, N={p.shape[0]}], got {num_splits}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    sums = p.sum(axis=1, keepdims=True)
    if not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError("rows of probs must sum to 1")
    p = p / sums
    scores = []
    for part in np.array_split(p, num_splits):
        p_y = part.mean(axis=0, keepdims=True)
        ratio = np.divide(part, p_y, out=np.ones_like(part), where=part > 0)
        kl = np.sum(part * np.log(ratio), axis=1)
        scores.append(np.exp(kl.mean()))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores))}


def mixture_mode_metrics(points, centres, std: float, k: float = 3.0,
                         coverage_fraction: float = 0.1) -> Dict[str, Union[int, float, List[int]]]:
    """Mode coverage and sample quality of 2D samples against a known mixture's centres.

    A point is *high quality* if it lies within `k * std` (Euclidean) of its nearest centre,
    and then counts for that mode. A mode is *covered* when it holds at least
    max(1, coverage_fraction * N / K) high-quality points, i.e. by default 10% of what a
    uniform spread of all N samples over the K modes would give, so a few stray points do not
    count as capturing a mode.

    Returns: modes_covered, num_modes, high_quality_share (fraction of all points that are high
    quality), kl_to_uniform (KL(p || uniform) in nats of the high-quality histogram p over
    modes, 0 for a perfect spread, log K for a single mode, NaN if no point is high quality),
    counts (per-mode high-quality counts) and min_count_for_coverage.
    """
    pts = np.asarray(points, dtype=np.float64)
    ctr = np.asarray(centres, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
        raise ValueError(f"points must be a non-empty [N, 2] array, got shape {pts.shape}")
    if ctr.ndim != 2 or ctr.shape[1] != 2 or ctr.shape[0] < 1:
        raise ValueError(f"centres must be a non-empty [K, 2] array, got shape {ctr.shape}")
    if std <= 0 or k <= 0:
        raise ValueError("std and k must be positive")
    n, num_modes = pts.shape[0], ctr.shape[0]
    dist = np.linalg.norm(pts[:, None, :] - ctr[None, :, :], axis=-1)
    nearest = np.argmin(dist, axis=1)
    good = dist[np.arange(n), nearest] <= k * std
    counts = np.bincount(nearest[good], minlength=num_modes)
    min_count = max(1.0, coverage_fraction * n / num_modes)
    total = counts.sum()
    if total > 0:
        p = counts / total
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * num_modes)))
    else:
        kl = float("nan")
    return {
        "modes_covered": int(np.sum(counts >= min_count)),
        "num_modes": int(num_modes),
        "high_quality_share": float(good.mean()),
        "kl_to_uniform": kl,
        "counts": [int(c) for c in counts],
        "min_count_for_coverage": float(min_count),
    }


def _require_eager(what: str) -> None:
    if not tf.executing_eagerly():
        raise RuntimeError(
            f"{what} must run eagerly, outside any tf.Graph().as_default() block, Estimator "
            "model_fn or tf.function; call it before or after building the Estimator graph.")


def _as_images(images, name: str = "images") -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"{name} must be a 4-D [N, H, W, C] array, got shape {images.shape}")
    if images.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    return images


class FeatureClassifier:
    """A trained Keras classifier exposing its 128-d penultimate features and its softmax."""

    def __init__(self, model: tf.keras.Model):
        self.model = model
        self.input_shape = tuple(int(d) for d in model.input_shape[1:])
        self.num_classes = int(model.output_shape[-1])
        self._feature_model = tf.keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)

    def _check(self, images) -> np.ndarray:
        _require_eager("FeatureClassifier")
        images = _as_images(images)
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


def _save_atomically(model: tf.keras.Model, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    atomically (temporary file, then os.replace).
    """
    _require_eager("train_feature_classifier")
    images = _as_images(images)
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

    if cache_path is not None and os.path.exists(cache_path):
        classifier = FeatureClassifier(tf.keras.models.load_model(cache_path, compile=False))
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
        _save_atomically(model, cache_path)
    return FeatureClassifier(model)


def _area_downsample(images: np.ndarray, max_side: int) -> np.ndarray:
    for axis in (1, 2):
        size = images.shape[axis]
        if size > max_side:
            starts = (np.arange(max_side) * size) // max_side
            widths = np.diff(np.append(starts, size)).astype(np.float64)
            shape = [1, 1, 1, 1]
            shape[axis] = max_side
            images = np.add.reduceat(images, starts, axis=axis) / widths.reshape(shape)
    return images


def fallback_features(images) -> np.ndarray:
    """Deterministic 64-d features for unlabelled [N, H, W, C] images.

    Each image is area-averaged down to at most 16x16 (per side), flattened, and multiplied by
    a fixed Gaussian random matrix (seed 0, scaled by 1/sqrt(dim)) to 64 dimensions; the map is
    purely linear. Frechet/kernel distances on these features compare low-resolution pixel
    statistics (means and covariances in a random subspace), not semantic quality, and are only
    comparable between image sets of the same shape.
    """
    images = _as_images(images).astype(np.float64)
    small = _area_downsample(images, FALLBACK_MAX_SIDE)
    flat = small.reshape(small.shape[0], -1)
    dim = flat.shape[1]
    projection = np.random.default_rng(FALLBACK_SEED).standard_normal((dim, FALLBACK_DIM))
    return flat @ (projection / np.sqrt(dim))


def image_metrics(real_feats, fake_feats, real_ref_feats=None, fake_probs=None,
                  kid_subset_size: int = 1000, kid_num_subsets: int = 10, seed: int = 0,
                  num_splits: int = 10) -> Dict[str, float]:
    """FID/KID of fake vs real features, plus the real-vs-real reference and classifier score.

    Keys: frechet_distance, kid_mean, kid_std, num_fake, and, with `real_ref_feats` (a second
    real sample, disjoint from `real_feats` and of the same size as `fake_feats`),
    frechet_distance_real_ref, kid_real_ref, kid_real_ref_std; with `fake_probs`,
    classifier_score and classifier_score_std.
    """
    real = _as_features(real_feats, "real_feats")
    fake = _as_features(fake_feats, "fake_feats")
    kid = kernel_distance(real, fake, kid_subset_size, kid_num_subsets, seed)
    out = {
        "frechet_distance": frechet_distance(real, fake),
        "kid_mean": kid["mean"],
        "kid_std": kid["std"],
        "num_fake": int(fake.shape[0]),
    }
    if real_ref_feats is not None:
        ref = _as_features(real_ref_feats, "real_ref_feats")
        if ref.shape[0] != fake.shape[0]:
            raise ValueError(
                f"real_ref_feats must have as many rows as fake_feats for a like-for-like "
                f"reference ({ref.shape[0]} vs {fake.shape[0]})")
        kid_ref = kernel_distance(real, ref, kid_subset_size, kid_num_subsets, seed)
        out["frechet_distance_real_ref"] = frechet_distance(real, ref)
        out["kid_real_ref"] = kid_ref["mean"]
        out["kid_real_ref_std"] = kid_ref["std"]
    if fake_probs is not None:
        score = classifier_score(fake_probs, num_splits=num_splits)
        out["classifier_score"] = score["mean"]
        out["classifier_score_std"] = score["std"]
    return out


# ------------------------------------------------------------- EVAL-mode metric ops (graph)


def _metric_variable(shape, name: str) -> tf.Variable:
    return tf.compat.v1.Variable(
        tf.zeros(shape, tf.float32), trainable=False, name=name,
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES],
        synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.SUM)


def mixture_metric_ops(points, centres, std: float, k: float = 3.0,
                       coverage_fraction: float = 0.1) -> Dict[str, tuple]:
    """`eval_metric_ops` for 2D samples: `mixture_mode_metrics` accumulated over EVAL batches.

    Returns {"mixture/modes_covered", "mixture/high_quality_share", "mixture/kl_to_uniform"}
    -> (value, update_op); the three share one update op that adds the batch's per-mode
    high-quality counts. Same definitions as `mixture_mode_metrics` on all evaluated points.
    """
    ctr = tf.constant(np.asarray(centres, np.float32))
    num_modes = int(ctr.shape[0])
    with tf.compat.v1.variable_scope(None, default_name="mixture_metrics"):
        counts = _metric_variable([num_modes], "counts")
        total = _metric_variable([], "total")
        pts = tf.reshape(tf.cast(points, tf.float32), [-1, 2])
        dist = tf.norm(pts[:, None, :] - ctr[None, :, :], axis=-1)
        good = tf.reduce_min(dist, axis=1) <= k * std
        hits = tf.one_hot(tf.argmin(dist, axis=1), num_modes) * tf.cast(good, tf.float32)[:, None]
        update = tf.group(tf.compat.v1.assign_add(counts, tf.reduce_sum(hits, axis=0)),
                          tf.compat.v1.assign_add(total, tf.cast(tf.shape(pts)[0], tf.float32)))
        c, n = tf.identity(counts), tf.identity(total)
        min_count = tf.maximum(1.0, coverage_fraction * n / num_modes)
        covered = tf.reduce_sum(tf.cast(c >= min_count, tf.float32))
        good_total = tf.reduce_sum(c)
        share = tf.math.divide_no_nan(good_total, n)
        p = tf.math.divide_no_nan(c, good_total)
        kl = tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p * num_modes), p))
        kl = tf.where(good_total > 0, kl, tf.constant(float("nan")))
    return {"mixture/modes_covered": (covered, update),
            "mixture/high_quality_share": (share, update),
            "mixture/kl_to_uniform": (kl, update)}


# ------------------------------------------------------ evaluating a GAN's checkpoints


EVAL_DIR = "evaluation"
HISTORY_FILE = "metrics.jsonl"
RESULT_FILE = "eval.json"
_GRID = 64


def run_eagerly(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in eager mode: directly when already eager, else in a new thread
    (TF 2 threads start eager), e.g. from a listener running inside `Estimator.train`'s graph."""
    if tf.executing_eagerly():
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def evaluation_data_config(config):
    """The real data the metrics use: the other part of `data.split`, else `data` itself."""
    if config.data.split is None:
        return config.data
    return config.data.model_copy(update={"split": config.data.split.complement()})


def _classifier_cache_path(config, model_dir: str) -> str:
    if config.eval.classifier_cache:
        return os.path.expanduser(config.eval.classifier_cache)
    key = json.dumps({"data": evaluation_data_config(config).model_dump(mode="json"),
                      "shape": list(config.model.sample_shape or []),
                      "epochs": config.eval.classifier_epochs, "seed": config.eval.seed},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return os.path.join(model_dir, EVAL_DIR, f"feature_classifier-{digest}.keras")


class SampleMetrics:
    """Sample-quality metrics of generated samples for one config, next to a real reference.

    Calling it on `[N, ...]` samples returns `(model, reference)`: two dicts with the same
    keys, the second measured on N real examples that stand in for the samples. Which metrics
    (`kind`):

    * `mixture` (2D mixture data): modes_covered, num_modes, high_quality_share,
      kl_to_uniform (`mixture_mode_metrics`, k = `eval.mode_std_k`).
    * `classifier` (labelled images): frechet_distance, kid, classifier_score in the feature
      space of `train_feature_classifier`, trained on the evaluation data (see
      `evaluation_data_config`) with `eval.seed` and cached (`eval.classifier_cache`).
    * `fallback` (unlabelled images): frechet_distance and kid on `fallback_features`.

    For images the evaluation data is permuted with `eval.seed`; N examples form the reference
    and the rest the real statistics that both the samples and the reference are compared to.
    Loading data and training the classifier happen on first use, eagerly (see `run_eagerly`).
    """

    def __init__(self, config, model_dir: str, stream=None):
        self.config = config
        self.model_dir = model_dir
        self._stream = stream
        self._ready = False
        self.info: Dict[str, object] = {}

    @property
    def kind(self) -> str:
        self._prepare()
        return self.info["kind"]

    def _log(self, message: str) -> None:
        if self._stream is not None:
            print(message, file=self._stream, flush=True)

    def _prepare(self) -> None:
        if self._ready:
            return
        from estimator_gan import data as data_lib

        cfg, data_cfg = self.config, evaluation_data_config(self.config)
        n = cfg.eval.num_samples
        if cfg.data.source == "mixture2d":
            mixture = cfg.data.mixture
            self._centres, self._std = mixture.centres(), mixture.std
            real, _ = data_lib.load_examples(data_cfg, limit=n, seed=cfg.eval.seed)
            self._reference = self._mixture(real)
            self.info = {"kind": "mixture", "real_examples": int(len(real))}
            self._ready = True
            return
        real, labels = data_lib.load_examples(data_cfg, seed=cfg.eval.seed)
        if len(real) < n + 2:
            raise data_lib.DataError(
                f"eval.num_samples={n} needs at least {n + 2} real evaluation examples "
                f"({data_cfg.source} has {len(real)}); lower eval.num_samples")
        self._classifier = None
        if labels is not None:
            path = _classifier_cache_path(cfg, self.model_dir)
            self._log(f"feature classifier: {'loading' if os.path.exists(path) else 'training'} "
                      f"{path} ({len(real)} labelled examples)")
            self._classifier = train_feature_classifier(
                real, labels, data_lib.num_classes(data_cfg) or int(labels.max()) + 1,
                cache_path=path, seed=cfg.eval.seed, epochs=cfg.eval.classifier_epochs)
            self.info = {"kind": "classifier", "classifier": path}
            if cfg.data.split is not None:
                held_x, held_y = data_lib.load_examples(cfg.data, limit=2000, seed=cfg.eval.seed)
                self.info["classifier_accuracy_on_gan_part"] = self._classifier.accuracy(held_x, held_y)
        else:
            self.info = {"kind": "fallback"}
        self._real_feats = self._features(real[n:])
        ref = real[:n]
        self._reference = self._images(ref)
        self.info.update(real_examples=int(len(real) - n), reference_examples=n)
        self._ready = True

    def _features(self, images) -> np.ndarray:
        if self._classifier is not None:
            return self._classifier.features(images)
        return fallback_features(images)

    def _mixture(self, points) -> Dict[str, float]:
        out = mixture_mode_metrics(points, self._centres, self._std, k=self.config.eval.mode_std_k)
        return {key: out[key] for key in
                ("modes_covered", "num_modes", "high_quality_share", "kl_to_uniform")}

    def _images(self, images) -> Dict[str, float]:
        ev = self.config.eval
        feats = self._features(images)
        kid = kernel_distance(self._real_feats, feats, min(ev.kid_subset_size, len(feats)),
                              ev.kid_num_subsets, ev.seed)
        out = {"frechet_distance": frechet_distance(self._real_feats, feats),
               "kid": kid["mean"], "kid_std": kid["std"]}
        if self._classifier is not None:
            score = classifier_score(self._classifier.probabilities(images))
            out.update(classifier_score=score["mean"], classifier_score_std=score["std"])
        return out

    def __call__(self, samples):
        self._prepare()
        samples = np.asarray(samples, np.float32)
        if self.info["kind"] == "mixture":
            return self._mixture(samples), dict(self._reference)
        if samples.ndim == 3:
            samples = samples[..., None]
        if len(samples) != self.config.eval.num_samples:
            raise ValueError(f"expected {self.config.eval.num_samples} samples, got {len(samples)}")
        return self._images(samples), dict(self._reference)


def _labels_for(config, count: int) -> Optional[np.ndarray]:
    if not config.model.conditional:
        return None
    return (np.arange(count) % (config.model.num_classes or 10)).astype(np.int32)


def generate_samples(gan, count: int, seed: int, checkpoint_path: Optional[str] = None) -> np.ndarray:
    """`count` samples of a checkpoint (default: the latest); conditional models get labels
    0, 1, 2, ... in turn."""
    return gan.generate(count, seed=seed, labels=_labels_for(gan.config, count),
                        checkpoint_path=checkpoint_path)


def find_saved_model(export_dir: str) -> str:
    """`export_dir` if it holds a saved_model.pb, else its newest sub-directory that does
    (Estimator exports are written to timestamped sub-directories)."""
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"export directory not found: {export_dir}")
    versions = sorted(d for d in os.listdir(export_dir)
                      if os.path.isfile(os.path.join(export_dir, d, "saved_model.pb")))
    if not versions:
        raise FileNotFoundError(f"no saved_model.pb in {export_dir} or its sub-directories")
    return os.path.join(export_dir, versions[-1])


def export_samples(export_dir: str, config, count: int, seed: int) -> np.ndarray:
    """`count` samples from an exported generator's `serving_default` signature (input
    `noise` [B, z_dim], optional `labels`; output `samples`), noise drawn like `GAN.generate`."""
    model = tf.saved_model.load(find_saved_model(export_dir))
    if "serving_default" not in model.signatures:
        raise ValueError(f"{export_dir} has no serving_default signature")
    serve = model.signatures["serving_default"]
    noise = np.random.RandomState(seed).standard_normal((count, config.model.z_dim)).astype(np.float32)
    labels = _labels_for(config, count)
    inputs = serve.structured_input_signature[1]
    out = []
    for start in range(0, count, 256):
        feed = {"noise": tf.constant(noise[start:start + 256])}
        if labels is not None and "labels" in inputs:
            feed["labels"] = tf.constant(labels[start:start + 256])
        out.append(serve(**feed)["samples"].numpy())
    return np.concatenate(out)


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _clean(tree: Dict[str, object]) -> Dict[str, object]:
    return {k: (_finite(v) if isinstance(v, (float, np.floating)) else
                int(v) if isinstance(v, (np.integer,)) else v) for k, v in tree.items()}


def evaluate_samples(metrics: SampleMetrics, samples, step: Optional[int], source: str) -> dict:
    """The record `evaluate` and the listener write: step, sample metrics and real reference."""
    model, reference = metrics(samples)
    return {"step": step, "source": source, "time": time.time(),
            "num_samples": int(len(samples)), "kind": metrics.info["kind"],
            "metrics": _clean(model), "reference": _clean(reference)}


def checkpoint_step(checkpoint_path: str) -> int:
    return int(tf.train.load_variable(checkpoint_path, "global_step"))


def evaluate_checkpoint(gan, metrics: SampleMetrics, checkpoint_path: Optional[str] = None,
                        estimator_eval: bool = True) -> dict:
    """Sample metrics of one checkpoint (default: the latest) and, with `estimator_eval`, the
    generator Estimator's EVAL metrics over `eval.eval_batches` batches (losses, D accuracy,
    D probability, 2D mode metrics). Must run eagerly."""
    checkpoint_path = checkpoint_path or tf.train.latest_checkpoint(gan.model_dir)
    if not checkpoint_path:
        raise FileNotFoundError(f"no checkpoint in {gan.model_dir}")
    ev = gan.config.eval
    samples = generate_samples(gan, ev.num_samples, ev.seed, checkpoint_path)
    record = evaluate_samples(metrics, samples, checkpoint_step(checkpoint_path), "checkpoint")
    record["checkpoint"] = checkpoint_path
    if estimator_eval:
        result = gan.evaluate(steps=ev.eval_batches, checkpoint_path=checkpoint_path)
        record["estimator"] = _clean({k: v for k, v in result.items()
                                      if k != "global_step" and np.ndim(v) == 0})
    record["samples"] = samples
    return record


def history_path(model_dir: str) -> str:
    return os.path.join(model_dir, EVAL_DIR, HISTORY_FILE)


def read_history(model_dir: str) -> List[dict]:
    """The per-checkpoint records of `metrics.jsonl`, one per step (the latest record wins),
    sorted by step. Unreadable lines are skipped."""
    by_step: Dict[int, dict] = {}
    path = history_path(model_dir)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def append_history(model_dir: str, record: dict) -> str:
    """Add a record (without its samples) to `<model_dir>/evaluation/metrics.jsonl`,
    rewriting the file atomically."""
    from estimator_gan.config import atomic_write_text

    path = history_path(model_dir)
    old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = json.dumps({k: v for k, v in record.items() if k != "samples"}, sort_keys=True)
    atomic_write_text(path, old + line + "\n")
    return path


def write_result(path: str, record: dict) -> str:
    """Write one evaluation record (without its samples) as JSON, atomically."""
    from estimator_gan.config import atomic_write_text

    atomic_write_text(path, json.dumps({k: v for k, v in record.items() if k != "samples"},
                                       indent=2, sort_keys=True) + "\n")
    return path


def _summary_value(tag: str, value: float):
    return tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))


def _image_summary_value(tag: str, picture):
    from estimator_gan import images

    return tf.compat.v1.Summary.Value(tag=tag, image=tf.compat.v1.Summary.Image(
        height=picture.height, width=picture.width,
        colorspace=1 if picture.mode == "L" else 3,
        encoded_image_string=images.png_bytes(picture)))


def write_summaries(model_dir: str, step: int, record: Optional[dict] = None,
                    pictures: Optional[Dict[str, object]] = None) -> None:
    """TensorBoard: a record's metrics as `eval/<name>` and `eval_reference/<name>` scalars,
    and PIL pictures as image summaries, into the model dir's training event file."""
    values = []
    for group, prefix in (("metrics", "eval/"), ("reference", "eval_reference/")):
        for key, value in ((record or {}).get(group) or {}).items():
            if isinstance(value, (int, float)) and value is not None and np.isfinite(value):
                values.append(_summary_value(prefix + key, value))
    for tag, picture in (pictures or {}).items():
        values.append(_image_summary_value(tag, picture))
    if values:
        writer = tf.compat.v1.summary.FileWriterCache.get(model_dir)
        writer.add_summary(tf.compat.v1.Summary(value=values), step)
        writer.flush()


class EvaluationListener(tf.estimator.CheckpointSaverListener):
    """Monitoring at checkpoints, for `GAN.train`.

    After every checkpoint: TensorBoard image summaries `images/generated` (G in inference
    mode on the fixed noise of the sample PNGs) and, once, `images/real` (a grid, or scatter
    plots with the mode centres for 2D data). After every `eval.every_checkpoints`-th
    checkpoint (counting the one written when training starts): the sample metrics with their
    real reference, appended to `<model_dir>/evaluation/metrics.jsonl` and written as
    `eval/*` / `eval_reference/*` scalars.
    """

    def __init__(self, gan, stream=None):
        self._gan = gan
        self._every = gan.config.eval.every_checkpoints
        self._metrics = SampleMetrics(gan.config, gan.model_dir, stream)
        self._stream = stream
        self.records: List[dict] = []

    def begin(self):
        from estimator_gan import model_fns

        self._samples = model_fns.graph_state().get("samples")
        self._saves = 0
        self._real_written = False

    def _pictures(self, session) -> Dict[str, object]:
        from estimator_gan import data as data_lib
        from estimator_gan import images

        cfg = self._gan.config
        centres = cfg.data.mixture.centres() if cfg.data.source == "mixture2d" else None
        pictures = {}
        if self._samples is not None:
            pictures["images/generated"] = images.samples_picture(session.run(self._samples), centres)
        if not self._real_written:
            count = 1024 if centres is not None else min(_GRID, cfg.train.sample_grid ** 2)
            real, _ = data_lib.load_examples(cfg.data, limit=count, seed=cfg.eval.seed)
            pictures["images/real"] = images.samples_picture(real, centres)
            self._real_written = True
        return pictures

    def after_save(self, session, global_step_value):
        step = int(global_step_value)
        record = None
        if self._every and self._saves % self._every == 0:
            path = tf.train.latest_checkpoint(self._gan.model_dir)
            record = run_eagerly(evaluate_checkpoint, self._gan, self._metrics, path,
                                 estimator_eval=False)
            append_history(self._gan.model_dir, record)
            self.records.append(record)
            if self._stream is not None:
                print(f"eval at step {step}: {format_inline(record)}", file=self._stream, flush=True)
        self._saves += 1
        write_summaries(self._gan.model_dir, step, record, self._pictures(session))


_LOG_SCALE = ("frechet_distance", "kid")
_MAIN_METRICS = ("frechet_distance", "kid", "classifier_score", "modes_covered",
                 "high_quality_share", "kl_to_uniform")


def format_inline(record: dict) -> str:
    parts = []
    for key in _MAIN_METRICS:
        if key in record["metrics"]:
            value, ref = record["metrics"][key], record["reference"].get(key)
            parts.append(f"{key} {_fmt(value)} (real {_fmt(ref)})")
    return ", ".join(parts)


def _fmt(value) -> str:
    if value is None:
        return "nan"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def format_table(record: dict) -> str:
    """A text table: metric, the model's value, the real-vs-real reference; then the EVAL
    metrics of the Estimator, if any."""
    rows = [("metric", "model", "real reference")]
    for key, value in record["metrics"].items():
        rows.append((key, _fmt(value), _fmt(record["reference"].get(key))))
    for key, value in (record.get("estimator") or {}).items():
        rows.append((key, _fmt(value), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_plots(model_dir: str, config, record: Optional[dict] = None) -> List[str]:
    """PNGs in `<model_dir>/evaluation/`: `metrics.png`, the main metrics over the recorded
    checkpoints (model and real reference), and, for a record with samples,
    `samples_step_<N>.png` (a grid, or a scatter plot with the mode centres for 2D data)."""
    from estimator_gan import images

    paths = []
    history = read_history(model_dir)
    keys = [k for k in _MAIN_METRICS if any(k in r.get("metrics", {}) for r in history)]
    if keys:
        xs = [r["step"] for r in history]
        charts = []
        for key in keys:
            ys = [r["metrics"].get(key) for r in history]
            positive = [y for y in ys if y is not None and y > 0]
            log = key in _LOG_SCALE and len(positive) == len(ys) and max(ys) > 10 * min(ys)
            charts.append(images.line_chart(key, xs, ys, [r.get("reference", {}).get(key)
                                                          for r in history], log=log))
        paths.append(images.save_png(images.tile(charts),
                                     os.path.join(model_dir, EVAL_DIR, "metrics.png")))
    if record is not None and record.get("samples") is not None:
        centres = config.data.mixture.centres() if config.data.source == "mixture2d" else None
        samples = np.asarray(record["samples"])
        if samples.ndim != 2:
            samples = samples[:_GRID]
        name = f"samples_step_{record['step']:08d}.png" if record.get("step") is not None \
            else "samples_export.png"
        paths.append(images.save_png(images.samples_picture(samples, centres),
                                     os.path.join(model_dir, EVAL_DIR, name)))
    return paths

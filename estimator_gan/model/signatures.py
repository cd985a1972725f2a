"""The serving interface of the exports: input receivers and the signatures built on them.

Adding a generator signature is an edit of this file only: give `generator_receiver_fn` the
placeholders it takes (as features) and `generator_signatures` the inputs it lists.

Generator signatures (all return float32 `samples` in the training range and, for images,
uint8 `images` and PNG `png_bytes`; a conditional model's also take int32 `labels [N]`, except
a model conditioned on `data.clusters`, whose G draws the clusters in turn):

* `serving_default`, `noise` — float32 `noise [N, z_dim]`.
* `seed` — int64 `seed`, int32 `count`: the graph draws the noise with stateless random ops, so
  the same seed gives the same samples on any machine and after any reload.
* `seed_truncated` — plus float32 `truncation`: noise from the normal truncated to [-t, t].

Discriminator signature `serving_default`: float32 `samples [N, *sample_shape]` -> `logits`,
`probabilities`. Inputs of the wrong shape or rank, and noise that is not finite, fail in-graph
with a readable message, since TF Serving's C++ server does not check requests against the
signature.

`example_inputs` gives a small valid value for every input name above; the export's TF Serving
warm-up requests (`serving.warmup`) are made of them, so a new input needs an example there too.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from estimator_gan import sampling
from estimator_gan.errors import ExportError

v1 = tf.compat.v1
NOISE_SEED_SALT = 0x6a09e667
EXAMPLE_BATCH = 2


def stateless_noise(seed, count, z_dim: int, truncation=0.0) -> tf.Tensor:
    """Standard normal noise `[count, z_dim]`, a pure function of `seed` (stateless ops).

    `truncation` t > 0 draws from the normal truncated to [-t, t] (resampling, not clipping:
    inverse CDF of a uniform on [Phi(-t), Phi(t)]); 0 means no truncation.
    """
    seed_pair = tf.stack([tf.cast(seed, tf.int64), tf.constant(NOISE_SEED_SALT, tf.int64)])
    limit = tf.where(truncation > 0, tf.cast(truncation, tf.float64), tf.constant(np.inf, tf.float64))
    low = 0.5 * tf.math.erfc(limit / math.sqrt(2.0))
    uniform = tf.random.stateless_uniform(tf.stack([count, z_dim]), seed_pair, dtype=tf.float64)
    eps = np.finfo(np.float64).eps
    p = tf.clip_by_value(low + uniform * (1.0 - 2.0 * low), eps, 1.0 - eps)
    return tf.cast(tf.math.ndtri(p), tf.float32)


# ---------------------------------------------------------------------------------- receivers


def _labels_placeholder(config) -> Dict[str, tf.Tensor]:
    if not config.model.conditional:
        return {}
    return {"labels": v1.placeholder(tf.int32, [None], name="labels")}


def _generator_labels_placeholder(config) -> Dict[str, tf.Tensor]:
    """A client picks the class of a conditional G, but not the cluster of one conditioned on
    `data.clusters`: that G draws its clusters itself (`clusters_in_turn`)."""
    return {} if config.data.clusters.count else _labels_placeholder(config)


def clusters_in_turn(config, noise) -> Optional[tf.Tensor]:
    """For a G conditioned on `data.clusters`, int32 cluster ids 0, 1, ..., K-1, 0, ... for the
    rows of `noise`; None for any other model. The clusters are equal, so drawing them in turn
    draws the data's distribution, and the export takes noise alone, as an unconditional
    model's does."""
    count = config.data.clusters.count
    if not count:
        return None
    return tf.math.floormod(tf.range(tf.shape(noise)[0], dtype=tf.int32), count)


def noise_receiver_fn(config):
    """Receiver of float32 `noise [None, z_dim]` (plus int32 `labels [None]` when conditional on
    the data's classes)."""

    def receiver_fn():
        tensors = {"noise": v1.placeholder(tf.float32, [None, config.model.z_dim], name="noise"),
                   **_generator_labels_placeholder(config)}
        return tf.estimator.export.ServingInputReceiver(tensors, tensors)

    return receiver_fn


def generator_receiver_fn(config):
    """Receiver for every generator signature: int64 `seed` + int32 `count` (+ optional
    float32 `truncation`, default 0 = none), from which the graph draws the noise, or the
    `noise` itself, which overrides the drawn noise when fed. `generator_signatures` makes one
    signature per way of asking."""
    z_dim, max_count = config.model.z_dim, config.export.max_count

    def receiver_fn():
        seed = v1.placeholder(tf.int64, [], name="seed")
        count = v1.placeholder(tf.int32, [], name="count")
        truncation = v1.placeholder_with_default(tf.constant(0.0), [], name="truncation")
        checks = [
            tf.debugging.assert_positive(count, message="count must be at least 1"),
            tf.debugging.assert_less_equal(
                count, max_count, message=f"count must be at most {max_count} (export.max_count)"),
            tf.debugging.assert_non_negative(
                truncation, message="truncation must be >= 0 (0: no truncation)"),
        ]
        with tf.control_dependencies(checks):
            drawn = stateless_noise(seed, count, z_dim, truncation)
        noise = v1.placeholder_with_default(drawn, [None, z_dim], name="noise")
        labels = _generator_labels_placeholder(config)
        features = {"noise": noise, "seed": seed, "count": count, "truncation": truncation, **labels}
        return tf.estimator.export.ServingInputReceiver(
            features, {"seed": seed, "count": count, "truncation": truncation, **labels})

    return receiver_fn


def discriminator_receiver_fn(config):
    """Receiver of float32 `samples [None, *sample_shape]` (plus `labels` when conditional)."""

    def receiver_fn():
        tensors = {"samples": v1.placeholder(tf.float32, [None, *config.model.sample_shape],
                                             name="samples"),
                   **_labels_placeholder(config)}
        return tf.estimator.export.ServingInputReceiver(tensors, tensors)

    return receiver_fn


# -------------------------------------------------------------------------------- signatures


class SignatureOutput(tf.estimator.export.PredictOutput):
    """A predict signature with its own inputs, so one PREDICT graph serves several input
    signatures (noise; seed and count), each listing only the tensors its callers feed (TF
    Serving requires a request to feed exactly a signature's inputs)."""

    def __init__(self, inputs: Dict[str, tf.Tensor], outputs: Dict[str, tf.Tensor]):
        super().__init__(outputs)
        self.inputs = dict(inputs)

    def as_signature_def(self, receiver_tensors):
        return v1.saved_model.predict_signature_def(self.inputs, self.outputs)


def checked_shape(tensor, shape: Sequence[int], name: str) -> tf.Tensor:
    """`tensor` after an in-graph check that it is `[batch, *shape]`, failing with a readable
    message instead of an obscure matmul or reshape error.

    The check reads only the runtime shape: a served graph's placeholder declares its rank,
    and Grappler folds a rank or size computed from it into a constant, so a request of
    another rank (which TF Serving does not refuse) would pass a rank check. Padding the
    runtime shape with -1s and comparing `[*shape, -1]` catches a missing or an extra axis."""
    expected = f"{name} must have shape (batch, {', '.join(str(d) for d in shape)})"
    actual = tf.shape(tensor)
    padded = tf.concat([actual, tf.fill([len(shape) + 1], -1)], 0)[1:len(shape) + 2]
    ok = tf.reduce_all(tf.equal(padded, list(shape) + [-1]))
    with tf.control_dependencies([tf.debugging.Assert(ok, [expected + "; got shape", actual])]):
        return tf.identity(tensor)


def checked_finite(tensor, name: str) -> tf.Tensor:
    """`tensor` `[batch, n]` after an in-graph check that every value is finite, failing with
    `<name> must be finite; row R, column C is nan` for the first value that is not (the
    message `ServedGenerator.from_noise` gives), instead of serving NaN samples."""
    flat = tf.reshape(tensor, [-1])
    bad = tf.logical_not(tf.math.is_finite(flat))
    # the first non-finite value; the appended True keeps argmax defined for an empty batch
    first = tf.argmax(tf.concat([bad, [True]], 0), output_type=tf.int32)
    columns = tf.maximum(tf.shape(tensor)[1], 1)
    value = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)[first]
    message = tf.strings.format(name + " must be finite; row {}, column {} is {}",
                                [first // columns, first % columns, value])
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])]):
        return tf.identity(tensor)


def checked_labels_count(tensor, labels):
    """`tensor` after an in-graph check that `labels` (if any) has one entry per row of it."""
    if labels is None:
        return tensor
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.size(labels), tf.shape(tensor)[0], message="labels must hold one class id per sample")]):
        return tf.identity(tensor)


def image_outputs(samples) -> Dict[str, tf.Tensor]:
    """Images `[B, H, W, C]` in [-1, 1] as uint8 `images` and PNG `png_bytes` [B] (TF Serving's
    REST API base64-encodes outputs whose name ends in `_bytes`); nothing for other samples."""
    if samples.shape.rank != 4 or samples.shape[-1] not in (1, 3, 4):
        return {}
    pixels = tf.cast(tf.clip_by_value(tf.round((samples + 1.0) * 127.5), 0.0, 255.0), tf.uint8)
    png = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
    return {"images": pixels, "png_bytes": png}


def feature(features, key):
    """`features[key]` for dict features; a bare tensor is the feature itself."""
    return features[key] if isinstance(features, dict) else features


def optional_feature(features, key) -> Optional[tf.Tensor]:
    return features.get(key) if isinstance(features, dict) else None


def generator_signatures(features, samples) -> Dict[str, SignatureOutput]:
    """The generator's export outputs: one signature per way of asking present in `features`
    (the noise always; seed and count when the receiver provides them)."""
    outputs = {"samples": samples, **image_outputs(samples)}
    labels = optional_feature(features, "labels")
    labelled = {} if labels is None else {"labels": labels}
    signatures = {"noise": {"noise": feature(features, "noise"), **labelled}}
    if isinstance(features, dict) and "seed" in features:
        by_seed = {"seed": features["seed"], "count": features["count"], **labelled}
        signatures["seed"] = by_seed
        signatures["seed_truncated"] = {**by_seed, "truncation": features["truncation"]}
    export_outputs = {name: SignatureOutput(inputs, outputs) for name, inputs in signatures.items()}
    export_outputs["serving_default"] = export_outputs["noise"]
    return export_outputs


def discriminator_signatures(predictions: Dict[str, tf.Tensor]):
    return {"serving_default": tf.estimator.export.PredictOutput(predictions)}


def example_inputs(config, names) -> Dict[str, np.ndarray]:
    """A small valid value for each signature input in `names`: a batch of `EXAMPLE_BATCH`
    (at most `export.max_count`): noise rows of `sampling.noise(.., seed 0)`, zero samples,
    classes in turn; seed 0, count = the batch, truncation 1. `ExportError` for an input this
    file does not know."""
    model, n = config.model, min(EXAMPLE_BATCH, config.export.max_count)
    examples = {
        "noise": lambda: sampling.noise(n, model.z_dim, 0),
        "seed": lambda: np.array(0, np.int64),
        "count": lambda: np.array(n, np.int32),
        "truncation": lambda: np.array(1.0, np.float32),
        "labels": lambda: sampling.labels_in_turn(n, model.num_classes),
        "samples": lambda: np.zeros([n, *model.sample_shape], np.float32),
    }
    unknown = sorted(set(names) - set(examples))
    if unknown:
        raise ExportError(f"signature input {unknown[0]!r} has no example value for the warm-up "
                          f"requests: add one to model.signatures.example_inputs")
    return {name: examples[name]() for name in names}

"""Sample-quality metrics as graph ops, for the `eval_metric_ops` of an EVAL spec."""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf


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

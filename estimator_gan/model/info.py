"""InfoGAN's categorical latent codes (Chen et al. 2016), read from the noise.

`model.latent_codes: [k1, k2, ...]` gives the generator categorical codes: code i is the argmax
of the next k_i noise dimensions (the first k1 for code 0, the next k2 for code 1, ...), so it is
uniform over its k_i values and the noise stays the only input (an export, a sample grid and a
resumed run need nothing else). G gets each code one-hot beside the noise; D gets a second head
that predicts the codes of the samples it judges, and both networks minimise that prediction's
cross-entropy (times `loss.info_weight`) on generated samples: a sample must show its code.
On unlabelled data with k classes, a k-valued code tends to take the classes (MNIST's digits,
one code per channel of Stacked MNIST), which makes every sample clearly one of them.

To make a sample with code i set to value j, give noise whose dimension `offset_i + j` is the
largest of code i's slice (`offset_i` = k1 + ... + k_(i-1)).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def code_width(model) -> int:
    """Columns of D's code head: one logit per code value, per packed sample."""
    return sum(model.latent_codes) * model.discriminator.packing


def codes(noise, sizes: Sequence[int]) -> tf.Tensor:
    """The codes `noise` [B, z_dim] carries: int32 [B, len(sizes)]."""
    columns, offset = [], 0
    for size in sizes:
        columns.append(tf.argmax(noise[:, offset:offset + size], axis=1, output_type=tf.int32))
        offset += size
    return tf.stack(columns, axis=1)


def with_codes(noise, sizes: Sequence[int]) -> tf.Tensor:
    """What the generator gets: the noise, then each code one-hot ([B, z_dim + sum(sizes)])."""
    if not sizes:
        return noise
    found = codes(noise, sizes)
    one_hots = [tf.one_hot(found[:, i], size, dtype=noise.dtype) for i, size in enumerate(sizes)]
    return tf.concat([noise] + one_hots, axis=1)


def code_loss(code_logits, noise, sizes: Sequence[int]) -> tf.Tensor:
    """Mean over samples, summed over codes, of the cross-entropy of D's code logits
    [B, sum(sizes)] against the codes of `noise` (at least one code)."""
    found = codes(noise, sizes)
    total, offset = 0.0, 0
    for i, size in enumerate(sizes):
        total += tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=found[:, i], logits=code_logits[:, offset:offset + size]))
        offset += size
    return total

"""What a request for samples is made of: the noise drawn from a seed and the class labels.

One place for both, so that `GAN.generate`, evaluation, the sample pictures, `generate` and an
exported generator's Python client draw the same noise for the same seed and give a conditional
model the same labels.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from estimator_gan.errors import ExportError


def noise(count: int, z_dim: int, seed: int) -> np.ndarray:
    """Standard normal float32 noise `[count, z_dim]`, a pure function of `seed`."""
    return np.random.RandomState(seed).standard_normal((count, z_dim)).astype(np.float32)


def labels_in_turn(count: int, num_classes: int) -> np.ndarray:
    """Class ids 0, 1, ..., num_classes - 1, 0, 1, ... as int32 `[count]`."""
    return (np.arange(count) % max(int(num_classes), 1)).astype(np.int32)


def class_labels(labels, count: int, num_classes: int) -> np.ndarray:
    """The labels of `count` samples of a conditional model as int32 `[count]`.

    `labels` is None (the classes in turn), one class id for every sample, or one per sample.
    Raises `ExportError` naming the problem for ids that are not whole numbers, the wrong count,
    or ids outside [0, num_classes).
    """
    if labels is None:
        return labels_in_turn(count, num_classes)
    ids = np.asarray(labels)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not (np.issubdtype(ids.dtype, np.number) and np.all(np.mod(ids, 1) == 0)):
            raise ExportError(f"labels must be integer class ids, got {ids.ravel()[:5].tolist()}")
    ids = ids.astype(np.int64)
    ids = np.full((count,), ids) if ids.ndim == 0 else ids.reshape(-1)
    if ids.shape[0] != count:
        raise ExportError(f"{ids.shape[0]} labels for {count} samples")
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ExportError(f"label {int(bad[0])} is out of range: this model has classes "
                          f"0..{num_classes - 1}")
    return ids.astype(np.int32)


def request_labels(conditional: bool, num_classes: Optional[int], labels, count: int):
    """`class_labels` for a conditional model; None for an unconditional one, which refuses
    labels with an `ExportError`."""
    if conditional:
        return class_labels(labels, count, num_classes or 1)
    if labels is not None:
        raise ExportError("labels given, but the model is not conditional (model.conditional=false)")
    return None


def with_codes(noise_batch: np.ndarray, sizes, codes) -> np.ndarray:
    """`noise_batch` with its InfoGAN codes (`model.latent_codes` of these `sizes`, see
    `model.info`) set to `codes`: one value per code, or None to leave a code as drawn. Within a
    code's slice the largest value trades places with the chosen position, so the noise keeps
    the distribution it has given that code. `ExportError` for the wrong count or a value out of
    range."""
    sizes = list(sizes)
    if not sizes:
        raise ExportError("codes given, but the model has no latent codes (model.latent_codes=[])")
    codes = list(codes)
    if len(codes) != len(sizes):
        raise ExportError(f"{len(codes)} code values for a model with {len(sizes)} latent codes {sizes}")
    out, offset = np.array(noise_batch, copy=True), 0
    rows = np.arange(out.shape[0])
    for size, value in zip(sizes, codes):
        if value is not None:
            if not 0 <= int(value) < size:
                raise ExportError(f"code value {value} is out of range: this code has values 0..{size - 1}")
            part = out[:, offset:offset + size]
            top = np.argmax(part, axis=1)
            chosen = part[rows, int(value)].copy()
            part[rows, int(value)] = part[rows, top]
            part[rows, top] = chosen
        offset += size
    return out

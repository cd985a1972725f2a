"""Cluster labels for unlabelled data (`data.clusters`): a conditional GAN on its own clusters.

A GAN told which part of the data to draw (a label) covers the data's modes more evenly and
draws each more clearly than one that must find them itself; the shipped conditional MNIST
config shows the difference. Unlabelled data gets labels from its own structure instead
(cluster-conditional GANs; Liu et al. 2020, "Diverse Image Generation via Self-Conditioned
GANs", cluster once in a feature space and condition G and D on the cluster). Here the
features are the examples' leading principal components, and the clusters are *balanced*
(every cluster holds the same number of examples, up to one): a generator drawing the clusters
in turn, as the export and the evaluation do, then draws the data's own distribution.

`balanced_kmeans(x, count, seed)` is a pure function of its arguments (on one build of numpy
and its BLAS): a resumed run and every worker of a TF_CONFIG cluster on like machines get the
same labels.
"""
from __future__ import annotations

import numpy as np

from estimator_gan.data import images as image_lib

PCA_DIMS = 64
PCA_SAMPLE = 10_000
ITERATIONS = 20
BALANCED_ITERATIONS = 5
_CHUNK = 8192


def _flat_float(x: np.ndarray, rows) -> np.ndarray:
    return image_lib.to_float(x[rows]).reshape(len(rows), -1)


def pca_features(x: np.ndarray, dims: int, rng: np.random.RandomState) -> np.ndarray:
    """`x` [N, ...] (uint8 images or floats) -> its leading `dims` principal components
    [N, dims] float32, fitted on a seeded sample of at most PCA_SAMPLE examples (a randomized
    SVD, so wide images stay cheap) and applied to all in chunks."""
    n = len(x)
    sample = _flat_float(x, np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False)))
    mean = sample.mean(0)
    centred = sample - mean
    dims = min(dims, *centred.shape)
    basis = centred.T @ rng.standard_normal((len(centred), dims + 10)).astype(np.float32)
    for _ in range(2):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    _, _, vt = np.linalg.svd(centred @ basis, full_matrices=False)
    components = (basis @ vt.T)[:, :dims]
    out = np.empty((n, dims), np.float32)
    for start in range(0, n, _CHUNK):
        rows = np.arange(start, min(n, start + _CHUNK))
        out[rows] = (_flat_float(x, rows) - mean) @ components
    return out


def _sq_distances(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (f * f).sum(1, keepdims=True) - 2.0 * f @ centres.T + (centres * centres).sum(1)
    return np.maximum(d, 0.0)


def _plus_plus(f: np.ndarray, count: int, rng: np.random.RandomState) -> np.ndarray:
    centres = [f[rng.randint(len(f))]]
    closest = _sq_distances(f, centres[0][None])[:, 0]
    for _ in range(count - 1):
        total = closest.sum()
        pick = rng.randint(len(f)) if total <= 0 else rng.choice(len(f), p=closest / total)
        centres.append(f[pick])
        closest = np.minimum(closest, _sq_distances(f, f[pick][None])[:, 0])
    return np.stack(centres)


def balanced_assignment(distances: np.ndarray) -> np.ndarray:
    """Labels [N] for distances [N, k] such that cluster j gets N // k examples, plus one for
    the first N % k clusters: in rounds, every unplaced example proposes its nearest cluster
    that has room, and each cluster takes its nearest proposers up to its room."""
    n, k = distances.shape
    room = np.full(k, n // k, np.int64)
    room[: n % k] += 1
    labels = np.full(n, -1, np.int64)
    waiting = np.arange(n)
    while waiting.size:
        d = distances[waiting].copy()
        d[:, room == 0] = np.inf
        choice = d.argmin(1)
        dist = d[np.arange(len(waiting)), choice]
        order = np.lexsort((dist, choice))
        chosen = choice[order]
        rank = np.arange(len(order)) - np.searchsorted(chosen, chosen, side="left")
        take = rank < room[chosen]
        labels[waiting[order[take]]] = chosen[take]
        room -= np.bincount(chosen[take], minlength=k)
        waiting = waiting[order[~take]]
    return labels


def balanced_kmeans(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """int32 cluster ids [N] in [0, count) of the examples `x` [N, ...], every cluster the same
    size up to one: k-means++ and Lloyd's iterations on the leading principal components, then
    Lloyd's iterations with the balanced assignment. Raises ValueError when there are fewer
    examples than clusters."""
    if len(x) < count:
        raise ValueError(f"{len(x)} examples cannot fill {count} clusters")
    rng = np.random.RandomState(seed)
    f = pca_features(x, PCA_DIMS, rng)
    centres = _plus_plus(f[rng.choice(len(f), min(len(f), PCA_SAMPLE), replace=False)], count, rng)
    for step in range(ITERATIONS + BALANCED_ITERATIONS):
        distances = _sq_distances(f, centres)
        labels = (distances.argmin(1) if step < ITERATIONS else balanced_assignment(distances))
        for j in range(count):
            members = f[labels == j]
            if len(members):
                centres[j] = members.mean(0)
    return balanced_assignment(_sq_distances(f, centres)).astype(np.int32)

"""Sample-quality metrics in numpy: Fréchet distance, kernel (KID) distance, the classifier
score, mode metrics of 2D mixtures, and fixed features for unlabelled images.

The formulas take features from any network: the reference Inception graph
(`evaluation.inception`, the numbers papers report), a classifier trained on the data set's own
labels (`evaluation.classifier`, offline), or `fallback_features`, a fixed random projection of
downsampled pixels (pixel statistics, not semantic quality). 2D mixture data is judged directly
against the known modes (`mixture_mode_metrics`).

FID and KID depend on the sample size (FID is biased upwards for small N), so a value on its
own says little: the evaluation always reports the real-vs-real reference at the same size.
All statistics are computed in float64; functions take numpy arrays and return Python floats or
dicts of them.
"""
from __future__ import annotations

from typing import Dict, List, Union

import numpy as np

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
    The trace of the matrix square root comes from the eigenvalues of a symmetric PSD matrix
    with the same non-zero eigenvalues as S_a S_b, which stays stable for singular covariances
    (unlike `sqrtm`): S_a^1/2 S_b S_a^1/2 [D, D], or, when the smaller set has n <= D rows,
    C S_other C^T [n, n] with C its centred rows over sqrt(n - 1) (S = C^T C), which is much
    cheaper for e.g. 1,000 samples of 2,048 Inception features.
    """
    a, b = _as_feature_pair(feats_a, feats_b)
    if len(a) < len(b):
        a, b = b, a
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    if len(b) <= b.shape[1]:
        centred_b = (b - mu_b) / np.sqrt(len(b) - 1.0)
        trace_b = float(np.sum(centred_b ** 2))
        m = centred_b @ cov_a @ centred_b.T
    else:
        cov_b = np.atleast_2d(np.cov(b, rowvar=False))
        trace_b = float(np.trace(cov_b))
        root_a = _sqrt_psd(cov_a)
        m = root_a @ cov_b @ root_a
    m = (m + m.T) / 2.0
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + trace_b - 2.0 * tr_covmean
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

    Computed on `num_splits` contiguous splits, rows [i N / s, (i + 1) N / s) rounded down as
    improved-gan splits them (p(y) is each split's mean row); returns {"mean", "std"} over the
    splits. Ranges from 1 (one class, or uninformative rows) to K.
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
    n = p.shape[0]
    for i in range(num_splits):
        part = p[i * n // num_splits:(i + 1) * n // num_splits]
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

    Returns: modes_covered, modes_covered_any (the rule of the mode-collapse papers, VEEGAN and
    PacGAN: a mode holding at least one high-quality point), num_modes, high_quality_share
    (fraction of all points that are high quality), kl_to_uniform (the reverse KL, KL(p ||
    uniform) in nats, of the high-quality histogram p over modes: 0 for a perfect spread, log K
    for a single mode, NaN if no point is high quality), counts (per-mode high-quality counts)
    and min_count_for_coverage.
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
        "modes_covered_any": int(np.sum(counts >= 1)),
        "num_modes": int(num_modes),
        "high_quality_share": float(good.mean()),
        "kl_to_uniform": kl,
        "counts": [int(c) for c in counts],
        "min_count_for_coverage": float(min_count),
    }


def mode_histogram_metrics(modes, num_modes: int) -> Dict[str, Union[int, float]]:
    """Mode coverage of discrete mode ids (e.g. Stacked MNIST's digit triples, 0..999).

    Returns modes_covered (modes holding at least one sample, the VEEGAN/PacGAN count),
    num_modes, and kl_to_uniform: KL(p || uniform) in nats of the samples' mode histogram p,
    0 for a perfect spread and log(num_modes) for a single mode. A finite sample of a uniform
    distribution is not at 0: N samples over K modes give about (K - 1) / (2N), which is why
    the evaluation reports a real-vs-real row beside it.
    """
    ids = np.asarray(modes).reshape(-1)
    if ids.size == 0:
        raise ValueError("modes is empty")
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_modes:
        raise ValueError(f"modes must be integers in [0, {num_modes})")
    p = np.bincount(ids, minlength=num_modes) / ids.size
    nz = p > 0
    return {"modes_covered": int(nz.sum()), "num_modes": int(num_modes),
            "kl_to_uniform": float(np.sum(p[nz] * np.log(p[nz] * num_modes)))}


def factor_kl(factors, num_values: int) -> float:
    """The sum over columns of `[N, F]` integer `factors` (e.g. Stacked MNIST's three digits)
    of KL(column histogram || uniform over num_values), in nats.

    The KL of the joint histogram (`mode_histogram_metrics` of the combined ids) is this sum
    plus the factors' dependence (their total correlation), so the two side by side tell a
    generator that misdraws or favours some digits in every channel (joint KL close to this
    sum) from one that drops or favours digit triples (joint KL well above it).
    """
    codes = np.asarray(factors)
    if codes.ndim != 2 or codes.size == 0:
        raise ValueError(f"factors must be a non-empty [N, F] array, got shape {codes.shape}")
    return float(sum(mode_histogram_metrics(codes[:, i], num_values)["kl_to_uniform"]
                     for i in range(codes.shape[1])))


def class_shares(probs) -> np.ndarray:
    """The share of samples a classifier assigns (argmax) to each class, from `[N, K]` rows."""
    p = np.asarray(probs, dtype=np.float64)
    return np.bincount(np.argmax(p, axis=1), minlength=p.shape[1]) / max(p.shape[0], 1)


def as_images(images, name: str = "images") -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"{name} must be a 4-D [N, H, W, C] array, got shape {images.shape}")
    if images.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    return images


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
    images = as_images(images).astype(np.float64)
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

import math
import os

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from estimator_gan.evaluation import classifier as classifier_lib
from estimator_gan.evaluation import metrics as ev

# Keras 2.15 seeds its initializers with random.randint(1, 1e9).
pytestmark = pytest.mark.filterwarnings("ignore:non-integer arguments to randrange")


def _closed_form_fd(mu1, s1, mu2, s2):
    root1 = scipy.linalg.sqrtm(s1).real
    covmean = scipy.linalg.sqrtm(root1 @ s2 @ root1).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _sample_fd_with_sqrtm(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def _random_cov(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


@pytest.mark.parametrize("full", [False, True])
def test_frechet_distance_matches_closed_form(full):
    rng = np.random.default_rng(1)
    dim = 4
    mu1, mu2 = np.zeros(dim), np.array([1.0, -0.5, 0.25, 0.0])
    if full:
        s1, s2 = _random_cov(rng, dim), _random_cov(rng, dim)
    else:
        s1, s2 = np.diag([1.0, 2.0, 0.5, 1.5]), np.diag([0.5, 1.0, 2.0, 1.0])
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    fd = ev.frechet_distance(a, b)
    assert fd == pytest.approx(_closed_form_fd(mu1, s1, mu2, s2), abs=0.05)
    assert fd == pytest.approx(_sample_fd_with_sqrtm(a, b), rel=1e-6)


def test_frechet_distance_exact_on_small_sample():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 16))
    b = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3
    assert ev.frechet_distance(a, b) == pytest.approx(_sample_fd_with_sqrtm(a, b), rel=1e-6)


def test_frechet_distance_zero_for_identical_and_monotone_in_shift():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((500, 8))
    assert ev.frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-8)
    shifts = [0.0, 0.1, 0.5, 1.0, 2.0]
    values = [ev.frechet_distance(a, a + s) for s in shifts]
    assert all(x < y for x, y in zip(values, values[1:]))
    assert values[-1] == pytest.approx(8 * 2.0 ** 2, rel=1e-6)


def test_frechet_distance_handles_singular_covariance():
    rng = np.random.default_rng(4)
    a = np.zeros((100, 5))
    a[:, 0] = rng.standard_normal(100)
    b = rng.standard_normal((100, 5))
    assert math.isfinite(ev.frechet_distance(a, b))
    with pytest.raises(ValueError):
        ev.frechet_distance(a, b[:, :4])


def test_kernel_distance_same_distribution_near_zero_and_grows_with_shift():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2000, 16))
    same = [ev.kernel_distance(a, rng.standard_normal((2000, 16)), subset_size=500,
                               seed=s)["mean"] for s in range(6)]
    assert max(abs(v) for v in same) < 0.01
    assert abs(np.mean(same)) < 0.002
    assert min(same) < 0 < max(same)
    kids = [ev.kernel_distance(a, a + s, subset_size=500)["mean"] for s in (0.25, 0.5, 1.0)]
    assert kids[0] > 0.01
    assert kids[0] < kids[1] < kids[2]
    result = ev.kernel_distance(a, a + 1.0, subset_size=500)
    assert set(result) == {"mean", "std"} and result["std"] >= 0


def test_kernel_distance_is_seeded():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 0.2
    assert ev.kernel_distance(a, b, subset_size=100, seed=7) == \
        ev.kernel_distance(a, b, subset_size=100, seed=7)


def test_classifier_score_extremes():
    k = 10
    one_hot = np.eye(k)[np.arange(1000) % k]
    assert ev.classifier_score(one_hot)["mean"] == pytest.approx(k)
    assert ev.classifier_score(one_hot)["std"] == pytest.approx(0.0, abs=1e-9)
    same = np.eye(k)[np.zeros(1000, dtype=int)]
    assert ev.classifier_score(same)["mean"] == pytest.approx(1.0)
    uniform = np.full((1000, k), 1.0 / k)
    assert ev.classifier_score(uniform)["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ev.classifier_score(np.full((10, k), 0.5))


def _ring(num_modes=8, radius=2.0):
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_mixture_metrics_on_true_distribution():
    rng = np.random.default_rng(8)
    centres = _ring()
    points = centres[rng.integers(0, 8, 10_000)] + 0.02 * rng.standard_normal((10_000, 2))
    m = ev.mixture_mode_metrics(points, centres, std=0.02)
    assert m["modes_covered"] == 8 and m["num_modes"] == 8
    assert m["high_quality_share"] > 0.95
    assert m["kl_to_uniform"] < 0.05
    assert sum(m["counts"]) == round(m["high_quality_share"] * 10_000)


def test_mixture_metrics_single_mode_and_noise():
    rng = np.random.default_rng(9)
    centres = _ring()
    points = centres[3] + 0.02 * rng.standard_normal((1000, 2))
    m = ev.mixture_mode_metrics(points, centres, std=0.02)
    assert m["modes_covered"] == 1
    assert m["kl_to_uniform"] == pytest.approx(math.log(8), abs=1e-6)

    far = rng.uniform(10, 20, size=(1000, 2))
    m = ev.mixture_mode_metrics(far, centres, std=0.02)
    assert m["high_quality_share"] == pytest.approx(0.0, abs=1e-3)
    assert m["modes_covered"] == 0


def test_mixture_metrics_few_stray_points_do_not_cover_a_mode():
    rng = np.random.default_rng(10)
    centres = _ring()
    points = centres[0] + 0.02 * rng.standard_normal((800, 2))
    points[:3] = centres[5]
    m = ev.mixture_mode_metrics(points, centres, std=0.02)
    assert m["counts"][5] == 3
    assert m["modes_covered"] == 1
    assert m["modes_covered_any"] == 2  # the papers' rule counts the three strays' mode


def test_class_shares_count_argmax_per_class():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(ev.class_shares(probs), [0.5, 0.25, 0.25])
    assert ev.class_shares(probs[:2]).min() == 0.0


def _pattern_images(rng, n, size=8):
    yy, xx = np.mgrid[:size, :size]
    patterns = np.stack([
        np.where(yy % 2 == 0, 1.0, -1.0),
        np.where(xx % 2 == 0, 1.0, -1.0),
        np.where((xx + yy) % 2 == 0, 1.0, -1.0),
    ])
    labels = rng.integers(0, 3, n)
    images = patterns[labels] + 0.3 * rng.standard_normal((n, size, size))
    return np.clip(images, -1, 1)[..., None].astype(np.float32), labels


@pytest.fixture(scope="module")
def classifier_setup(tmp_path_factory):
    rng = np.random.default_rng(11)
    images, labels = _pattern_images(rng, 600)
    cache = str(tmp_path_factory.mktemp("clf") / "classifier.keras")
    clf = classifier_lib.train_feature_classifier(images[:300], labels[:300], 3, cache_path=cache,
                                      epochs=4, batch_size=32)
    return clf, cache, images, labels


def test_feature_classifier_trains_and_caches(classifier_setup):
    clf, cache, images, labels = classifier_setup
    test_x, test_y = images[300:], labels[300:]
    assert clf.accuracy(test_x, test_y) > 0.95
    feats = clf.features(test_x)
    assert feats.shape == (300, 128)
    probs = clf.probabilities(test_x)
    assert probs.shape == (300, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    assert os.path.exists(cache)
    assert [f for f in os.listdir(os.path.dirname(cache)) if f.startswith(".tmp")] == []
    loaded = classifier_lib.train_feature_classifier(images[:300], labels[:300], 3, cache_path=cache)
    np.testing.assert_array_equal(loaded.features(test_x), feats)

    with pytest.raises(ValueError, match="shape"):
        clf.features(np.zeros((4, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        classifier_lib.train_feature_classifier(np.zeros((4, 16, 16, 1), np.float32), np.zeros(4, int), 3,
                                    cache_path=cache)
    with pytest.raises(ValueError, match="classes"):
        classifier_lib.train_feature_classifier(images[:4], np.zeros(4, int), 5, cache_path=cache)


def test_feature_space_real_floor_below_noise(classifier_setup):
    clf, _, images, _ = classifier_setup
    rng = np.random.default_rng(12)
    real_a = clf.features(images[:300])
    real_b = clf.features(images[300:])
    noise = clf.features(rng.uniform(-1, 1, images[:300].shape).astype(np.float32))
    probs = clf.probabilities(images[300:])
    m = ev.image_metrics(real_a, noise, real_ref_feats=real_b, fake_probs=probs,
                         kid_subset_size=200, num_splits=3)
    assert m["frechet_distance_real_ref"] < m["frechet_distance"]
    assert m["kid_real_ref"] < m["kid_mean"]
    assert m["classifier_score"] > 2.5
    with pytest.raises(ValueError):
        ev.image_metrics(real_a, noise, real_ref_feats=real_b[:100])


def test_feature_classifier_requires_eager():
    images = np.zeros((4, 8, 8, 1), np.float32)
    with tf.Graph().as_default():
        with pytest.raises(RuntimeError, match="eager"):
            classifier_lib.train_feature_classifier(images, np.array([0, 1, 0, 1]), 2)


def test_fallback_features_deterministic():
    rng = np.random.default_rng(13)
    images = rng.uniform(-1, 1, (5, 28, 28, 3)).astype(np.float32)
    f1 = ev.fallback_features(images)
    f2 = ev.fallback_features(images.copy())
    assert f1.shape == (5, 64)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(ev.fallback_features(images[:2]), f1[:2])
    assert ev.fallback_features(np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 64)
    # a 32x32 image made of constant 2x2 blocks downsamples to exactly its 16x16 version
    small = rng.uniform(-1, 1, (3, 16, 16, 1))
    big = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(ev.fallback_features(big), ev.fallback_features(small),
                               atol=1e-5)

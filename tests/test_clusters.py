"""Cluster labels for unlabelled data (`data.clusters`): balanced, deterministic, found in the
data's structure, and fed to a conditional model in place of the source's labels."""
import os

import numpy as np
import pytest

from estimator_gan import config as config_lib
from estimator_gan.config import ConfigError, DataConfig
from estimator_gan.data import clusters, pipeline
from estimator_gan import GAN, sampling
from estimator_gan.errors import DataError, ExportError
from estimator_gan.serving import saved_model

from conftest import SHARED_MNIST


def blobs(per_blob=(30, 30, 30, 30), size=8, seed=0):
    """uint8 images of len(per_blob) patterns plus noise, in a shuffled order; their pattern ids."""
    rng = np.random.RandomState(seed)
    patterns = rng.randint(0, 256, (len(per_blob), size, size, 1))
    ids = rng.permutation(np.repeat(np.arange(len(per_blob)), per_blob))
    x = np.clip(patterns[ids] + rng.randint(-20, 21, (len(ids), size, size, 1)), 0, 255)
    return x.astype(np.uint8), ids


def same_partition(a, b):
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_balanced_assignment_fills_every_cluster_to_its_share():
    distances = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 0.0], [0.5, 9.0]])
    labels = clusters.balanced_assignment(distances)
    assert np.bincount(labels).tolist() == [3, 2]
    # cluster 0 keeps its three nearest; the farthest of its proposers moves to cluster 1
    assert labels.tolist() == [0, 0, 1, 1, 0]


def test_balanced_kmeans_finds_the_patterns_in_equal_clusters_deterministically():
    x, ids = blobs()
    labels = clusters.balanced_kmeans(x, 4, seed=0)
    assert labels.dtype == np.int32 and labels.shape == (120,)
    assert np.bincount(labels).tolist() == [30, 30, 30, 30]
    assert same_partition(labels, ids)
    assert (clusters.balanced_kmeans(x, 4, seed=0) == labels).all()
    x, _ = blobs(per_blob=(30, 30, 30, 31))
    assert np.bincount(clusters.balanced_kmeans(x, 4, seed=0)).tolist() == [31, 30, 30, 30]
    with pytest.raises(ValueError, match="3 examples cannot fill 4 clusters"):
        clusters.balanced_kmeans(x[:3], 4, seed=0)


def test_unequal_groups_still_give_equal_clusters():
    x, ids = blobs(per_blob=(70, 20, 20, 10))
    labels = clusters.balanced_kmeans(x, 4, seed=1)
    assert np.bincount(labels).tolist() == [30, 30, 30, 30]
    assert all(len(set(labels[ids == b].tolist())) == 1 for b in (1, 2, 3))  # small groups kept whole


def test_pipeline_labels_the_examples_with_their_clusters(tmp_path, capsys):
    x, ids = blobs()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(len(x), np.int64))
    cfg = DataConfig(source="npy", path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy"),
                     batch_size=11, clusters={"count": 4, "seed": 0})
    got = list(pipeline.make_input_fn(cfg, training=False)().as_numpy_iterator())
    assert "npy: 4 clusters of 30 examples as labels (balanced k-means" in capsys.readouterr().err
    labels = np.concatenate([y for _, y in got])
    assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1, 2, 3}
    assert same_partition(labels, ids[: len(labels)])


def test_cluster_settings_that_cannot_work_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.clusters labels the examples for a conditional model"):
        config_lib.config_from_dict({"data": {"clusters": {"count": 4}}})
    with pytest.raises(ConfigError, match="model.num_classes 3 differs from data.clusters.count 4"):
        config_lib.config_from_dict({"data": {"clusters": {"count": 4}},
                                     "model": {"conditional": True, "num_classes": 3}})
    resolved = config_lib.resolve(config_lib.config_from_dict(
        {"data": {"clusters": {"count": 7}}, "model": {"conditional": True}}))
    assert resolved.model.num_classes == 7
    x, _ = blobs(per_blob=(2, 2))
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="npy: 4 examples cannot fill data.clusters.count=5 clusters"):
        pipeline.make_input_fn(DataConfig(source="npy", path=str(tmp_path / "x.npy"), batch_size=2,
                                          clusters={"count": 5}))
    from PIL import Image

    os.makedirs(tmp_path / "png")
    for k in range(4):
        Image.fromarray(x[k, :, :, 0]).save(tmp_path / "png" / f"{k}.png")
    with pytest.raises(DataError, match="images: data.clusters needs the examples in memory"):
        pipeline.make_input_fn(DataConfig(source="images", path=str(tmp_path / "png"), image_size=8,
                                          channels=1, batch_size=2, cache=False,
                                          clusters={"count": 2}))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="the shared MNIST test set is absent")
def test_mnist_clusters_follow_the_digits_without_seeing_a_label():
    config = config_lib.load_config("mnist_unconditional", [f"data.path={SHARED_MNIST}"])
    x, y = pipeline.load_examples(config.data)
    labels = clusters.balanced_kmeans((x * 127.5 + 127.5).round().astype(np.uint8), 10, seed=0)
    purity = sum(np.bincount(y[labels == j]).max() for j in range(10)) / len(y)
    assert np.bincount(labels).tolist() == [500] * 10
    assert purity > 0.5  # one digit class would be 0.11


@pytest.mark.slow
def test_a_cluster_conditional_packed_gan_trains_exports_and_draws_every_cluster(tmp_path, capsys):
    from estimator_gan import cli

    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
    sets = ["data.clusters.count=5", "model.conditional=true", "model.discriminator.packing=2",
            "model.z_dim=8", "model.generator.filters=4", "model.discriminator.filters=4",
            "data.batch_size=8", "train.max_steps=3", "train.save_checkpoints_steps=3",
            "train.sample_grid=2", "export.standing_batches=2"]
    args = [x for s in sets for x in ("--set", s)]
    assert cli.main(["train", "--model-dir", model_dir, *args]) == 0
    assert "digits: 5 clusters of 359 examples as labels" in capsys.readouterr().err
    saved = config_lib.load_model_dir_config(model_dir)
    assert saved.model.num_classes == 5 and saved.data.clusters.count == 5
    assert cli.main(["export", "--model-dir", model_dir, "--export-dir", export_dir,
                     "--generator-only"]) == 0
    # The export takes noise alone, as an unconditional model's does, and draws the clusters
    # in turn: one noise row repeated gives cluster 0's sample again five rows on, not the next.
    served = saved_model.load_generator(export_dir)
    assert sorted(served.model.signatures["serving_default"].structured_input_signature[1]) == ["noise"]
    assert sorted(served.model.signatures["seed"].structured_input_signature[1]) == ["count", "seed"]
    samples = served.from_noise(np.repeat(sampling.noise(1, 8, 0), 10, axis=0))["samples"]
    np.testing.assert_allclose(samples[5], samples[0], atol=1e-6)
    assert np.abs(samples[1] - samples[0]).max() > 1e-4
    out = str(tmp_path / "x.npy")
    assert cli.main(["generate", "--export", export_dir, "--count", "10", "--out", out]) == 0
    assert np.load(out).shape == (10, 16, 16, 1)
    capsys.readouterr()
    assert cli.main(["generate", "--export", export_dir, "--count", "2", "--labels", "1",
                     "--out", out]) == 2
    assert "draws its 5 clusters (data.clusters) in turn itself" in capsys.readouterr().err
    gan = GAN(saved, model_dir=model_dir)  # from the checkpoint, a cluster can be picked
    assert gan.generate(2, labels=4).shape == (2, 16, 16, 1)
    with pytest.raises(ExportError, match="0..4"):
        gan.generate(2, labels=5)

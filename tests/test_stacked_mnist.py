"""Stacked MNIST: the data source (shapes, determinism, split separation, modes), the mode metric
(a hand-made histogram gives the known KL; real stacks cover ~1,000 modes, a collapsed set does
not), and MNIST from Keras' cache when `data.path` is not set."""
import gzip
import os
import struct

import numpy as np
import pytest

from estimator_gan import config as config_lib
from estimator_gan.config import DataConfig, SplitConfig, StackedConfig
from estimator_gan.data import pipeline, sources
from estimator_gan.errors import DataError
from estimator_gan.evaluation import evaluate
from estimator_gan.evaluation.metrics import factor_kl, mode_histogram_metrics

from conftest import SHARED_MNIST


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.asarray(array, np.uint8).tobytes())


def digit_files(folder, n=40):
    """MNIST-format files whose digit k has its label in pixel (0, 0) and its index in (0, 1)."""
    x = np.zeros((n, 28, 28), np.uint8)
    y = np.arange(n) % 10
    x[:, 0, 0] = y * 20
    x[:, 0, 1] = np.arange(n)
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"), x, 2051)
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), y, 2049)
    return x, y


def stacked_cfg(path, **fields):
    fields.setdefault("stacked", StackedConfig(num_examples=200, seed=3))
    return DataConfig(source="stacked_mnist", path=str(path), **fields)


def test_stacked_source_shapes_modes_and_determinism(tmp_path):
    digit_files(tmp_path)
    cfg = stacked_cfg(tmp_path)
    x, y = pipeline.load_examples(cfg)
    assert x.shape == (200, 28, 28, 3) and x.dtype == np.float32
    assert y.shape == (200,) and 0 <= y.min() and y.max() < 1000
    # each channel is one whole digit, and the label is the triple of the channels' digits
    raw = sources.load(cfg)
    digit_of = raw.x[:, 0, 0, :].astype(int) // 20
    assert np.array_equal(y, digit_of @ np.array([100, 10, 1]))
    assert sources.sample_shape(cfg) == (28, 28, 3) and sources.num_classes(cfg) == 1000
    # the same seed gives the same stacks; another seed others
    again = sources.load(cfg)
    assert np.array_equal(raw.x, again.x) and np.array_equal(raw.y, again.y)
    other = sources.load(stacked_cfg(tmp_path, stacked=StackedConfig(num_examples=200, seed=4)))
    assert not np.array_equal(raw.x, other.x)
    # the training stream is deterministic too (exact resume rests on it)
    a = pipeline.make_input_fn(cfg.model_copy(update={"batch_size": 8}), seed=1)()
    b = pipeline.make_input_fn(cfg.model_copy(update={"batch_size": 8}), seed=1)()
    for (xa, ya), (xb, yb) in zip(a.take(3).as_numpy_iterator(), b.take(3).as_numpy_iterator()):
        assert xa.shape == (8, 28, 28, 3) and np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_stacked_split_divides_the_digits_before_stacking(tmp_path):
    digit_files(tmp_path)
    split = SplitConfig(fraction=0.5, part="first", seed=0)
    first = sources.load(stacked_cfg(tmp_path, split=split))
    second = sources.load(stacked_cfg(tmp_path, split=split.complement()))
    used_first = set(first.x[:, 0, 1, :].reshape(-1))
    used_second = set(second.x[:, 0, 1, :].reshape(-1))
    assert used_first and used_second and not used_first & used_second
    assert len(used_first | used_second) == 40  # every digit is in one part (200 stacks of 20)


def test_stacked_source_refuses_one_channel_and_missing_files(tmp_path):
    digit_files(tmp_path)
    with pytest.raises(DataError, match="3 channels, data.channels is 1"):
        sources.load(stacked_cfg(tmp_path, channels=1))
    with pytest.raises(DataError, match="does not exist"):
        sources.load(stacked_cfg(tmp_path / "nowhere"))


def test_mnist_without_a_path_reads_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(tmp_path / "datasets")
    x = np.full((6, 28, 28), 7, np.uint8)
    np.savez(tmp_path / "datasets" / "mnist.npz", x_train=x, y_train=np.arange(6) % 10,
             x_test=x[:2], y_test=np.arange(2))
    images, labels = pipeline.load_examples(DataConfig(source="mnist"))
    assert images.shape == (8, 28, 28, 1) and list(labels) == [0, 1, 2, 3, 4, 5, 0, 1]


def test_mnist_without_a_path_offline_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import tensorflow as tf

    def offline():
        raise Exception("URL fetch failure on https://example.invalid/mnist.npz: None")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(tf.keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError) as err:
        pipeline.load_examples(DataConfig(source="stacked_mnist"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "datasets" / "mnist.npz") in message
    assert "data.path" in message and "URL fetch failure" in message


def test_shipped_mnist_configs_point_at_no_local_path():
    for name in ("mnist_dcgan", "mnist_unconditional", "stacked_mnist"):
        cfg = config_lib.load_config(name)
        assert cfg.data.path is None, name
    stacked = config_lib.load_config("stacked_mnist")
    assert stacked.data.source == "stacked_mnist" and not stacked.model.conditional
    assert stacked.eval.num_samples == 26000
    unlabelled = config_lib.load_config("mnist_unconditional")
    assert unlabelled.data.clusters.count == 50  # conditioned on its own clusters, not the labels


# ----------------------------------------------------------------------------- the mode metric


def test_mode_histogram_metrics_known_values():
    uniform = mode_histogram_metrics(np.arange(1000), 1000)
    assert uniform == {"modes_covered": 1000, "num_modes": 1000, "kl_to_uniform": 0.0}
    single = mode_histogram_metrics(np.full(50, 17), 1000)
    assert single["modes_covered"] == 1 and single["kl_to_uniform"] == pytest.approx(np.log(1000))
    # half the modes, evenly: KL = log 2; 3:1 over two modes of four: sum p log(4p)
    half = mode_histogram_metrics(np.repeat(np.arange(500), 3), 1000)
    assert half["modes_covered"] == 500 and half["kl_to_uniform"] == pytest.approx(np.log(2))
    skew = mode_histogram_metrics(np.array([0, 0, 0, 1]), 4)
    assert skew["kl_to_uniform"] == pytest.approx(0.75 * np.log(3.0) + 0.25 * np.log(1.0))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        mode_histogram_metrics(np.array([1000]), 1000)


def test_factor_kl_splits_the_joint_kl_into_channels_and_dependence():
    every = np.stack(np.unravel_index(np.arange(1000), (10, 10, 10)), axis=1)
    assert factor_kl(every, 10) == 0.0
    # red never draws 5-9: the whole joint KL (log 2) is one channel's
    low_red = every[every[:, 0] < 5]
    joint = mode_histogram_metrics(low_red @ np.array([100, 10, 1]), 1000)["kl_to_uniform"]
    assert factor_kl(low_red, 10) == pytest.approx(joint) == pytest.approx(np.log(2))
    # every channel uniform but green always equals red: the joint KL (log 10) is all dependence
    tied = every[every[:, 0] == every[:, 1]]
    assert factor_kl(tied, 10) == pytest.approx(0.0, abs=1e-12)
    assert mode_histogram_metrics(tied @ np.array([100, 10, 1]), 1000)["kl_to_uniform"] == \
        pytest.approx(np.log(10))
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        factor_kl(np.arange(5), 10)


@pytest.fixture(scope="module")
def stacked_metrics(tmp_path_factory):
    if not os.path.isdir(SHARED_MNIST):
        pytest.skip(f"MNIST files not found at {SHARED_MNIST}")
    cfg = config_lib.resolve(config_lib.load_config("stacked_mnist", [
        f"data.path={SHARED_MNIST}", "data.stacked.num_examples=20000", "eval.num_samples=6000",
        "eval.classifier_epochs=2"]))
    return cfg, evaluate.SampleMetrics(cfg, str(tmp_path_factory.mktemp("stacked")))


@pytest.mark.slow
def test_real_stacks_cover_nearly_every_mode_and_a_collapsed_set_does_not(stacked_metrics):
    cfg, metrics = stacked_metrics
    real, modes = pipeline.load_examples(cfg.data, limit=6000, seed=11)  # the GAN's half
    model, reference = metrics(real)
    assert metrics.info["kind"] == "stacked"
    assert metrics.info["classifier_accuracy_on_gan_part"] > 0.9
    # 6,000 uniform draws over 1,000 modes leave ~2.5 empty; the KL floor is ~999/12,000
    for row in (model, reference):
        assert row["num_modes"] == 1000 and row["modes_covered"] >= 985, row
        assert row["kl_to_uniform"] < 0.2 and row["kl_channels"] < 0.05, row
    # a generator that never draws 5-9 in the red channel: half the modes, KL ~ log 2
    collapsed = real[modes // 100 < 5]
    collapsed = np.concatenate([collapsed, collapsed])[:6000]
    bad, _ = metrics(collapsed)
    assert bad["modes_covered"] <= 600 and bad["kl_to_uniform"] > 0.5  # a few digits misread
    assert bad["kl_channels"] > 0.5  # the loss is the red channel's
    assert bad["frechet_distance"] > model["frechet_distance"]


# ----------------------------------------------------------------------------- end to end

TINY = ["model.z_dim=8", "model.generator.filters=4", "model.discriminator.filters=4",
        "data.batch_size=8", "train.max_steps=2", "train.max_minutes=null",
        "train.save_checkpoints_steps=2", "train.sample_grid=2", "eval.num_samples=64",
        "eval.classifier_epochs=1", "export.standing_batches=2"]


def _train_export_evaluate(model_dir, config, overrides, capsys):
    from estimator_gan import cli

    sets = [x for o in overrides for x in ("--set", o)]
    assert cli.main(["train", "--config", config, "--model-dir", model_dir, *sets]) == 0
    export_dir = os.path.join(model_dir, "export")
    assert cli.main(["export", "--model-dir", model_dir, "--export-dir", export_dir,
                     "--generator-only"]) == 0
    assert cli.main(["evaluate", "--model-dir", model_dir, "--export", export_dir]) == 0
    out = capsys.readouterr().out
    import json

    return json.load(open(os.path.join(model_dir, "eval.json"))), out


@pytest.mark.slow
def test_stacked_config_trains_exports_and_scores_modes_from_the_export(tmp_path, capsys):
    from PIL import Image

    digit_files(tmp_path, n=60)
    model_dir = str(tmp_path / "run")
    record, out = _train_export_evaluate(
        model_dir, "stacked_mnist",
        [f"data.path={tmp_path}", "data.stacked.num_examples=64", *TINY], capsys)
    assert "training dcgan on stacked_mnist (28x28x3)" in out
    assert record["feature_extractor"]["kind"] == "stacked" and record["source"] == "export"
    assert set(record["metrics"]) == {"modes_covered", "num_modes", "kl_to_uniform", "kl_channels",
                                      "frechet_distance"}
    assert 0.0 <= record["metrics"]["kl_channels"] <= record["metrics"]["kl_to_uniform"] + 1e-9
    assert record["metrics"]["num_modes"] == 1000 and 1 <= record["metrics"]["modes_covered"] <= 64
    picture = Image.open(os.path.join(model_dir, "samples", "step_00000002.png"))
    assert picture.mode == "RGB"  # the sample grid is in colour


def test_stacked_config_runs_on_a_users_own_stacks_without_labels(tmp_path, capsys):
    stacks = np.random.RandomState(0).randint(0, 256, (40, 28, 28, 3)).astype(np.uint8)
    np.save(tmp_path / "stacks.npy", stacks)
    model_dir = str(tmp_path / "run")
    record, out = _train_export_evaluate(
        model_dir, "stacked_mnist",
        ["data.source=npy", f"data.path={tmp_path / 'stacks.npy'}", "data.split.fraction=0.5",
         "eval.num_samples=10", *TINY[:-3], "export.standing_batches=2"], capsys)
    assert "training dcgan on npy (28x28x3)" in out
    assert record["feature_extractor"]["kind"] == "pixels"
    assert set(record["metrics"]) >= {"frechet_distance", "kid"}

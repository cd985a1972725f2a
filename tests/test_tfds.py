"""The `tfds` data source: TFDS's own mock data for the real data set names (cifar10, celeb_a),
and a tiny data set built here with TFDS (no download, no network) for exact values, sharding,
resume, splits and the not-prepared error; the shipped configs that name TFDS data sets train
for a few steps on mock data and export."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from estimator_gan import cli
from estimator_gan import config as config_lib
from estimator_gan.config import DataConfig
from estimator_gan.data import pipeline, sources
from estimator_gan.errors import ConfigError, DataError

tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed "
                                                         "(pip install -e '.[test]' installs it)")
from tensorflow_datasets.core.utils import gcs_utils  # noqa: E402

COUNT, TEST_COUNT, HEIGHT, WIDTH, CLASSES = 40, 8, 8, 12, 4


def pattern(k):
    """Example k: red = 5k everywhere (its id), green a column ramp, blue a row ramp; 8x12."""
    r, c = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    return np.stack([np.full_like(r, 5 * k), c * 20, r * 30], -1).astype(np.uint8)


class EgTinyPatterns(tfds.core.GeneratorBasedBuilder):
    """40 train and 8 test RGB images of 8x12 (example k: `pattern(k)`, label k % 4), plus a
    text feature and an int feature that are neither images nor class labels."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(HEIGHT, WIDTH, 3)),
            "label": tfds.features.ClassLabel(num_classes=CLASSES),
            "caption": tfds.features.Text(),
            "number": tfds.features.Tensor(shape=(), dtype=np.int64),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(COUNT)),
                "test": self._generate_examples(range(COUNT, COUNT + TEST_COUNT))}

    def _generate_examples(self, ids):
        for k in ids:
            yield k, {"image": pattern(k), "label": k % CLASSES, "caption": f"example {k}", "number": k}


NAME = "eg_tiny_patterns"


@pytest.fixture(autouse=True)
def no_gcs(monkeypatch):
    """TFDS looks for data set metadata on GCS when a data set is not prepared: not here."""
    monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    gcs_disabled, gcs_utils._is_gcs_disabled = gcs_utils._is_gcs_disabled, True
    try:
        EgTinyPatterns(data_dir=path).download_and_prepare()
    finally:
        gcs_utils._is_gcs_disabled = gcs_disabled
    return path


def tiny(data_dir, **fields):
    tfds_fields = {"name": NAME, "data_dir": data_dir, **fields.pop("tfds", {})}
    return DataConfig(source="tfds", tfds=tfds_fields, **{"batch_size": 4, **fields})


def ids(x):
    """The example ids in a batch of scaled images (red channel = 5 * id)."""
    return [int(round((v + 1) * 127.5 / 5)) for v in x[:, 0, 0, 0]]


def batches(cfg, n=None, training=False, seed=None, input_context=None, start_example=0):
    ds = pipeline.make_input_fn(cfg, training=training, seed=seed,
                                start_example=start_example)(input_context)
    return list((ds if n is None else ds.take(n)).as_numpy_iterator())


def one_line_data_error(fn, *fragments):
    with pytest.raises(DataError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------- a data set built here


def test_images_are_cropped_resized_and_scaled_like_an_image_folder(data_dir, tmp_path):
    cfg = tiny(data_dir, image_size=6)
    assert sources.sample_shape(cfg) == (6, 6, 3) and sources.num_classes(cfg) == CLASSES
    x, y = pipeline.load_examples(cfg)
    assert x.shape == (COUNT, 6, 6, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert sorted(ids(x)) == list(range(COUNT))
    assert [i % CLASSES for i in ids(x)] == y.tolist()
    from PIL import Image

    for k in range(COUNT):
        Image.fromarray(pattern(k)).save(tmp_path / f"{k:02d}.png")
    folder, _ = pipeline.load_examples(DataConfig(source="images", path=str(tmp_path), image_size=6))
    np.testing.assert_array_equal(x[np.argsort(ids(x))], folder)  # same crop, resize and scale
    # The centre crop keeps columns 2..9 of 12: green (20 * column) spans 40..180 before resizing.
    green = np.rint((x[..., 1] + 1) * 127.5)
    assert 40 <= green.min() < green.max() <= 180
    # Channels: grey on request; the default size of a non-square data set is 64.
    grey, _ = pipeline.load_examples(tiny(data_dir, image_size=6, channels=1), limit=2)
    assert grey.shape == (2, 6, 6, 1)
    assert sources.sample_shape(tiny(data_dir)) == (64, 64, 3)


def test_eval_is_one_ordered_epoch_and_training_is_seeded(data_dir):
    cfg = tiny(data_dir, image_size=8)
    epoch = batches(cfg)
    assert len(epoch) == COUNT // 4
    assert all(b[0].shape == (4, 8, 8, 3) and b[1].shape == (4,) and b[1].dtype == np.int32 for b in epoch)
    assert -1 <= min(b[0].min() for b in epoch) <= max(b[0].max() for b in epoch) <= 1
    assert sorted(sum((ids(b[0]) for b in epoch), [])) == list(range(COUNT))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch, batches(cfg)))  # same order
    first = [ids(b[0]) for b in batches(cfg, 10, training=True, seed=1)]
    assert first == [ids(b[0]) for b in batches(cfg, 10, training=True, seed=1)]
    assert first != [ids(b[0]) for b in batches(cfg, 10, training=True, seed=2)]
    test_split = sum((ids(b[0]) for b in batches(tiny(data_dir, image_size=8, tfds={"split": "test"}))), [])
    assert sorted(test_split) == list(range(COUNT, COUNT + TEST_COUNT))
    sliced = sum((ids(b[0]) for b in batches(tiny(data_dir, image_size=8, tfds={"split": "train[:50%]"}))), [])
    assert len(sliced) == COUNT // 2 and set(sliced) < set(range(COUNT))


def test_conditional_models_get_the_class_count_and_unlabelled_has_none(data_dir):
    config = config_lib.load_config(None, ["data.source=tfds", f"data.tfds.name={NAME}",
                                           f"data.tfds.data_dir={data_dir}", "data.image_size=8",
                                           "model.conditional=true"])
    assert config_lib.resolve(config).model.num_classes == CLASSES
    unlabelled = tiny(data_dir, image_size=8, tfds={"label_key": None})
    assert sources.num_classes(unlabelled) is None
    (first,) = batches(unlabelled, 1)
    assert isinstance(first, np.ndarray) and first.shape == (4, 8, 8, 3)
    with pytest.raises(ConfigError, match="model.conditional needs class labels"):
        config_lib.resolve(config.model_copy(update={"data": unlabelled}))


@pytest.mark.parametrize("cache", [True, False], ids=["in_memory", "streamed"])
def test_two_input_pipelines_read_disjoint_halves(data_dir, cache):
    cfg = tiny(data_dir, image_size=8, cache=cache)
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        shard = batches(cfg, input_context=ctx)
        assert all(b[0].shape == (2, 8, 8, 3) for b in shard)
        seen.append(sum((ids(b[0]) for b in shard), []))
        (train,) = batches(cfg, 1, training=True, seed=0, input_context=ctx)
        assert train[0].shape == (2, 8, 8, 3) and set(ids(train[0])) <= set(range(COUNT))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(COUNT))


def test_in_memory_resume_continues_the_uninterrupted_stream_exactly(data_dir):
    cfg = tiny(data_dir, image_size=8)  # 40 examples, batch 4: batches 12..15 cross epoch 1's end
    steps = 12
    whole = batches(cfg, steps + 4, training=True, seed=3)
    resumed = batches(cfg, 4, training=True, seed=3, start_example=steps * 4)
    for i, batch in enumerate(resumed):
        assert np.array_equal(batch[0], whole[steps + i][0]) and np.array_equal(batch[1], whole[steps + i][1])
    assert sorted(sum((ids(b[0]) for b in whole[:10]), [])) == list(range(COUNT))  # epoch = permutation


def test_streamed_source_is_reshuffled_each_epoch_and_covers_every_example(data_dir):
    cfg = tiny(data_dir, image_size=8, cache=False, shuffle_buffer=COUNT)
    stream = [ids(b[0]) for b in batches(cfg, 20, training=True, seed=3)]
    first, second = sum(stream[:10], []), sum(stream[10:], [])
    assert sorted(first) == sorted(second) == list(range(COUNT)) and first != second


@pytest.mark.parametrize("cache", [True, False], ids=["in_memory", "streamed"])
def test_data_split_parts_are_disjoint_and_complete(data_dir, cache):
    split = config_lib.SplitConfig(fraction=0.25, part="first", seed=4)
    parts = []
    for part in (split, split.complement()):
        cfg = tiny(data_dir, image_size=8, batch_size=2, cache=cache, split=part)
        parts.append(sum((ids(b[0]) for b in batches(cfg)), []))
    assert len(parts[0]) == COUNT // 4 and len(parts[1]) == COUNT - COUNT // 4
    assert sorted(parts[0] + parts[1]) == list(range(COUNT))
    # The part is the one data.split defines on the split's examples in source order.
    whole, _ = pipeline.load_examples(tiny(data_dir, image_size=8))
    picked = sources.split_indices(tiny(data_dir, split=split), COUNT)
    assert parts[0] == ids(whole[picked])


def test_tfds_input_fn_builds_the_same_pipeline_from_python(data_dir):
    import estimator_gan as eg

    x, y = next(iter(eg.tfds_input_fn(NAME, data_dir=data_dir, image_size=8, batch_size=4, seed=1)()))
    assert x.shape == (4, 8, 8, 3) and y.dtype == tf.int32
    assert [i % CLASSES for i in ids(x.numpy())] == y.numpy().tolist()
    x = next(iter(eg.tfds_input_fn(NAME, data_dir=data_dir, label_key=None, image_size=8, batch_size=4)()))
    assert x.shape == (4, 8, 8, 3)
    with pytest.raises(eg.ConfigError, match="invalid tfds_input_fn option: batch_size"):
        eg.tfds_input_fn(NAME, batch_size=0)


# ------------------------------------------------------------------------------- errors


def test_not_prepared_without_download_names_the_data_set_and_how_to_get_it(tmp_path):
    empty = str(tmp_path / "empty")
    cfg = tiny(empty, image_size=8)
    message = one_line_data_error(lambda: pipeline.make_input_fn(cfg), NAME, empty,
                                  "--set data.tfds.download=true", f"tfds build {NAME} --data_dir {empty}")
    assert "not prepared" in message
    assert not os.path.exists(os.path.join(empty, NAME, "1.0.0", "dataset_info.json"))
    # download: true prepares it (this builder generates its examples: no network) and trains.
    x, y = pipeline.load_examples(tiny(empty, image_size=8, tfds={"download": True}))
    assert len(x) == COUNT and os.path.exists(os.path.join(empty, NAME, "1.0.0", "dataset_info.json"))


@pytest.mark.parametrize("fields, fragments", [
    ({"name": "no_such_data_set"}, ["cannot load data set 'no_such_data_set'"]),
    ({"split": "validation"}, ["bad data.tfds.split 'validation'", NAME]),
    ({"image_key": "picture"}, ["has no feature 'picture'", "image, label, caption, number",
                                "data.tfds.image_key"]),
    ({"image_key": "number"}, ["feature 'number'", "is a Tensor, expected Image"]),
    ({"label_key": "caption"}, ["feature 'caption'", "expected ClassLabel", "or null for no labels"]),
    ({"label_key": "labels"}, ["has no feature 'labels'", "data.tfds.label_key"]),
])
def test_bad_settings_are_one_line_errors(data_dir, fields, fragments):
    one_line_data_error(lambda: pipeline.make_input_fn(tiny(data_dir, image_size=8, tfds=fields)), *fragments)


def test_a_name_is_required():
    with pytest.raises(ConfigError, match="data.source tfds needs data.tfds.name"):
        config_lib.load_config(None, ["data.source=tfds"])


def test_without_the_extra_a_one_line_error_names_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` now fails
    one_line_data_error(lambda: pipeline.make_input_fn(DataConfig(source="tfds", tfds={"name": "cifar10"})),
                        "pip install 'estimator-gan[tfds]'")
    code = cli.main(["train", "--model-dir", str(tmp_path / "m"), "--max-steps", "1",
                     "--set", "data.source=tfds", "--set", "data.tfds.name=cifar10"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "pip install 'estimator-gan[tfds]'" in err


# ------------------------------------------------------------ TFDS's mock data, real names


@pytest.fixture
def mock_data():
    """TFDS's own mock: random examples from the builder's features, no files, no network."""
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_mock_cifar10_is_32px_colour_with_ten_classes(mock_data):
    cfg = DataConfig(source="tfds", tfds={"name": "cifar10"}, batch_size=8)
    assert sources.sample_shape(cfg) == (32, 32, 3) and sources.num_classes(cfg) == 10
    epoch = batches(cfg)
    assert len(epoch) == 3
    for x, y in epoch:
        assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and -1 <= x.min() < x.max() <= 1
        assert y.dtype == np.int32 and 0 <= y.min() <= y.max() <= 9


def test_mock_celeb_a_is_unlabelled_and_center_cropped_to_64px(mock_data):
    labelled = DataConfig(source="tfds", tfds={"name": "celeb_a"})
    one_line_data_error(lambda: pipeline.make_input_fn(labelled), "celeb_a has no feature 'label'",
                        "or null for no labels")
    cfg = DataConfig(source="tfds", tfds={"name": "celeb_a", "label_key": None}, batch_size=8)
    assert sources.sample_shape(cfg) == (64, 64, 3) and sources.num_classes(cfg) is None
    (x,) = batches(cfg, 1, training=True, seed=0)
    assert x.shape == (8, 64, 64, 3) and -1 <= x.min() < x.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_sngan", "celeba64"])
def test_shipped_tfds_configs_train_and_export_on_mock_data(mock_data, name, tmp_path, capsys):
    config = config_lib.load_config(name)
    assert config.data.source == "tfds" and config.data.tfds.download is False
    assert config.loss.name == "hinge" and config.train.d_steps == 5
    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
    tiny_overrides = ["model.generator.filters=8", "model.discriminator.filters=8", "model.z_dim=8",
                      "data.batch_size=4", "train.log_every_steps=1", "train.save_checkpoints_steps=2",
                      "train.sample_grid=2", "export.standing_batches=1", "export.standing_batch_size=4"]
    args = ["train", "--config", name, "--model-dir", model_dir, "--max-steps", "2",
            "--export", export_dir] + sum((["--set", o] for o in tiny_overrides), [])
    code = cli.main(args)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    size = 32 if name == "cifar10_sngan" else 64
    assert f"({size}x{size}x3)" in out.out and "done: step 2" in out.out, out.out[-2000:]
    saved = config_lib.load_model_dir_config(model_dir)
    assert saved.model.sample_shape == [size, size, 3]
    versions = os.listdir(os.path.join(export_dir, "generator"))
    assert len(versions) == 1
    assert os.path.isfile(os.path.join(export_dir, "generator", versions[0], "saved_model.pb"))

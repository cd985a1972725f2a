"""The input pipeline: every source round-trips a fixture written here; every bad input is a
one-line DataError naming the file."""
import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from estimator_gan.config import DataConfig, MixtureConfig
from estimator_gan.data import pipeline, sources
from estimator_gan.errors import DataError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")


def batches(cfg, n=None, training=False, seed=None, input_context=None):
    ds = pipeline.make_input_fn(cfg, training=training, seed=seed)(input_context)
    if n is not None:
        ds = ds.take(n)
    return list(ds.as_numpy_iterator())


def assert_data_error(cfg_or_fn, *names):
    with pytest.raises(DataError) as err:
        cfg_or_fn() if callable(cfg_or_fn) else pipeline.make_input_fn(cfg_or_fn)
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def to_float(pixel):
    return np.float32(pixel) / np.float32(127.5) - np.float32(1.0)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def png_bytes(array):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pattern(k, size=8):
    """A distinct RGB image per k: pixel (r, c) = (k*10, r*8, c*8)."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([np.full_like(r, k * 10), r * 8, c * 8], axis=-1).astype(np.uint8)


def write_idx(path, array, magic):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.asarray(array, np.uint8).tobytes())


def mnist_like(n, offset=0):
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 3, 5] = np.arange(n) + offset + 100
    return x, (np.arange(n) + offset) % 10


def write_tfrecord(path, images, labels=None, image_key="image/encoded",
                   label_key="image/class/label"):
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, image in enumerate(images):
            feature = {image_key: tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[png_bytes(image)]))}
            if labels is not None:
                feature[label_key] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(labels[i])]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())


# ------------------------------------------------------------------------------ sources


def test_digits_shapes_scaling_and_labels():
    cfg = DataConfig(source="digits", batch_size=8)
    assert sources.sample_shape(cfg) == (16, 16, 1)
    assert sources.num_classes(cfg) == 10
    (x, y), = batches(cfg, n=1, training=True, seed=0)
    assert x.shape == (8, 16, 16, 1) and x.dtype == np.float32
    assert y.shape == (8,) and y.dtype == np.int32
    assert x.min() >= -1 and x.max() <= 1 and set(y) <= set(range(10))

    from sklearn.datasets import load_digits

    raw = load_digits()
    x8, y8 = pipeline.load_examples(DataConfig(source="digits", image_size=8))
    assert x8.shape == (1797, 8, 8, 1)
    np.testing.assert_allclose(x8[..., 0], raw.images / 8.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y8, raw.target)
    x16, _ = pipeline.load_examples(cfg, limit=3)
    assert x16.shape == (3, 16, 16, 1)


def test_training_shuffle_is_seeded_and_eval_is_one_ordered_pass():
    cfg = DataConfig(source="digits", batch_size=100, image_size=8)
    a = batches(cfg, n=2, training=True, seed=5)
    b = batches(cfg, n=2, training=True, seed=5)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    ev = batches(cfg)
    assert len(ev) == 17  # 1797 // 100, remainder dropped
    x, y = pipeline.load_examples(cfg, limit=1700)
    np.testing.assert_array_equal(np.concatenate([e[0] for e in ev]), x)
    np.testing.assert_array_equal(np.concatenate([e[1] for e in ev]), y)


def test_mixture2d_points_follow_their_modes_and_seed():
    mix = MixtureConfig(kind="grid", modes=4, radius=1.0, std=0.01, num_examples=400)
    cfg = DataConfig(source="mixture2d", batch_size=16, mixture=mix)
    assert sources.sample_shape(cfg) == (2,) and sources.num_classes(cfg) == 4
    x, y = pipeline.load_examples(cfg)
    assert x.shape == (400, 2) and x.dtype == np.float32 and y.dtype == np.int32
    centres = np.asarray(mix.centres())
    assert np.abs(x - centres[y]).max() < 0.1
    assert set(y) == {0, 1, 2, 3}
    (bx, by), = batches(cfg, n=1, training=True, seed=0)
    assert bx.shape == (16, 2) and by.shape == (16,)
    np.testing.assert_array_equal(pipeline.load_examples(cfg, seed=7)[0],
                                  pipeline.load_examples(cfg, seed=7)[0])
    assert not np.array_equal(pipeline.load_examples(cfg, seed=7)[0], x)


def test_mnist_idx_directory_uses_train_then_test(tmp_path):
    xtr, ytr = mnist_like(5)
    xte, yte = mnist_like(3, offset=5)
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), xtr, 2051)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), ytr, 2049)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), xte, 2051)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), yte, 2049)
    cfg = DataConfig(source="mnist", path=str(tmp_path), batch_size=2)
    assert sources.sample_shape(cfg) == (28, 28, 1) and sources.num_classes(cfg) == 10
    x, y = pipeline.load_examples(cfg)
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.arange(8) % 10)
    np.testing.assert_array_equal(x[:, 3, 5, 0], to_float(np.arange(8) + 100))
    assert x[:, 0, 0, 0].tolist() == [-1.0] * 8
    ev = batches(cfg)
    assert len(ev) == 4 and ev[0][0].shape == (2, 28, 28, 1)

    small = DataConfig(source="mnist", path=str(tmp_path), image_size=14)
    assert pipeline.load_examples(small)[0].shape == (8, 14, 14, 1)


def test_mnist_single_idx_file_and_npz(tmp_path):
    x, y = mnist_like(4)
    write_idx(str(tmp_path / "a-images-idx3-ubyte.gz"), x, 2051)
    got, labels = pipeline.load_examples(DataConfig(source="mnist",
                                                path=str(tmp_path / "a-images-idx3-ubyte.gz")))
    assert got.shape == (4, 28, 28, 1) and labels is None
    write_idx(str(tmp_path / "a-labels-idx1-ubyte.gz"), y, 2049)
    _, labels = pipeline.load_examples(DataConfig(source="mnist",
                                              path=str(tmp_path / "a-images-idx3-ubyte.gz")))
    np.testing.assert_array_equal(labels, y)

    x2, y2 = mnist_like(2, offset=4)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x2, y_test=y2)
    got, labels = pipeline.load_examples(DataConfig(source="mnist", path=str(tmp_path / "mnist.npz")))
    assert got.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(labels, np.arange(6))
    np.testing.assert_array_equal(got[:, 3, 5, 0], to_float(np.arange(6) + 100))


def test_images_folder_png_jpeg_recursive(tmp_path):
    write_png(str(tmp_path / "a.png"), pattern(1))
    write_png(str(tmp_path / "sub" / "b.PNG"), pattern(2)[..., 0])  # greyscale
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "sub" / "c.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = DataConfig(source="images", path=str(tmp_path), image_size=8, batch_size=3)
    assert sources.sample_shape(cfg) == (8, 8, 3) and sources.num_classes(cfg) is None
    x, y = pipeline.load_examples(cfg)
    assert y is None and x.shape == (3, 8, 8, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], to_float(pattern(1)))  # a.png, exact
    np.testing.assert_array_equal(x[1], to_float(np.repeat(pattern(2)[..., :1], 3, -1)))
    assert np.abs(x[2] - to_float(200)).max() < 0.05  # JPEG is lossy
    (b,) = batches(cfg, n=1, training=True, seed=0)
    assert b.shape == (3, 8, 8, 3) and b.dtype == np.float32 and -1 <= b.min() <= b.max() <= 1

    grey = DataConfig(source="images", path=str(tmp_path), image_size=4, channels=1)
    gx, _ = pipeline.load_examples(grey)
    assert gx.shape == (3, 4, 4, 1)


def test_images_are_center_cropped_then_resized(tmp_path):
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, 4:12] = 255  # the central square is white, the side bands black
    write_png(str(tmp_path / "wide.png"), wide)
    x, _ = pipeline.load_examples(DataConfig(source="images", path=str(tmp_path), image_size=4))
    assert x.shape == (1, 4, 4, 3)
    np.testing.assert_array_equal(x, np.ones_like(x))


def test_tfrecord_file_glob_directory_and_labels(tmp_path):
    images = [pattern(k) for k in range(5)]
    write_tfrecord(tmp_path / "part-0.tfrecord", images[:3], labels=[0, 1, 2])
    write_tfrecord(tmp_path / "part-1.tfrecords", images[3:], labels=[3, 4])
    for path in (tmp_path, tmp_path / "part-*", tmp_path / "part-0.tfrecord"):
        cfg = DataConfig(source="tfrecord", path=str(path), image_size=8, batch_size=2)
        x, y = pipeline.load_examples(cfg)
        assert x.shape[1:] == (8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int32
        for xi, yi in zip(x, y):
            np.testing.assert_array_equal(xi, to_float(images[yi]))
    assert sorted(pipeline.load_examples(DataConfig(source="tfrecord", path=str(tmp_path),
                                                image_size=8))[1]) == [0, 1, 2, 3, 4]
    (bx, by), = batches(cfg, n=1, training=True, seed=0)
    assert bx.shape == (2, 8, 8, 3) and by.shape == (2,) and by.dtype == np.int32

    no_labels = DataConfig(source="tfrecord", path=str(tmp_path), image_size=8,
                           batch_size=2, label_key=None)
    (b,) = batches(no_labels, n=1)
    assert isinstance(b, np.ndarray) and b.shape == (2, 8, 8, 3)

    write_tfrecord(tmp_path / "unlabelled.tfrecord", images[:2])
    cfg = DataConfig(source="tfrecord", path=str(tmp_path / "unlabelled.tfrecord"), image_size=8)
    x, y = pipeline.load_examples(cfg)
    assert y is None and x.shape == (2, 8, 8, 3)


def test_npy_points_and_images(tmp_path):
    points = np.arange(20, dtype=np.float64).reshape(10, 2)
    np.save(tmp_path / "points.npy", points)
    np.save(tmp_path / "labels.npy", np.arange(10) % 3)
    cfg = DataConfig(source="npy", path=str(tmp_path / "points.npy"),
                     labels_path=str(tmp_path / "labels.npy"), batch_size=4)
    assert sources.sample_shape(cfg) == (2,) and sources.num_classes(cfg) == 3
    x, y = pipeline.load_examples(cfg)
    np.testing.assert_array_equal(x, points.astype(np.float32))
    np.testing.assert_array_equal(y, np.arange(10) % 3)
    assert [b[0].shape for b in batches(cfg)] == [(4, 2), (4, 2)]

    grey = np.zeros((6, 5, 5), np.uint8)
    grey[:, 2, 3] = np.arange(6) * 40
    np.save(tmp_path / "grey.npy", grey)
    cfg = DataConfig(source="npy", path=str(tmp_path / "grey.npy"), batch_size=3)
    assert sources.sample_shape(cfg) == (5, 5, 1) and sources.num_classes(cfg) is None
    (b,) = batches(cfg, n=1)
    assert isinstance(b, np.ndarray) and b.shape == (3, 5, 5, 1) and b.dtype == np.float32
    x, _ = pipeline.load_examples(cfg)
    np.testing.assert_array_equal(x[:, 2, 3, 0], to_float(np.arange(6) * 40))
    big = DataConfig(source="npy", path=str(tmp_path / "grey.npy"), image_size=10, channels=3)
    assert sources.sample_shape(big) == (10, 10, 3)
    assert pipeline.load_examples(big)[0].shape == (6, 10, 10, 3)

    rgb = np.linspace(-1, 1, 4 * 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 4, 3)
    np.savez(tmp_path / "xy.npz", x=rgb, y=np.array([0, 1, 2, 5]))
    cfg = DataConfig(source="npy", path=str(tmp_path / "xy.npz"))
    assert sources.sample_shape(cfg) == (4, 4, 3) and sources.num_classes(cfg) == 6
    x, y = pipeline.load_examples(cfg)
    np.testing.assert_array_equal(x, rgb)
    np.testing.assert_array_equal(y, [0, 1, 2, 5])
    np.savez(tmp_path / "single.npz", images=rgb)
    x, y = pipeline.load_examples(DataConfig(source="npy", path=str(tmp_path / "single.npz")))
    np.testing.assert_array_equal(x, rgb)
    assert y is None


# ------------------------------------------------------------------- sharding and graphs


@pytest.mark.parametrize("source", ["npy", "images", "tfrecord"])
def test_sharding_halves_the_batch_and_splits_the_data(tmp_path, source):
    if source == "npy":
        np.save(tmp_path / "p.npy", np.stack([np.arange(16), np.zeros(16)], 1).astype(np.float32))
        cfg = DataConfig(source="npy", path=str(tmp_path / "p.npy"), batch_size=4)
        key = lambda x: x[:, 0].tolist()  # noqa: E731
    elif source == "images":
        for k in range(8):
            write_png(str(tmp_path / f"{k}.png"), pattern(k))
        cfg = DataConfig(source="images", path=str(tmp_path), image_size=8, batch_size=2)
        key = lambda x: np.rint((x[:, 0, 0, 0] + 1) * 127.5).tolist()  # noqa: E731
    else:  # one file: the records, not the files, are sharded
        write_tfrecord(tmp_path / "one.tfrecord", [pattern(k) for k in range(8)], range(8))
        cfg = DataConfig(source="tfrecord", path=str(tmp_path), image_size=8, batch_size=2)
        key = lambda xy: xy[1].tolist()  # noqa: E731
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                         num_replicas_in_sync=2)
        shard = batches(cfg, input_context=ctx)
        assert all(len(key(b)) == cfg.batch_size // 2 for b in shard)
        seen.append(sum((key(b) for b in shard), []))
        (train,) = batches(cfg, n=1, training=True, seed=0, input_context=ctx)
        assert len(key(train)) == cfg.batch_size // 2
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == (16 if source == "npy" else 8)


def test_global_batch_must_divide_among_replicas():
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    fn = pipeline.make_input_fn(DataConfig(source="digits", batch_size=7))
    assert_data_error(lambda: fn(ctx), "batch_size 7", "2 replicas")


@pytest.mark.parametrize("source", ["digits", "images"])
def test_input_fn_runs_inside_a_tf1_graph(tmp_path, source):
    if source == "images":
        for k in range(4):
            write_png(str(tmp_path / f"{k}.png"), pattern(k))
        cfg = DataConfig(source="images", path=str(tmp_path), image_size=8, batch_size=2)
    else:
        cfg = DataConfig(source="digits", batch_size=4)
    input_fn = pipeline.make_input_fn(cfg, training=True, seed=1)
    with tf.Graph().as_default():
        ds = input_fn()
        nxt = tf.compat.v1.data.make_one_shot_iterator(ds).get_next()
        features = nxt[0] if isinstance(nxt, tuple) else nxt
        assert features.shape.as_list() == [cfg.batch_size, *sources.sample_shape(cfg)]
        with tf.compat.v1.Session() as sess:
            for _ in range(3):
                out = sess.run(nxt)
    x = out[0] if isinstance(out, tuple) else out
    assert x.dtype == np.float32 and -1 <= x.min() <= x.max() <= 1


# ------------------------------------------------------------------------------- errors


def test_missing_or_wrong_paths(tmp_path):
    assert_data_error(DataConfig(source="images"), "data.path is required", "images")
    missing = str(tmp_path / "nowhere")
    for source in ("mnist", "images", "tfrecord", "npy"):
        assert_data_error(DataConfig(source=source, path=missing), source, missing)
    (tmp_path / "file.png").write_bytes(b"")
    assert_data_error(DataConfig(source="images", path=str(tmp_path / "file.png")),
                      "file.png", "not a directory")
    assert_data_error(DataConfig(source="mnist", path=str(tmp_path)), str(tmp_path))


def test_empty_image_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    assert_data_error(DataConfig(source="images", path=str(tmp_path)),
                      f"images: no PNG/JPEG files in {tmp_path}")


def test_undecodable_image_fails_or_is_skipped(tmp_path, capsys):
    write_png(str(tmp_path / "good.png"), pattern(1))
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    msg = assert_data_error(DataConfig(source="images", path=str(tmp_path), image_size=8),
                            str(tmp_path / "bad.png"), "cannot decode")
    assert "cannot identify image file" in msg
    cfg = DataConfig(source="images", path=str(tmp_path), image_size=8, on_corrupt="skip",
                     batch_size=1)
    x, _ = pipeline.load_examples(cfg)
    np.testing.assert_array_equal(x, to_float(pattern(1))[None])
    assert len(batches(cfg)) == 1
    err = capsys.readouterr().err
    assert f"images: skipped 1 undecodable files (first: {tmp_path / 'bad.png'})" in err
    os.remove(tmp_path / "good.png")
    assert_data_error(cfg, "no decodable", str(tmp_path))


def test_idx_bad_magic_and_count_mismatch(tmp_path):
    x, y = mnist_like(3)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), x, 1234)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), y, 2049)
    assert_data_error(DataConfig(source="mnist", path=str(tmp_path)),
                      f"{tmp_path / 't10k-images-idx3-ubyte.gz'} has magic 1234, expected 2051")
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), x, 2051)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), y[:2], 2049)
    assert_data_error(DataConfig(source="mnist", path=str(tmp_path)),
                      "t10k-images-idx3-ubyte.gz", "3 images but 2 labels")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    assert_data_error(DataConfig(source="mnist", path=str(tmp_path)),
                      "t10k-labels-idx1-ubyte.gz", "cannot read")


def test_npy_wrong_shape_range_and_labels(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 5), np.float32))
    cfg = DataConfig(source="npy", path=str(tmp_path / "a.npy"))
    expected = (f"npy: {tmp_path / 'a.npy'} holds shape (10, 5); "
                "expected (N, 2), (N, H, W) or (N, H, W, C)")
    assert_data_error(cfg, expected)
    assert_data_error(lambda: sources.sample_shape(cfg), expected)
    np.save(tmp_path / "f.npy", np.full((3, 4, 4), 255.0, np.float32))
    assert_data_error(DataConfig(source="npy", path=str(tmp_path / "f.npy")),
                      "f.npy", "[255, 255]", "expected [-1, 1]")
    np.save(tmp_path / "p.npy", np.zeros((10, 2), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(9, np.int64))
    cfg = DataConfig(source="npy", path=str(tmp_path / "p.npy"),
                     labels_path=str(tmp_path / "labels.npy"))
    assert_data_error(cfg, "labels.npy", "9 labels", "10 examples")
    assert_data_error(lambda: sources.num_classes(cfg), "labels.npy")


@pytest.mark.parametrize("kind", ["points", "images", "npz"])
def test_npy_with_a_nan_or_inf_names_it_and_its_index(tmp_path, kind):
    """A NaN would make every loss NaN from the first batch that holds it (training then stops
    at a random step); it is refused up front, naming the value and where it is."""
    if kind == "points":
        x = np.zeros((10, 2), np.float32)
        x[7, 1] = np.nan
        where, value = "(7, 1)", "NaN"
    else:
        x = np.zeros((6, 4, 4), np.float64)
        x[3, 2, 1] = -np.inf
        where, value = "(3, 2, 1)", "-inf"
    path = tmp_path / ("x.npz" if kind == "npz" else "x.npy")
    np.savez(path, x=x, y=np.arange(len(x))) if kind == "npz" else np.save(path, x)
    cfg = DataConfig(source="npy", path=str(path), batch_size=2)
    message = assert_data_error(cfg, f"npy: {path} holds {value} at index {where}; every value must be finite")
    assert message.count(value) == 1
    np.save(tmp_path / "fine.npy", np.nan_to_num(x, neginf=0.0).astype(np.float32))
    assert batches(DataConfig(source="npy", path=str(tmp_path / "fine.npy"), batch_size=2), n=1)


def test_tfrecord_without_the_image_feature(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_tfrecord(path, [pattern(0)], image_key="other")
    assert_data_error(DataConfig(source="tfrecord", path=str(path)),
                      f"tfrecord: {path} has no feature 'image/encoded'")
    (tmp_path / "empty").mkdir()
    assert_data_error(DataConfig(source="tfrecord", path=str(tmp_path / "empty")),
                      str(tmp_path / "empty"))


def test_eval_needs_one_full_batch():
    cfg = DataConfig(source="mixture2d", mixture=MixtureConfig(num_examples=10), batch_size=16)
    assert_data_error(lambda: pipeline.make_input_fn(cfg, training=False)(), "mixture2d",
                      "batch of 16")
    assert len(batches(cfg, n=2, training=True)) == 2  # training repeats past the epoch


# ------------------------------------------------------------------------------ real data


@pytest.mark.skipif(not os.path.isdir(REAL_MNIST),
                    reason=f"real MNIST test set not found at {REAL_MNIST}")
def test_real_mnist_test_set():
    cfg = DataConfig(source="mnist", path=REAL_MNIST, batch_size=500)
    x, y = pipeline.load_examples(cfg)
    assert x.shape == (10000, 28, 28, 1) and x.min() == -1.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(batches(cfg)) == 20

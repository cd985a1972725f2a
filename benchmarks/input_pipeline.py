"""Input pipeline alone, per data source, against what training consumes.

    python benchmarks/input_pipeline.py [--quick | --smoke] [--repeats N]

For each source (digits, mixture2d, mnist, npy, images, tfrecord; the file sources with their
decoded-image cache on and off) it iterates the exact dataset `GAN.train` reads
(`make_input_fn` grouped by `stacked_input_fn`), eagerly, after a warm-up, and reports
examples/s. Training consumption is the product's loop (`GAN.train`) on that source with the
default model for its sample shape. Target: pipeline >= 10x consumption. mnist uses
../shared/data/mnist (skipped when absent); npy, images and tfrecord use synthetic files.

Image sizes: a TensorFlow Datasets source (a data set of CelebA-sized 218x178 JPEGs built here
with TFDS, no download) and a folder of the same JPEG files, each at 64 and 128 px, cache on
and off, against what one step of the shipped 64 px job (`celeba64`: resnet, batch 64, 5 D
updates) consumes. Target: images/s >= 3x that at 64 px. (Needs the `tfds` extra; without it
only the folder is measured.) That step dominates the run: ~106 s a step on a host whose
float32 matmul runs at 77 GFLOP/s, so `--quick` takes about 45 minutes there.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread pools before TensorFlow starts)
from common import config_lib, np, pipeline, tf  # noqa: E402
from estimator_gan.runtime import loop  # noqa: E402

TARGET = 10.0
TARGET_64PX = 3.0
FACE_SHAPE = (218, 178)  # CelebA's images: height, width


def write_images(directory: str, count: int, size: int) -> str:
    """`count` RGB PNGs of `size`x`size` (resized to the source's 64x64 by the pipeline)."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(count):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(directory, f"{i:05d}.png"))
    return directory


def write_tfrecord(path: str, image_dir: str) -> str:
    with tf.io.TFRecordWriter(path) as writer:
        for i, name in enumerate(sorted(os.listdir(image_dir))):
            with open(os.path.join(image_dir, name), "rb") as f:
                encoded = f.read()
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10])),
            })).SerializeToString())
    return path


def write_jpegs(directory: str, count: int) -> str:
    """`count` smooth random colour JPEGs (quality 90) of CelebA's size, 218x178."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(0)
    height, width = FACE_SHAPE
    for i in range(count):
        coarse = Image.fromarray(rng.randint(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.int16)
        image = np.clip(image + rng.randint(-12, 13, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(directory, f"{i:05d}.jpg"), quality=90)
    return directory


def build_tfds(data_dir: str, image_dir: str) -> str:
    """A TFDS data set of the JPEG files in `image_dir` (stored as they are, like celeb_a),
    prepared in `data_dir` with TFDS itself (nothing is downloaded); returns its name."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True  # a local data set: no metadata lookups on GCS
    tfds.disable_progress_bar()

    class EgBenchFaces(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=FACE_SHAPE + (3,), encoding_format="jpeg")}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for name in sorted(os.listdir(image_dir)):
                yield name, {"image": os.path.join(image_dir, name)}

    EgBenchFaces(data_dir=data_dir).download_and_prepare()
    return EgBenchFaces.name


def image_size_configs(workdir: str, args):
    """({row name: Config}, the 64 px training job) for the image-size comparison."""
    image_dir = write_jpegs(os.path.join(workdir, "jpegs"), common.pick(args, 2048, 512, 64))
    data = {"jpeg": ["data.source=images", f"data.path={image_dir}"]}
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        print("tensorflow-datasets is not installed (pip install -e '.[tfds]'): TFDS rows skipped",
              file=sys.stderr)
    else:
        tfds_dir = os.path.join(workdir, "tfds")
        name = build_tfds(tfds_dir, image_dir)
        data = {"tfds": ["data.source=tfds", f"data.tfds.name={name}", f"data.tfds.data_dir={tfds_dir}"],
                **data}
    base = common.RUN_ONLY + common.smoke_overrides(args)
    configs = {}
    for source, overrides in data.items():
        for size in (64, 128):
            for cache in (True, False):
                configs[f"{source} {size}px" + ("" if cache else " (no cache)")] = config_lib.resolve(
                    config_lib.load_config("celeba64", overrides + base + [
                        f"data.image_size={size}", f"data.cache={cache}"]))
    train = next(c for c in configs.values() if c.model.sample_shape[0] == 64)
    return configs, train


def sources(workdir: str, args):
    """{name: Config} for every source measured here."""
    files = common.pick(args, 1024, 256, 64)
    image_dir = write_images(os.path.join(workdir, "images"), files, 96)
    record = write_tfrecord(os.path.join(workdir, "images.tfrecord"), image_dir)
    smoke = common.smoke_overrides(args)
    out = {
        "digits": config_lib.resolve(config_lib.load_config(None, smoke)),
        "mixture2d": common.mlp_config(),
    }
    if os.path.isdir(common.SHARED_MNIST):
        out["mnist"] = common.dcgan_config(workdir, *smoke)
    out["npy"] = common.dcgan_config(workdir, *common.synthetic_image_overrides(workdir, 28, 1), *smoke)
    for cache in (True, False):
        tag = "" if cache else " (no cache)"
        out["images" + tag] = config_lib.resolve(config_lib.load_config(
            None, ["data.source=images", f"data.path={image_dir}", f"data.cache={cache}"] + smoke))
        out["tfrecord" + tag] = config_lib.resolve(config_lib.load_config(
            None, ["data.source=tfrecord", f"data.path={record}", f"data.cache={cache}"] + smoke))
    return out


class Pipeline:
    """The dataset `GAN.train` reads (one element per `session.run`: `loop.steps_per_run` steps
    of `d_steps` batches), iterated eagerly: seconds per step after a warm-up."""

    def __init__(self, config):
        input_fn = pipeline.make_input_fn(config.data, training=True, seed=config.train.seed)
        self.steps_per_element = loop.steps_per_run(config)
        self._it = iter(loop.stacked_input_fn(
            input_fn, config.train.d_steps, self.steps_per_element)())

    def measure(self, warmup: int, steps: int) -> float:
        """Seconds per step over at least `steps` steps after at least `warmup`, in whole
        elements."""
        k = self.steps_per_element
        for _ in range(-(-warmup // k)):
            next(self._it)
        elements = -(-steps // k)
        start = time.perf_counter()
        for _ in range(elements):
            next(self._it)
        return (time.perf_counter() - start) / (elements * k)


def model_key(config) -> str:
    return json.dumps([config.model.model_dump(mode="json"), config.data.batch_size, config.train.d_steps])


def main():
    started = time.time()
    args = common.parse_args(__doc__.splitlines()[0])
    common.print_environment(common.environment())
    workdir = common.workdir("input-pipeline")
    configs = sources(workdir, args)
    pipeline_steps = common.pick(args, 400, 100, 5)
    train_steps = {"mlp": common.pick(args, 1000, 300, 3), "dcgan": common.pick(args, 30, 8, 2),
                   "resnet": common.pick(args, 4, 2, 1)}

    pipelines, trainers, variants = {}, {}, {}
    for name, cfg in configs.items():
        pipelines[name] = Pipeline(cfg)
        # Warm up over at least one epoch, so a cached source is measured from its cache.
        warmup = common.pick(args, 40, 20, 1)
        variants[f"pipeline {name}"] = (
            lambda p=pipelines[name], w=warmup: p.measure(w, pipeline_steps))
        key = model_key(cfg)
        if key not in trainers:
            trainers[key] = common.ProductLoop(cfg, os.path.join(workdir, f"train{len(trainers)}"))
            steps = train_steps[cfg.model.architecture]
            variants[f"train {len(trainers) - 1}"] = (
                lambda t=trainers[key], s=steps: t.measure(common.pick(args, 5, 3, 1), s))
    sized, sized_train = image_size_configs(workdir, args)
    sized_steps = common.pick(args, 40, 10, 2)  # 320 images each
    for name, cfg in sized.items():
        sized_pipeline = Pipeline(cfg)
        variants[f"pipeline {name}"] = (lambda p=sized_pipeline, w=common.pick(args, 5, 2, 1):
                                        p.measure(w, sized_steps))
    sized_trainer = common.ProductLoop(sized_train, os.path.join(workdir, "train_64px"))
    variants["train 64px"] = lambda: sized_trainer.measure(1, train_steps["resnet"])
    seconds = common.interleave(variants, args.repeats)

    train_names = {key: f"train {i}" for i, key in enumerate(trainers)}
    rows, out = [], {}
    for name, cfg in configs.items():
        per_step = common.examples_per_step(cfg)
        pipe = per_step / common.median(seconds[f"pipeline {name}"])
        consume = per_step / common.median(seconds[train_names[model_key(cfg)]])
        shape = "x".join(map(str, cfg.model.sample_shape))
        rows.append([name, shape, cfg.data.batch_size, pipe, consume, pipe / consume])
        out[name] = {"sample_shape": cfg.model.sample_shape, "batch_size": cfg.data.batch_size,
                     "pipeline_examples_per_s": round(pipe, 1),
                     "training_examples_per_s": round(consume, 1), "ratio": round(pipe / consume, 2)}
    common.print_table(f"examples/s: input pipeline alone vs the product's training loop (median of "
                       f"{args.repeats}; target ratio >= {TARGET:g})",
                       ["source", "shape", "batch", "pipeline ex/s", "training ex/s", "ratio"], rows)
    lowest = min(v["ratio"] for v in out.values())

    per_step = common.examples_per_step(sized_train)
    consume = per_step / common.median(seconds["train 64px"])
    rows, sized_out = [], {}
    for name, cfg in sized.items():
        pipe = per_step / common.median(seconds[f"pipeline {name}"])
        size = cfg.model.sample_shape[0]
        rows.append([name, size, cfg.data.cache, pipe, consume, pipe / consume])
        sized_out[name] = {"image_size": size, "cache": cfg.data.cache,
                           "pipeline_images_per_s": round(pipe, 1), "ratio": round(pipe / consume, 2)}
    common.print_table(
        f"images/s: input pipeline at 64 and 128 px vs one step of the 64 px job (celeba64: "
        f"{sized_train.model.architecture}, batch {sized_train.data.batch_size}, "
        f"{sized_train.train.d_steps} D updates) (median of {args.repeats}; target ratio at 64 px "
        f">= {TARGET_64PX:g})",
        ["source", "px", "cache", "pipeline img/s", "64px step img/s", "ratio"], rows)
    lowest_64 = min(v["ratio"] for v in sized_out.values() if v["image_size"] == 64)
    common.emit_json("input_pipeline", args, {
        "min_ratio": lowest, "target_met": lowest >= TARGET, "sources": out,
        "training_64px_images_per_s": round(consume, 1), "min_ratio_64px": lowest_64,
        "target_64px_met": lowest_64 >= TARGET_64PX, "image_sizes": sized_out}, started)


if __name__ == "__main__":
    main()

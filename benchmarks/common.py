"""What the benchmark scripts share: thread setup, the environment record, benchmark configs,
timing of the product's loop and of a hand-written TF2 loop, interleaved repeats, output.

Import this module before TensorFlow: it fixes `TF_NUM_INTRAOP_THREADS` /
`TF_NUM_INTEROP_THREADS` (default: the CPUs this process may use; set them in the environment to
choose others) before TensorFlow reads them, so every variant in a run uses the same pools.

Every script prints a table for people and ends with one JSON line for machines. Ratios are
always between variants measured in the same process, with repeats interleaved, so that load
from other processes shifts both sides alike; absolute numbers on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import atexit
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(_CPUS))
os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(_CPUS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import logging  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel(logging.ERROR)
tf.config.threading.set_intra_op_parallelism_threads(int(os.environ["TF_NUM_INTRAOP_THREADS"]))
tf.config.threading.set_inter_op_parallelism_threads(int(os.environ["TF_NUM_INTEROP_THREADS"]))

from estimator_gan import config as config_lib  # noqa: E402
from estimator_gan.data import pipeline  # noqa: E402
from estimator_gan.gan import GAN  # noqa: E402
from estimator_gan.model import gan as gan_lib  # noqa: E402
from estimator_gan.model import losses as losses_lib  # noqa: E402
from estimator_gan.model import networks, resnet  # noqa: E402
from estimator_gan.runtime import loop  # noqa: E402

v1 = tf.compat.v1
SHARED_MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")


# ------------------------------------------------------------------------- command line


def parse_args(description: str, add_arguments: Optional[Callable] = None) -> argparse.Namespace:
    """`--quick` (a short run), `--smoke` (a few steps, to keep the script working in CI),
    `--repeats N`; `add_arguments(parser)` adds a script's own options."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run (under two minutes)")
    mode.add_argument("--smoke", action="store_true", help="a few steps only: checks the script runs")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per variant (median reported)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.repeats is None:
        args.repeats = {"smoke": 1, "quick": 3, "full": 5}[args.mode]
    return args


def smoke_overrides(args) -> List[str]:
    """Config overrides that shrink the DCGAN for a smoke run (its numbers mean nothing)."""
    return ["model.generator.filters=8", "model.discriminator.filters=8"] if args.mode == "smoke" else []


def pick(args, full, quick, smoke):
    """The value for this run's mode."""
    return {"full": full, "quick": quick, "smoke": smoke}[args.mode]


# -------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What the numbers depend on: TF version, CPU, thread pools, load (1/5/15 min)."""
    return {
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus_available": _CPUS,
        "TF_NUM_INTRAOP_THREADS": int(os.environ["TF_NUM_INTRAOP_THREADS"]),
        "TF_NUM_INTEROP_THREADS": int(os.environ["TF_NUM_INTEROP_THREADS"]),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------------------ configs


def mnist_data_overrides(workdir: str) -> List[str]:
    """Data overrides for MNIST-sized images: the shared MNIST test set when present, else
    synthetic 28x28 uint8 images in an npy file under `workdir` (same shape, same pipeline)."""
    if os.path.isdir(SHARED_MNIST):
        return ["data.source=mnist", f"data.path={SHARED_MNIST}"]
    return synthetic_image_overrides(workdir, 28, 1)


def synthetic_image_overrides(workdir: str, size: int, channels: int, count: int = 2048) -> List[str]:
    """Random uint8 images with random labels 0..9 (so the conditional shipped config runs)."""
    path = os.path.join(workdir, f"synthetic_{size}x{size}x{channels}.npy")
    labels = os.path.join(workdir, f"synthetic_{size}x{size}x{channels}_labels.npy")
    if not (os.path.exists(path) and os.path.exists(labels)):
        rng = np.random.RandomState(0)
        np.save(path, rng.randint(0, 256, (count, size, size, channels), dtype=np.uint8))
        np.save(labels, rng.randint(0, 10, count).astype(np.int64))
    return ["data.source=npy", f"data.path={path}", f"data.labels_path={labels}",
            f"data.image_size={size}", f"data.channels={channels}"]


# The baselines are plain DCGAN/MLP pairs: the product runs the same networks, without the
# extras the baselines do not have (spectral norm, generator EMA, PacGAN packing, conditioning,
# DiffAugment, in-training evaluation), so both sides do the same work per step.
# Every benchmark run: no in-training evaluation, no time budget (the runs set their own steps).
RUN_ONLY = ["eval.every_checkpoints=0", "train.max_minutes=null"]
PLAIN = ["model.discriminator.spectral_norm=false", "model.generator.ema_decay=null",
         "model.discriminator.packing=1", "model.augment=null", "model.conditional=false"] + RUN_ONLY


def dcgan_config(workdir: str, *overrides: str, plain: bool = True) -> config_lib.Config:
    """The shipped MNIST DCGAN job (configs/mnist_dcgan.yaml) on MNIST-sized data, plain (or
    as shipped, with `plain=False`)."""
    return config_lib.resolve(config_lib.load_config(
        "mnist_dcgan", mnist_data_overrides(workdir)
        + (PLAIN if plain else RUN_ONLY) + list(overrides)))


def mlp_config(*overrides: str) -> config_lib.Config:
    """The shipped 2D MLP job (configs/mixture_ring.yaml), plain, at batch 256 (the setting the
    throughput figures have been compared at since the first release; the shipped job uses 512)."""
    return config_lib.resolve(config_lib.load_config(
        "mixture_ring", PLAIN + ["data.batch_size=256"] + list(overrides)))


def resnet_config(workdir: str, *overrides: str) -> config_lib.Config:
    """The 32 px residual SN-GAN as Miyato et al. 2018 train it on CIFAR-10 (the papers' widths,
    z 128, spectral norm in D, hinge loss, Adam 2e-4 with betas (0, 0.9), 5 D updates per G
    update, batch 64) on synthetic 32x32x3 images, without the extras the TF2 baseline lacks
    (generator EMA, conditioning, packing, augmentation)."""
    adam = [f"train.{role}_optimizer.{k}={v}" for role in ("generator", "discriminator")
            for k, v in (("learning_rate", 2e-4), ("beta1", 0.0), ("beta2", 0.9))]
    return config_lib.resolve(config_lib.load_config(None, synthetic_image_overrides(workdir, 32, 3) + [
        "model.architecture=resnet", "model.z_dim=128", "loss.name=hinge", "train.d_steps=5",
        "data.batch_size=64"] + adam + PLAIN + ["model.discriminator.spectral_norm=true"]
        + list(overrides)))


def examples_per_step(config: config_lib.Config) -> int:
    """Real examples one global step consumes (one batch per D update)."""
    return config.data.batch_size * config.train.d_steps


# --------------------------------------------------------------- the product's loop


class RunTimes(tf.estimator.SessionRunHook):
    """Wall time at the end of each `session.run` (one run makes `steps_per_run` global steps),
    taken first among the hooks: the gap between two consecutive entries is one whole loop
    iteration (session.run, every hook, summaries and checkpoints that fall due)."""

    def __init__(self):
        self.times: List[float] = []

    def after_run(self, run_context, run_values):
        self.times.append(time.perf_counter())


class ProductLoop:
    """`GAN.train` as `run_train.py` runs it (the config's log, summary and checkpoint
    intervals and steps per run; progress printed to a buffer), resumed on one model_dir for
    each measurement."""

    def __init__(self, config: config_lib.Config, model_dir: str):
        self.gan = GAN(config, model_dir=model_dir)
        self.examples_per_step = examples_per_step(config)
        self.steps_per_run = 1 if config.distribute.strategy != "none" else loop.steps_per_run(config)
        self.output = io.StringIO()

    def measure(self, warmup: int, steps: int) -> float:
        """Seconds per step over `steps` steps after `warmup` steps (graph build, session start
        and restore come before the first step and are not counted); both are rounded up to
        whole runs. One more run follows, untimed: the run that ends training always writes
        the summaries (the sample picture's G forward included), which in steady state fall
        due every `train.save_summary_steps` steps only, and would weigh on a short window."""
        k = self.steps_per_run
        warm_runs, runs = max(1, -(-warmup // k)), max(1, -(-steps // k))
        timer = RunTimes()
        start = self.gan.global_step()
        self.gan.train(max_steps=start + (warm_runs + runs + 1) * k, hooks=[timer], stream=self.output)
        times = timer.times
        if len(times) != warm_runs + runs + 1:
            raise RuntimeError(f"expected {warm_runs + runs + 1} runs, timed {len(times)}")
        return (times[warm_runs + runs - 1] - times[warm_runs - 1]) / (runs * k)


# ---------------------------------------------------------- the hand-written TF2 loop


def _dcgan_init():
    return tf.keras.initializers.RandomNormal(stddev=0.02)


def keras_networks(config: config_lib.Config):
    """Keras (generator, discriminator) with the same layers and shapes as the built-in networks
    (checked by `check_same_size`; the DCGAN's initialisers too)."""
    m = config.model
    if m.conditional:
        raise ValueError("the benchmark's Keras networks are unconditional")
    L = tf.keras.layers
    g_cfg = m.generator
    shape = list(m.sample_shape)

    def norm_relu(x):
        if g_cfg.batch_norm:
            x = L.BatchNormalization(momentum=g_cfg.bn_decay, epsilon=1e-5)(x)
        return L.ReLU()(x)

    noise = tf.keras.Input([m.z_dim])
    samples = tf.keras.Input(shape)
    if m.architecture == "resnet":
        generated, logits = _keras_resnet(config, noise, samples, norm_relu)
    elif m.architecture == "dcgan":
        height, width, channels = shape
        n_up, h0, w0 = networks._upsampling_plan(height, width)
        filters = [g_cfg.filters * 2 ** (n_up - 1 - i) for i in range(max(n_up, 1))]
        x = L.Dense(h0 * w0 * filters[0], kernel_initializer=_dcgan_init())(noise)
        x = norm_relu(L.Reshape([h0, w0, filters[0]])(x))
        for i in range(1, n_up):
            x = norm_relu(L.Conv2DTranspose(filters[i], 4, 2, "same", kernel_initializer=_dcgan_init())(x))
        if n_up:
            x = L.Conv2DTranspose(channels, 4, 2, "same", kernel_initializer=_dcgan_init())(x)
        else:
            x = L.Conv2D(channels, 3, 1, "same", kernel_initializer=_dcgan_init())(x)
        generated = L.Activation("tanh")(x)
        y = samples
        for i in range(max(n_up, 1)):
            y = L.LeakyReLU(0.2)(L.Conv2D(m.discriminator.filters * 2 ** i, 4, 2, "same",
                                          kernel_initializer=_dcgan_init())(y))
        logits = L.Dense(1, kernel_initializer=_dcgan_init())(L.Flatten()(y))
    else:
        x = noise
        for units in g_cfg.hidden_units:
            x = norm_relu(L.Dense(units)(x))
        generated = L.Reshape(shape)(L.Dense(int(math.prod(shape)))(x))
        y = L.Flatten()(samples)
        for units in m.discriminator.hidden_units:
            y = L.LeakyReLU(0.2)(L.Dense(units)(y))
        logits = L.Dense(1)(y)
    logits = L.Reshape([])(logits)
    return tf.keras.Model(noise, generated), tf.keras.Model(samples, logits)


def _spectral_norm(layer_class):
    """`layer_class` (Keras Conv2D or Dense) with its kernel divided by its largest singular
    value, estimated by one power-iteration step per training call on a vector `sn_u`, as users
    write it: Keras' own `SpectralNormalization` (TF 2.15) cannot run inside `tf.function` (it
    branches on a tensor in Python)."""

    class SpectralNormalized(layer_class):
        def build(self, input_shape):
            super().build(input_shape)
            self.sn_u = self.add_weight(name="sn_u", shape=(1, self.kernel.shape[-1]),
                                        initializer="random_normal", trainable=False)

        def call(self, inputs, training=None):
            w = tf.reshape(self.kernel, [-1, self.kernel.shape[-1]])
            v = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(self.sn_u, w, transpose_b=True)))
            u = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(v, w)))
            if training:
                self.sn_u.assign(u)
            kernel = self.kernel / tf.reduce_sum(tf.matmul(v, w) * u)
            if layer_class is tf.keras.layers.Dense:
                outputs = tf.matmul(inputs, kernel)
            else:
                outputs = self.convolution_op(inputs, kernel)
            return tf.nn.bias_add(outputs, self.bias)

    return SpectralNormalized


def _keras_resnet(config: config_lib.Config, noise, samples, norm_relu):
    """The residual SN-GAN pair in Keras layers as the papers' code writes it (G's blocks
    up-sample before their convolutions, shortcut included; D's blocks pool after them, but for
    the first block's shortcut), with spectral norm on every D layer (`_spectral_norm`). The
    product computes the same functions with fewer FLOPs (see `layers.conv2d`'s `resample`)."""
    m = config.model
    if m.self_attention is not None:
        raise ValueError("the benchmark's Keras residual networks have no self-attention")
    L = tf.keras.layers
    found = resnet.layout(m)
    g_filters, d_filters = networks.resolved_filters(m)
    conv, dense = ((_spectral_norm(L.Conv2D), _spectral_norm(L.Dense)) if m.discriminator.spectral_norm
                   else (L.Conv2D, L.Dense))
    widths = [g_filters * k for k in found.generator]
    x = L.Reshape([found.bottom, found.bottom, widths[0]])(L.Dense(found.bottom ** 2 * widths[0])(noise))
    for width in widths[1:]:
        h = L.Conv2D(width, 3, padding="same")(L.UpSampling2D()(norm_relu(x)))
        h = L.Conv2D(width, 3, padding="same")(norm_relu(h))
        x = L.Add()([h, L.Conv2D(width, 1)(L.UpSampling2D()(x))])
    generated = L.Activation("tanh")(L.Conv2D(m.sample_shape[-1], 3, padding="same")(norm_relu(x)))
    y = samples
    for i, k in enumerate(found.discriminator):
        width, down, channels = d_filters * k, i < found.down, int(y.shape[-1])
        h = conv(width if i == 0 else channels, 3, padding="same")(y if i == 0 else L.ReLU()(y))
        h = conv(width, 3, padding="same")(L.ReLU()(h))
        h = L.AveragePooling2D()(h) if down else h
        if i == 0:
            shortcut = conv(width, 1)(L.AveragePooling2D()(y))
        elif down or channels != width:
            shortcut = conv(width, 1)(y)
            shortcut = L.AveragePooling2D()(shortcut) if down else shortcut
        else:
            shortcut = y
        y = L.Add()([h, shortcut])
    features = L.Lambda(lambda t: tf.reduce_sum(t, axis=[1, 2]))(L.ReLU()(y))
    return generated, dense(1)(features)


def product_sizes(config: config_lib.Config) -> Dict[str, int]:
    """Number of values in each built-in network's variables (trainable and BN statistics)."""
    parts = gan_lib.GANParts.from_params({"config": config})
    with tf.Graph().as_default():
        z = tf.zeros([2, config.model.z_dim])
        fake = parts.generator(z, None, tf.estimator.ModeKeys.TRAIN).outputs
        parts.discriminator(fake, None, tf.estimator.ModeKeys.TRAIN)
        return {scope: sum(int(np.prod(v.shape)) for v in v1.global_variables(scope + "/"))
                for scope in gan_lib.ROLES}


def check_same_size(config: config_lib.Config, generator, discriminator) -> Dict[str, int]:
    sizes = product_sizes(config)
    keras_sizes = {gan_lib.GENERATOR: generator.count_params(),
                   gan_lib.DISCRIMINATOR: discriminator.count_params()}
    if keras_sizes != sizes:
        raise AssertionError(f"Keras networks {keras_sizes} differ from the product's {sizes}")
    return sizes


def _keras_adam(cfg: config_lib.OptimizerConfig):
    if cfg.name != "adam":
        raise ValueError("the benchmark's TF2 loop uses Adam")
    return tf.keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, beta_2=cfg.beta2, epsilon=1e-8)


class TFFunctionLoop:
    """The loop users write in TF2 (the TensorFlow DCGAN tutorial's pattern): Keras models of
    the same size, `tf.GradientTape` inside one `tf.function` per step (compiled with XLA when
    `jit_compile`). Per step: `d_steps` D updates on fresh noise and one real batch each, then
    `g_steps` G updates on fresh noise (a new G forward) through the updated D; same loss
    function; same input pipeline."""

    def __init__(self, config: config_lib.Config, jit_compile: bool = False):
        self.config = config
        self.examples_per_step = examples_per_step(config)
        self.generator, self.discriminator = keras_networks(config)
        self.sizes = check_same_size(config, self.generator, self.discriminator)
        train = config.train
        g_opt, d_opt = _keras_adam(train.generator_optimizer), _keras_adam(train.discriminator_optimizer)
        loss = losses_lib.get_loss(config.loss.name)
        G, D, z_dim = self.generator, self.discriminator, config.model.z_dim

        @tf.function(jit_compile=jit_compile)
        def train_step(reals):
            batch = tf.shape(reals[0])[0]
            for real in reals:
                fake = G(tf.random.normal([batch, z_dim]), training=True)
                with tf.GradientTape() as tape:
                    inputs = losses_lib.DiscriminatorLossInputs(
                        D(real, training=True), D(fake, training=True), real, fake,
                        lambda x: D(x, training=True))
                    d_loss = loss.discriminator_loss(inputs, config.loss)
                d_opt.apply_gradients(zip(tape.gradient(d_loss, D.trainable_variables),
                                          D.trainable_variables))
            for _ in range(train.g_steps):
                with tf.GradientTape() as tape:
                    fake_logits = D(G(tf.random.normal([batch, z_dim]), training=True), training=True)
                    g_loss = loss.generator_loss(fake_logits, config.loss)
                g_opt.apply_gradients(zip(tape.gradient(g_loss, G.trainable_variables),
                                          G.trainable_variables))
            return d_loss, g_loss

        self._step = train_step
        dataset = pipeline.make_input_fn(config.data, training=True, seed=train.seed)()
        self._batches = iter(dataset.batch(train.d_steps, drop_remainder=True))

    def step_flops(self) -> int:
        """Floating-point operations of one step of this loop, counted from its traced graph
        (TensorFlow's profiler, per op from static shapes)."""
        element = next(self._batches)
        features = element[0] if isinstance(element, tuple) else element
        graph = self._step.get_concrete_function(
            tf.unstack(features, num=self.config.train.d_steps)).graph
        options = v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return v1.profiler.profile(graph, options=options).total_float_ops

    def _run(self, steps: int):
        losses = None
        for _ in range(steps):
            element = next(self._batches)
            features = element[0] if isinstance(element, tuple) else element
            losses = self._step(tf.unstack(features, num=self.config.train.d_steps))
        return [float(x) for x in losses]

    def measure(self, warmup: int, steps: int) -> float:
        """Seconds per step over `steps` steps after `warmup` steps (the first call traces)."""
        self._run(warmup)
        start = time.perf_counter()
        losses = self._run(steps)
        elapsed = time.perf_counter() - start
        if not all(map(math.isfinite, losses)):
            raise FloatingPointError(f"non-finite losses {losses}")
        return elapsed / steps


# ------------------------------------------------------------------ FLOPs and the peak


def step_flops(config: config_lib.Config) -> int:
    """Floating-point operations of one global step of the product's train op, counted from
    its graph (TensorFlow's profiler, per op from static shapes; one step, no in-graph loop;
    a conditional model gets labels of the batch's shape)."""
    parts = gan_lib.GANParts.from_params({"config": config})
    model, train = config.model, config.train
    with tf.Graph().as_default() as graph:
        v1.train.create_global_step()
        leading = [1, max(train.d_steps, 1), config.data.batch_size]
        real = tf.zeros(leading + list(model.sample_shape))
        labels = tf.zeros(leading, tf.int32) if model.conditional else None
        ops = gan_lib.gan_train_ops(parts, real, labels, train.d_steps, train.g_steps)
        needed = v1.graph_util.extract_sub_graph(graph.as_graph_def(add_shapes=True), [ops.train_op.name])
    with tf.Graph().as_default() as step_graph:
        tf.graph_util.import_graph_def(needed, name="")
        options = v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return v1.profiler.profile(step_graph, options=options).total_float_ops


def matmul_peak(size: int = 2048, repeats: int = 3) -> float:
    """The machine's dense float32 matmul rate (FLOP/s): a `size`^3 matmul in a session with
    this process's thread pools, median of `repeats` after a warm-up."""
    with tf.Graph().as_default():
        a = v1.get_variable("a", [size, size], initializer=v1.random_normal_initializer())
        b = v1.get_variable("b", [size, size], initializer=v1.random_normal_initializer())
        product = tf.reduce_sum(tf.matmul(a, b))
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(product)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                session.run(product)
                times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / median(times)


# ---------------------------------------------------------------------- measurement


def interleave(variants: Dict[str, Callable[[], float]], repeats: int,
               log=sys.stderr) -> Dict[str, List[float]]:
    """Run each variant once per repeat, in turn, `repeats` times: {name: [result, ...]}."""
    results: Dict[str, List[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            value = fn()
            results[name].append(value)
            print(f"  repeat {r + 1}/{repeats}  {name:<28} {value:.6g}", file=log, flush=True)
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def workdir(prefix: str) -> str:
    """A fresh temporary directory for model dirs and generated data, removed at exit unless
    BENCHMARK_KEEP is set (then its path is printed to stderr)."""
    path = tempfile.mkdtemp(prefix=f"estimator-gan-{prefix}-")
    if os.environ.get("BENCHMARK_KEEP"):
        print(f"keeping {path}", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- output


def format_value(value) -> str:
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))) - 1)
        return f"{value:,.{min(digits, 6)}f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence], stream=sys.stdout):
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(f"\n{title}", file=stream)
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths))),
          file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for row in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))),
              file=stream)
    stream.flush()


def print_environment(env: dict, stream=sys.stdout):
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), file=stream, flush=True)


def emit_json(benchmark: str, args, result: dict, started: float):
    """The machine-readable result: one JSON line, always the last line printed."""
    record = {"benchmark": benchmark, "mode": args.mode, "repeats": args.repeats}
    record.update(result)
    record["environment"] = environment()
    record["seconds"] = round(time.time() - started, 1)
    print(json.dumps(record, sort_keys=False), flush=True)

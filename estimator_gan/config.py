"""One validated configuration object, from a YAML file to every `model_fn`'s `params`.

A run is described by a `Config` (data, model, loss, train, export, eval, distribute). It is
loaded from YAML with `load_config` (a path, or the name of a shipped config such as
`mnist_dcgan`), adjusted by dotted `--set key=value` overrides, validated (unknown keys,
out-of-range values and `true` where a number belongs are refused), and saved as `config.yaml`
beside the checkpoints so that a model directory always says how it was made. The defaults are
the offline default job: a small DCGAN on scikit-learn's bundled digits.

Files are read and written through `fileio`, so a config or model directory may be on any
filesystem TensorFlow knows (`gs://`, `s3://`, `ram://`, ...).
"""
from __future__ import annotations

import math
import os
import typing
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from estimator_gan import fileio
from estimator_gan.data import sources
from estimator_gan.errors import ConfigError
from estimator_gan.model import augment, custom, losses, networks, resnet

CONFIG_FILENAME = "config.yaml"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def _numeric(annotation) -> bool:
    """Whether a field holds numbers (so YAML's true/false must not pass as 1/0)."""
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(annotation) if a is not type(None))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info):
        field = cls.model_fields.get(info.field_name)
        flat = value if isinstance(value, list) else [value]
        if field is not None and _numeric(field.annotation) and any(isinstance(v, bool) for v in flat):
            raise ValueError("expected a number, not true/false")
        return value


class MixtureConfig(_Strict):
    """A generated 2D mixture of Gaussians: `ring` (modes on a circle) or `grid` (a square)."""

    kind: Literal["ring", "grid"] = Field(
        "ring", description="`ring`: modes on a circle; `grid`: modes on a square grid.")
    modes: int = Field(8, ge=1, description="Number of Gaussians (a square number for a grid).")
    radius: float = Field(2.0, gt=0, description="Ring radius, or grid spacing.")
    std: float = Field(0.02, gt=0, description="Standard deviation of each Gaussian.")
    num_examples: int = Field(100_000, ge=1, description="Points drawn (with seed `train.seed`).")

    @model_validator(mode="after")
    def _grid_is_square(self):
        if self.kind == "grid" and round(self.modes ** 0.5) ** 2 != self.modes:
            raise ValueError(f"a grid mixture needs a square number of modes, got {self.modes}")
        return self

    def centres(self) -> List[Tuple[float, float]]:
        """The mode centres, in the order the data source and the mode metrics use."""
        if self.kind == "ring":
            return [
                (self.radius * math.cos(2 * math.pi * k / self.modes),
                 self.radius * math.sin(2 * math.pi * k / self.modes))
                for k in range(self.modes)
            ]
        side = round(self.modes ** 0.5)
        offset = (side - 1) / 2.0
        return [((i - offset) * self.radius, (j - offset) * self.radius)
                for i in range(side) for j in range(side)]


class SplitConfig(_Strict):
    """A seeded split of a data set into two disjoint parts, e.g. to train the GAN on one and
    the evaluation's feature classifier (and real reference) on the other.

    The examples are permuted with `seed`; part `first` is the first `round(fraction * N)` of
    them, part `second` the rest. The same seed and fraction always give the same parts.
    """

    fraction: float = Field(0.5, gt=0, lt=1, description="Share of the examples in part 'first'.")
    part: Literal["first", "second"] = "first"
    seed: int = 0

    def complement(self) -> "SplitConfig":
        """The same split, the other part."""
        return self.model_copy(update={"part": "second" if self.part == "first" else "first"})


class TfdsConfig(_Strict):
    """A TensorFlow Datasets data set (`data.source: tfds`; needs `pip install estimator-gan[tfds]`).

    The data set must already be prepared in `data_dir`: with `download: false` (the default) a
    job never downloads by surprise, and a missing data set stops it with a one-line error that
    says how to get it (`download: true` once, or `tfds build <name> --data_dir <dir>`).
    """

    name: Optional[str] = Field(
        None, description="TFDS data set name, optionally with config and version "
                          "(e.g. `cifar10`, `celeb_a`, `mnist:3.0.1`).")
    split: str = Field("train", description="TFDS split, with TFDS slicing (e.g. `train`, `train[:90%]`, `train+test`).")
    data_dir: Optional[str] = Field(
        None, description="Where TFDS data sets are prepared (null: TFDS's default, "
                          "`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).")
    download: bool = Field(
        False, description="Download and prepare the data set if it is not in data_dir yet (for a "
                           "distributed job, prepare it first: every process would download).")
    image_key: str = Field("image", description="Feature holding the image (a TFDS Image feature).")
    label_key: Optional[str] = Field(
        "label", description="ClassLabel feature used as the label (null: unlabelled, e.g. for celeb_a).")


class StackedConfig(_Strict):
    """Stacked MNIST (`data.source: stacked_mnist`): each example is three MNIST digits drawn
    independently and stacked as the R, G, B channels; a mode is the triple of digit classes
    (1,000 in all). The digits come from the `mnist` source's files (`data.path`), after
    `data.split`, so a split keeps the evaluation's digits apart from the GAN's."""

    num_examples: int = Field(100_000, ge=1, description="Stacks drawn (uint8, 2.35 KB each at 28 px).")
    seed: int = Field(0, description="Seed of the choice of digit triples (the same seed, the same data set).")


class ClustersConfig(_Strict):
    """Cluster labels for unlabelled data (`data.clusters`; see `estimator_gan.data.clusters`):
    the training examples get the ids of `count` equal-sized k-means clusters of their leading
    principal components, in place of any labels, and a conditional model trains on them."""

    count: int = Field(0, ge=0, description="Clusters (0: off). Needs model.conditional and the "
                                            "examples in memory.")
    seed: int = Field(0, description="Seed of the clustering (the same seed and data, the same labels).")


class DataConfig(_Strict):
    """Where real examples come from and how they are batched.

    `batch_size` is the *global* batch: under a distribution strategy each replica gets
    `batch_size / num_replicas_in_sync` examples.
    """

    source: str = Field(
        "digits", description="Where real examples come from: "
                              + ", ".join(f"`{n}`" for n in sources.names())
                              + " (see the README's data sources).")
    path: Optional[str] = Field(
        None, description="File or folder for mnist/stacked_mnist/images/tfrecord/npy; mnist and "
                          "stacked_mnist without it use Keras' cache `~/.keras/datasets/mnist.npz` "
                          "(fetched once when online).")
    labels_path: Optional[str] = Field(None, description="npy: optional label array file.")
    image_size: Optional[int] = Field(
        None, ge=4, description="Resize images to this square size (default: per source).")
    channels: Optional[int] = Field(None, description="1 or 3 (default: per source).")
    batch_size: int = Field(64, ge=1, description="Global batch size (split across replicas).")
    shuffle_buffer: int = Field(10_000, ge=1, description="File sources: examples in the shuffle buffer.")
    cache: bool = Field(True, description="File sources: keep decoded images in memory when they fit.")
    on_corrupt: Literal["fail", "skip"] = Field(
        "fail", description="images/tfrecord: fail on an undecodable file or skip and count.")
    image_key: str = Field("image/encoded", description="tfrecord: feature holding the encoded image.")
    label_key: Optional[str] = Field(
        "image/class/label", description="tfrecord: int64 label feature (null: unlabelled).")
    mixture: MixtureConfig = MixtureConfig()
    tfds: TfdsConfig = TfdsConfig()
    stacked: StackedConfig = StackedConfig()
    clusters: ClustersConfig = ClustersConfig()
    split: Optional[SplitConfig] = Field(
        None, description="Use one part of a seeded split of the examples (not for tfrecord).")

    def mixture_centres(self) -> Optional[List[Tuple[float, float]]]:
        """The mode centres of 2D mixture data (for plots and mode metrics), else None."""
        return self.mixture.centres() if self.source == "mixture2d" else None

    @field_validator("source")
    @classmethod
    def _known_source(cls, v):
        if v not in sources.names():
            raise ValueError(f"unknown data source {v!r}; choose one of {', '.join(sources.names())}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if v is not None and v not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {v}")
        return v

    @model_validator(mode="after")
    def _tfds_needs_a_name(self):
        if self.source == "tfds" and not self.tfds.name:
            raise ValueError("data.source tfds needs data.tfds.name, the TFDS data set (e.g. cifar10)")
        return self


class GeneratorConfig(_Strict):
    """The built-in generator (`model.architecture`)."""

    filters: Optional[int] = Field(
        None, ge=1, description="Channels at full resolution: dcgan's last hidden layer, resnet's "
        "last block (the layout sets the others as multiples). null: the architecture's default, "
        "filled in from the sample shape (" + networks.filters_doc(0) + ").")
    hidden_units: List[int] = Field([128, 128], description="MLP: hidden layer widths.")
    batch_norm: bool = Field(True, description="Batch norm in the generator (after each hidden "
                                               "layer; resnet: in each block and before the output).")
    bn_decay: float = Field(0.99, gt=0, lt=1, description="Moving-average decay of BN stats.")
    ema_decay: Optional[float] = Field(
        0.999, ge=0, lt=1,
        description="Keep an exponential moving average of G's weights with this decay "
                    "(warmed up as min(decay, (1+n)/(10+n)) over G updates n); null: no EMA.")
    inference_weights: Literal["ema", "raw"] = Field(
        "ema", description="Weights EVAL, PREDICT and export use: the moving average or the raw "
                           "weights. Not part of the architecture: may differ between runs.")


class DiscriminatorConfig(_Strict):
    """The built-in discriminator (`model.architecture`)."""

    filters: Optional[int] = Field(
        None, ge=1, description="Channels at full resolution: dcgan's first conv layer, resnet's "
        "first block (the layout sets the others as multiples). null: the architecture's default, "
        "filled in from the sample shape (" + networks.filters_doc(1) + ").")
    hidden_units: List[int] = Field([128, 128], description="MLP: hidden layer widths.")
    spectral_norm: bool = Field(
        True, description="Divide every D weight by its largest singular value (one power "
                           "iteration per D update).")
    packing: int = Field(
        1, ge=1, description="PacGAN: D judges groups of this many samples at once (concatenated "
                             "along the last axis), which penalises mode collapse.")
    minibatch_stddev: bool = Field(
        False, description="ProGAN's minibatch standard deviation: before its last layer D sees "
                           "one more feature, the batch's mean feature standard deviation, which "
                           "penalises too-similar samples.")


class ModelConfig(_Strict):
    """The networks. The fields here (but `augment` and `generator.inference_weights`) fix
    variable shapes: a model directory refuses to resume under a config that changes any of
    them."""

    architecture: str = Field(
        "dcgan", description="Built-in network pair: " + ", ".join(f"`{n}`" for n in networks.ARCHITECTURES)
        + " (`dcgan` for images of any size, `resnet` the residual SN-GAN for square images of "
        + ", ".join(map(str, resnet.LAYOUTS)) + " px, `mlp` for e.g. 2D points).")
    z_dim: int = Field(64, ge=1, description="Length of the noise vector fed to the generator.")
    sample_shape: Optional[List[int]] = Field(
        None, description="Shape of one example; filled in from the data source.")
    conditional: bool = Field(False, description="Condition G and D on class labels.")
    self_attention: Optional[int] = Field(
        None, ge=4, description="resnet: insert one self-attention block (SAGAN) in G and D at "
        "this resolution, e.g. 64 for 128 px images (a resolution both networks reach); null: none.")
    num_classes: Optional[int] = Field(
        None, ge=1, description="Classes of a conditional model; filled in from the data source.")
    latent_codes: List[int] = Field(
        [], description="InfoGAN (Chen et al. 2016): categorical codes of these sizes, each the "
        "argmax of its slice of the noise (the first k1 dimensions, the next k2, ...), given to G "
        "one-hot; D gets a head that predicts them, and G and D minimise its cross-entropy on "
        "generated samples (loss.info_weight), which makes every sample show its code. Unlabelled "
        "data with k classes: [k] (Stacked MNIST: [10, 10, 10]); []: none.")
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    generator_fn: Optional[str] = Field(
        None, description="Import path 'package.module:name' of your own generator "
                          "fn(noise, labels, mode, params); replaces the architecture's. "
                          "'in-script:<name>' records a function passed to GAN from a script "
                          "(not importable: only that script can rebuild the run).")
    discriminator_fn: Optional[str] = Field(
        None, description="Import path of your own discriminator fn(samples, labels, mode, "
                          "params) -> logits [B]; replaces the architecture's. 'in-script:<name>' "
                          "as for generator_fn.")
    augment: Optional[str] = Field(
        None, description="Differentiable augmentation of every image D sees in training (DiffAugment), "
                          "comma-separated, applied in order: " + ", ".join(augment.TRANSFORMS)
                          + " (e.g. 'color,translation,cutout'); null: none. Images only.")

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v):
        if v not in networks.ARCHITECTURES:
            raise ValueError(f"unknown architecture {v!r}; choose one of {', '.join(networks.ARCHITECTURES)}")
        return v

    @field_validator("augment")
    @classmethod
    def _augmentations(cls, v):
        augment.policy(v)
        return v

    @model_validator(mode="after")
    def _codes_fit_noise(self):
        if any(k < 2 for k in self.latent_codes):
            raise ValueError(f"model.latent_codes {self.latent_codes}: every code needs at least 2 values")
        if sum(self.latent_codes) > self.z_dim:
            raise ValueError(f"model.latent_codes {self.latent_codes} read {sum(self.latent_codes)} "
                             f"noise dimensions but model.z_dim is {self.z_dim}: raise z_dim")
        return self


class LossConfig(_Strict):
    """The GAN loss, from the loss registry or your own."""

    name: str = Field(
        "non_saturating",
        description="A name in the loss registry, or an import path 'package.module:name' of a "
                    "GANLoss or a (discriminator_loss, generator_loss) pair.")
    gradient_penalty_weight: float = Field(
        10.0, ge=0, description="wasserstein: weight of the gradient penalty (0: none).")
    r1_weight: float = Field(
        0.0, ge=0, description="gamma of the zero-centred gradient penalty on real data, "
        "gamma/2 E||grad D(x)||^2 (R1, Mescheder et al. 2018), added to D's loss (0: none).")
    r1_every: int = Field(
        1, ge=1, description="Lazy R1: apply it (times this factor) every n-th step only.")
    info_weight: float = Field(
        1.0, ge=0, description="Weight of the InfoGAN code cross-entropy in both losses "
                               "(with model.latent_codes).")
    top_k: Optional[float] = Field(
        None, gt=0, le=1, description="Top-k generator updates (Sinha et al. 2020): G's loss "
        "counts only the fakes D scores most real, a share falling linearly from all of them to "
        "this one over the first `top_k_anneal` of max_steps (null: all fakes, always).")
    top_k_anneal: float = Field(
        0.5, ge=0, le=1, description="Share of max_steps over which the top_k share falls.")

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in losses.registered_losses() and ":" not in v:
            raise ValueError(
                f"unknown loss {v!r}; choose one of {', '.join(losses.registered_losses())}")
        return v


class OptimizerConfig(_Strict):
    """One network's optimizer."""

    name: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="Optimizer.")
    learning_rate: float = Field(2e-4, gt=0, description="Learning rate.")
    beta1: float = Field(0.5, ge=0, lt=1, description="adam: first-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="adam: second-moment decay.")


class TrainConfig(_Strict):
    """The orchestrated loop: each global step is `d_steps` D updates (one input batch each)
    followed by `g_steps` G updates that see the freshly updated D."""

    max_steps: int = Field(2000, ge=1, description="Train until the global step reaches this.")
    d_steps: int = Field(1, ge=1, description="Discriminator updates per global step.")
    g_steps: int = Field(1, ge=1, description="Generator updates per global step.")
    generator_optimizer: OptimizerConfig = OptimizerConfig()
    discriminator_optimizer: OptimizerConfig = OptimizerConfig()
    seed: Optional[int] = Field(0, description="Graph-level and data seed (null: random).")
    log_every_steps: int = Field(100, ge=1, description="Print a progress line every N steps.")
    save_checkpoints_steps: int = Field(
        500, ge=1, description="Checkpoint (and sample PNG) every N steps.")
    save_summary_steps: int = Field(100, ge=1, description="TensorBoard summaries every N steps.")
    keep_checkpoint_max: int = Field(5, ge=1, description="Checkpoints kept.")
    sample_grid: int = Field(8, ge=1, le=32, description="Sample PNG is a grid of n x n.")
    stop_grace_secs: float = Field(
        25.0, gt=0, description="After SIGTERM/SIGINT, exit at once if the clean stop (finish the "
        "step, save a checkpoint) takes longer than this (preemption notices give ~30 s).")
    max_minutes: Optional[float] = Field(
        None, gt=0, description="Time budget: after this many minutes of wall time, stop like "
        "SIGTERM does (finish the run, save a checkpoint, exit 0); a rerun continues (null: none).")
    steps_per_run: Optional[int] = Field(
        None, ge=1, description="Global steps per session.run, in one in-graph loop (single-process "
        "training; lowered to divide the log, summary and checkpoint intervals). Does not change "
        "what is computed. null: chosen from the model's size (many for small models).")
    lr_decay_start: Optional[float] = Field(
        None, ge=0, lt=1, description="From this fraction of max_steps on, both learning rates "
        "decay linearly to lr_decay_final times their value at max_steps (null: constant).")
    lr_decay_final: float = Field(0.0, ge=0, le=1, description="See lr_decay_start.")
    precision: Literal["float32", "mixed_bfloat16"] = Field(
        "float32", description="Training arithmetic: float32, or mixed_bfloat16 (matmuls and "
        "convolutions in bfloat16 with float32 weights, through oneDNN; fast on CPUs with AMX or "
        "AVX512_BF16, slow elsewhere). Exports and evaluation always run in float32.")
    reuse_fakes: bool = Field(
        True, description="The G update reuses the generated batch (and its forward pass) of the "
        "step's last D update instead of running G again: G's weights have not changed since.")


class ExportConfig(_Strict):
    """Exports for serving: `estimator-gan export`, and optionally during training.

    Batch norm at serving time uses moving statistics, which lag a generator whose weights still
    change fast; `standing_statistics` recomputes them for the exported weights first (G in
    training mode over `standing_batches` noise batches), without touching the checkpoints.
    """

    standing_statistics: bool = Field(True, description="Recompute G's batch-norm statistics for the exported weights before export.")
    standing_batches: int = Field(50, ge=1, description="Noise batches averaged for the standing statistics.")
    standing_batch_size: int = Field(256, ge=2, description="Samples per standing-statistics batch.")
    max_count: int = Field(4096, ge=1, description="Largest `count` the seed signatures accept.")
    during_training: Literal["never", "checkpoint", "best"] = Field(
        "never", description="Export after every checkpoint, or when `best_metric` improves.")
    dir: Optional[str] = Field(None, description="Training-time exports (default: <model_dir>/export).")
    keep: int = Field(5, ge=1, description="Versions kept by training-time exports.")
    best_metric: str = Field("loss/generator", description="An EVAL metric name.")
    best_mode: Literal["min", "max"] = Field("min", description="Whether a lower or a higher `best_metric` is better.")
    eval_steps: int = Field(20, ge=1, description="EVAL batches per `best` check.")
    tflite: bool = Field(False, description="Also write the noise signature as TFLite.")


class EvalConfig(_Strict):
    """Sample-quality evaluation (`estimator-gan evaluate` and, during training, every
    `every_checkpoints`-th checkpoint; 0 turns the in-training metrics off).

    The real data for the metrics is `data` itself or, when `data.split` is set, the *other*
    part of the split, so the feature classifier and the real reference never saw the GAN's
    training examples.
    """

    every_checkpoints: int = Field(0, ge=0, description="Evaluate every n-th checkpoint while training (0: off).")
    num_samples: int = Field(1000, ge=10, description="Generated samples, and real reference samples.")
    eval_batches: int = Field(20, ge=1, description="Batches of the Estimator EVAL pass (losses, D accuracy).")
    features: Literal["auto", "classifier", "pixels", "inception"] = Field(
        "auto", description="Feature space of FID/KID for images: classifier (trained on the data's "
                            "labels), pixels (random projection), inception (the reference "
                            "Inception graph, as papers); auto: classifier if labelled, else pixels.")
    inception_graph: Optional[str] = Field(
        None, description="classify_image_graph_def.pb of inception-2015-12-05 (default: "
                          "~/.keras/models/inception-2015-12-05/...); downloaded there if missing.")
    inception_url: Optional[str] = Field(
        None, description="Where to download the Inception graph's .tgz from (default: "
                          "TensorFlow's download site).")
    classifier_epochs: int = Field(3, ge=1, description="Training epochs of the offline feature classifier.")
    classifier_cache: Optional[str] = Field(
        None, description="Feature classifier .keras file (default: <model_dir>/eval/feature_classifier-<hash>.keras).")
    kid_subset_size: int = Field(1000, ge=2, description="KID: samples per subset.")
    kid_num_subsets: int = Field(10, ge=1, description="KID: subsets averaged.")
    mode_std_k: float = Field(3.0, gt=0, description="2D mixture: high quality = within k std of a mode centre.")
    seed: int = Field(0, description="Seed of the generated samples and the feature classifier.")


class DistributeConfig(_Strict):
    """How training spreads over devices and processes (see `estimator_gan.distributed`).

    Processes and their roles come from the `TF_CONFIG` environment variable, never from here:
    the same config file serves every process of a job.

    * `none` — one device; with a `ps` job in `TF_CONFIG`, asynchronous parameter-server
      training (each chief/worker step uses `data.batch_size` examples of its own shard).
    * `parameter_server` — the same, but refuses to start without a `ps` job.
    * `mirrored` — synchronous, one machine, `num_devices` replicas (GPUs, or that many CPU
      devices for trying it out); `data.batch_size` is the global batch, split across replicas.
    * `multi_worker_mirrored` — synchronous across the chief and workers of `TF_CONFIG` (no
      `ps`); `data.batch_size` is the global batch over all replicas of all workers.
    """

    strategy: Literal["none", "parameter_server", "mirrored", "multi_worker_mirrored"] = Field(
        "none", description="How training is spread (see the section docstring).")
    num_devices: Optional[int] = Field(
        None, ge=1, description="mirrored: replicas (default: all GPUs, else 1 CPU); "
                                "CPU-only machines get that many CPU devices.")
    cross_device_ops: Literal["reduction_to_one_device", "hierarchical_copy", "nccl"] = Field(
        "reduction_to_one_device",
        description="mirrored: how gradients are summed (nccl/hierarchical_copy need GPUs).")
    communication: Literal["auto", "ring", "nccl"] = Field(
        "auto", description="multi_worker_mirrored: collective implementation.")
    max_worker_delay_secs: Optional[int] = Field(
        None, ge=0, description="Cap on the 5 s x (worker index + 1) start delay of workers.")
    evaluator_steps: int = Field(10, ge=1, description="Batches per evaluation (evaluator task).")
    evaluator_throttle_secs: int = Field(
        30, ge=0, description="Evaluator: at least this long between evaluations.")
    export_at_end: bool = Field(True, description="Chief exports the generator after training.")

    @model_validator(mode="after")
    def _device_options(self):
        if self.num_devices is not None and self.strategy != "mirrored":
            raise ValueError(f"num_devices applies to strategy 'mirrored', not {self.strategy!r}")
        return self


class Config(_Strict):
    """A whole run: the `data`, `model`, `loss` and `train` sections, validated (unknown keys
    and out-of-range values are refused). Usually made by `load_config`; every key is listed in
    docs/configuration.md."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    eval: EvalConfig = EvalConfig()
    distribute: DistributeConfig = DistributeConfig()

    @model_validator(mode="after")
    def _packing_fits(self):
        packing = self.model.discriminator.packing
        if self.data.batch_size % packing:
            raise ValueError(f"data.batch_size ({self.data.batch_size}) must be a multiple of "
                             f"model.discriminator.packing ({packing})")
        return self

    @model_validator(mode="after")
    def _clusters_fit_model(self):
        count = self.data.clusters.count
        if count and not self.model.conditional:
            raise ValueError("data.clusters labels the examples for a conditional model: set "
                             "model.conditional=true (or data.clusters.count=0)")
        if count and self.model.num_classes not in (None, count):
            raise ValueError(f"model.num_classes {self.model.num_classes} differs from "
                             f"data.clusters.count {count}")
        return self

    @model_validator(mode="after")
    def _features_fit_data(self):
        if self.data.source == "mixture2d" and self.eval.features != "auto":
            raise ValueError(f"eval.features {self.eval.features!r} applies to images; 2D mixture "
                             "samples are judged against their modes (leave eval.features auto)")
        if self.data.source == "stacked_mnist" and self.eval.features != "auto":
            raise ValueError(f"eval.features {self.eval.features!r} does not apply to stacked_mnist, "
                             "whose samples are judged by their modes with the digit classifier "
                             "(leave eval.features auto)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


def _format_validation_error(err: ValidationError, what: str = "config") -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key")
        else:
            msg = e["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.replace(prefix, "")
            parts.append(f"{where}: {msg} (got {e.get('input')!r})")
    return f"invalid {what}: " + "; ".join(parts)


def data_config(what: str = "data section", **fields) -> DataConfig:
    """A validated `DataConfig` from keyword fields; `ConfigError` naming `what` otherwise."""
    try:
        return DataConfig(**fields)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, what)) from None


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"invalid override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> List[Tuple[str, Any]]:
    """Turn `["train.max_steps=10", ...]` into `[("train.max_steps", 10), ...]`.

    Values are parsed as YAML, so `1e-3`, `true`, `[64, 64]` and `null` mean what they look like.
    """
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid override {item!r}: expected key=value, e.g. train.max_steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


def config_from_dict(tree: Optional[Dict[str, Any]], overrides: Sequence[str] = ()) -> Config:
    tree = yaml.safe_load(yaml.safe_dump(dict(tree or {})))  # deep copy of plain data
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def shipped_configs() -> List[str]:
    """Names of the configs that ship with the package (`load_config` takes them by name)."""
    return sorted(n[:-len(".yaml")] for n in os.listdir(SHIPPED_DIR) if n.endswith(".yaml"))


def config_path(name_or_path: str) -> str:
    """The file a `--config` value means: a path to a YAML file, else a shipped config's name
    (with or without `.yaml`)."""
    path = os.path.expanduser(str(name_or_path))
    if fileio.isdir(path):
        raise ConfigError(f"config path {path} is a directory, not a YAML file")
    if fileio.exists(path):
        return path
    name = os.path.basename(path)
    name = name[:-len(".yaml")] if name.endswith(".yaml") else name
    if os.sep not in str(name_or_path).rstrip(os.sep) and name in shipped_configs():
        return os.path.join(SHIPPED_DIR, name + ".yaml")
    raise ConfigError(f"config file not found: {name_or_path} (shipped configs: "
                      f"{', '.join(shipped_configs())})")


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (a path or a shipped config's name; the defaults when None) and
    apply dotted overrides. An empty file (or one of comments only) is refused: `{}` asks for
    the defaults explicitly."""
    tree: Dict[str, Any] = {}
    if path is not None:
        path = config_path(path)
        try:
            tree = yaml.safe_load(fileio.read_text(path))
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a text file") from None
        if tree is None:  # an empty file: a mistake, not a wish for the default job
            raise ConfigError(f"config file {path} is empty (no settings): add settings, or give "
                              f"no config file to run the default job")
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return config_from_dict(tree, overrides)


def save_config(config: Config, model_dir: str) -> str:
    """Write the effective config as `<model_dir>/config.yaml` (atomically)."""
    path = fileio.join(model_dir, CONFIG_FILENAME)
    return fileio.atomic_write(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_model_dir_config(model_dir: str) -> Config:
    """The effective config saved in a model directory by a training run."""
    path = fileio.join(model_dir, CONFIG_FILENAME)
    if not fileio.isfile(path):
        raise ConfigError(f"{model_dir} has no {CONFIG_FILENAME}: is it a model directory "
                          "written by estimator-gan?")
    return load_config(path)


def resolve(config: Config) -> Config:
    """Fill in what the data and the architecture decide (the sample shape; a conditional
    model's class count; null `filters`) so the config fully fixes the model, and refuse a model
    the architecture cannot build (`ConfigError`). Reads no data when the sample shape and class
    count are already set (e.g. a model directory's config), and at most an npy file's header
    otherwise."""
    model = config.model
    if (model.sample_shape is not None and (not model.conditional or model.num_classes is not None)
            and (not networks.uses_architecture(model)
                 or None not in (model.generator.filters, model.discriminator.filters))):
        networks.check(model)
        return config
    config = config.model_copy(deep=True)
    model = config.model
    if model.sample_shape is None:
        model.sample_shape = list(sources.sample_shape(config.data))
    if model.conditional and model.num_classes is None:
        classes = sources.num_classes(config.data)
        if classes is None:
            raise ConfigError(
                f"model.conditional needs class labels, but data.source={config.data.source} "
                "has none (or an unknown count): set model.num_classes or use a labelled source")
        model.num_classes = classes
    networks.check(model)
    if networks.uses_architecture(model):
        model.generator.filters, model.discriminator.filters = networks.resolved_filters(model)
    return config


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


# Fields of `model` that choose how a checkpoint is used, not what it holds.
_NOT_ARCHITECTURE = {"model.generator.inference_weights", "model.augment"}


_NETWORK_FNS = {"model.generator_fn", "model.discriminator_fn"}


def _same(key: str, a: Any, b: Any) -> bool:
    # The name of a network passed from a script says little (a rename, a move into a module):
    # there the checkpoint's variables are what is compared (see `runtime.loop.check_resumable`).
    return a == b or key in _NETWORK_FNS and (custom.is_in_script(a) or custom.is_in_script(b))


def architecture_differences(saved: Config, new: Config) -> List[str]:
    """Fields of `model` (the ones that fix variable shapes) that differ, as readable strings."""
    a = _flatten(saved.model.model_dump(mode="json"), "model.")
    b = _flatten(new.model.model_dump(mode="json"), "model.")
    return [f"{k}: {a.get(k)!r} in the checkpoint's config, {b.get(k)!r} now"
            for k in sorted(set(a) | set(b)) if not _same(k, a.get(k), b.get(k)) and k not in _NOT_ARCHITECTURE]

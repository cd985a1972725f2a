"""Export for serving: versioned SavedModels of the generator and discriminator, in the layout
TensorFlow Serving watches, plus TFLite and the helpers `generate` uses to load them.

Layout of an export directory (TF Serving serves the highest integer version of a model dir):

    <export_dir>/generator/<version>/saved_model.pb, variables/, assets.extra/
    <export_dir>/discriminator/<version>/...
    <export_dir>/tflite/<version>/generator.tflite          (with tflite=True)

One `export` call writes the same version number in every part. Each SavedModel is written
into a hidden temporary directory beside the versions and renamed into place, so a crash never
leaves a half-written version (a server ignores non-integer names).

What a caller must know:

* Generator signatures (see `model_fns.generator_predict_spec`): `serving_default` = `noise`
  (float32 `noise [B, z_dim]`), `seed` (int64 `seed`, int32 `count`) and `seed_truncated`
  (plus float32 `truncation`); a conditional model's signatures also take int32 `labels [B]`.
  Seed signatures draw the noise with stateless random ops: the same seed gives the same
  samples on any machine and after any reload. Outputs: `samples` (training range) and, for
  images, uint8 `images` and PNG `png_bytes`. The graph holds only G's variables.
* Discriminator signature `serving_default`: `samples` (and `labels`) -> `logits`,
  `probabilities`.
* Batch norm: the export uses moving statistics, so it is deterministic. They lag a generator
  whose weights still move, so by default they are first recomputed ("standing statistics",
  `export.standing_*` in the config): G runs in training mode with the exported weights over
  many noise batches, the pooled batch moments replace the moving statistics in a temporary
  copy of the checkpoint that the export reads. Checkpoints are never modified.
"""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import yaml
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from estimator_gan import config as config_lib
from estimator_gan import model_fns
from estimator_gan import nets

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys
GENERATOR = model_fns.GENERATOR_SCOPE  # export layout dirs are named after the roles
DISCRIMINATOR = model_fns.DISCRIMINATOR_SCOPE
TFLITE = "tflite"
TFLITE_FILENAME = "generator.tflite"
INFO_FILENAME = "export_info.json"
_TMP_PREFIX = ".tmp-"
_log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A problem with an export or a request to one, as a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")).strip())


# ---------------------------------------------------------------------------------- receivers

def stateless_noise(seed, count, z_dim: int, truncation=0.0) -> tf.Tensor:
    """Standard normal noise `[count, z_dim]`, a pure function of `seed` (stateless ops).

    `truncation` t > 0 draws from the normal truncated to [-t, t] (resampling, not clipping:
    inverse CDF of a uniform on [Phi(-t), Phi(t)]); 0 means no truncation.
    """
    seed_pair = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x6a09e667, tf.int64)])
    limit = tf.where(truncation > 0, tf.cast(truncation, tf.float64), tf.constant(np.inf, tf.float64))
    low = 0.5 * tf.math.erfc(limit / math.sqrt(2.0))
    uniform = tf.random.stateless_uniform(tf.stack([count, z_dim]), seed_pair, dtype=tf.float64)
    eps = np.finfo(np.float64).eps
    p = tf.clip_by_value(low + uniform * (1.0 - 2.0 * low), eps, 1.0 - eps)
    return tf.cast(tf.math.ndtri(p), tf.float32)


def _labels_placeholder(config: config_lib.Config) -> Dict[str, tf.Tensor]:
    if not config.model.conditional:
        return {}
    return {"labels": v1.placeholder(tf.int32, [None], name="labels")}


def noise_receiver_fn(config: config_lib.Config):
    """Receiver of float32 `noise [None, z_dim]` (plus int32 `labels [None]` when conditional)."""

    def receiver_fn():
        tensors = {"noise": v1.placeholder(tf.float32, [None, config.model.z_dim], name="noise"),
                   **_labels_placeholder(config)}
        return tf.estimator.export.ServingInputReceiver(tensors, tensors)

    return receiver_fn


def generator_receiver_fn(config: config_lib.Config):
    """Receiver for both ways to ask for samples: int64 `seed` + int32 `count` (+ optional
    float32 `truncation`, default 0 = none), from which the graph draws the noise, or the
    `noise` itself, which overrides the drawn noise when fed. The PREDICT spec makes one
    signature per way (`noise`, `seed`, `seed_truncated`)."""
    z_dim, max_count = config.model.z_dim, config.export.max_count

    def receiver_fn():
        seed = v1.placeholder(tf.int64, [], name="seed")
        count = v1.placeholder(tf.int32, [], name="count")
        truncation = v1.placeholder_with_default(tf.constant(0.0), [], name="truncation")
        checks = [
            tf.debugging.assert_positive(count, message="count must be at least 1"),
            tf.debugging.assert_less_equal(
                count, max_count, message=f"count must be at most {max_count} (export.max_count)"),
            tf.debugging.assert_non_negative(
                truncation, message="truncation must be >= 0 (0: no truncation)"),
        ]
        with tf.control_dependencies(checks):
            drawn = stateless_noise(seed, count, z_dim, truncation)
        noise = v1.placeholder_with_default(drawn, [None, z_dim], name="noise")
        labels = _labels_placeholder(config)
        features = {"noise": noise, "seed": seed, "count": count, "truncation": truncation, **labels}
        return tf.estimator.export.ServingInputReceiver(
            features, {"seed": seed, "count": count, "truncation": truncation, **labels})

    return receiver_fn


def discriminator_receiver_fn(config: config_lib.Config):
    """Receiver of float32 `samples [None, *sample_shape]` (plus `labels` when conditional)."""

    def receiver_fn():
        tensors = {"samples": v1.placeholder(tf.float32, [None, *config.model.sample_shape],
                                             name="samples"),
                   **_labels_placeholder(config)}
        return tf.estimator.export.ServingInputReceiver(tensors, tensors)

    return receiver_fn


# ----------------------------------------------------------------------- standing statistics

def training_mode_generator(noise, labels, params):
    """G with batch statistics (training mode) and the weights PREDICT reads; returns
    (samples, batch-norm update ops)."""
    return model_fns.generator(noise, labels, ModeKeys.TRAIN, params,
                               use_ema=model_fns.uses_ema(ModeKeys.PREDICT, params))


def standing_statistics(gan, checkpoint_path: str, output_prefix: str) -> int:
    """Write a copy of the checkpoint whose generator batch-norm moving statistics are
    recomputed for its weights; returns how many batch-norm layers were updated.

    G runs in training mode (batch statistics) on `export.standing_batches` noise batches of
    `export.standing_batch_size`; each layer's mean becomes the average batch mean and its
    variance the pooled variance of all samples. Batch norm not built with `nets.batch_norm`
    (e.g. a custom network's) keeps its moving statistics, with a warning.
    """
    cfg = gan.config
    ecfg = cfg.export
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(cfg.train.seed or 0)
        size = ecfg.standing_batch_size
        noise = tf.random.normal([size, cfg.model.z_dim])
        labels = (tf.random.uniform([size], 0, cfg.model.num_classes, tf.int32)
                  if cfg.model.conditional else None)
        training_mode_generator(noise, labels, gan.params)
        layers = nets.batch_moments(graph)
        covered = {v.op.name for layer in layers for v in layer[:2]}
        missed = [v.op.name for v in v1.global_variables()
                  if "moving_" in v.op.name.split("/")[-1] and v.op.name not in covered]
        if missed:
            _log.warning("standing statistics: %d moving statistics not made by nets.batch_norm "
                         "keep their checkpoint values (%s)", len(missed), ", ".join(missed[:3]))
        restore = v1.train.Saver(v1.global_variables())
        moments = [layer[2:] for layer in layers]
        with v1.Session(graph=graph) as session:
            restore.restore(session, checkpoint_path)
            sums = [[0.0, 0.0] for _ in layers]
            for _ in range(ecfg.standing_batches):
                for acc, (mean, var) in zip(sums, session.run(moments)):
                    mean = mean.astype(np.float64)
                    acc[0] = acc[0] + mean
                    acc[1] = acc[1] + var + np.square(mean)
    values = tf.train.load_checkpoint(checkpoint_path)
    tensors = {name: values.get_tensor(name) for name in values.get_variable_to_dtype_map()}
    n = float(ecfg.standing_batches)
    for (moving_mean, moving_var, _, _), (total, total_sq) in zip(layers, sums):
        mean = total / n
        tensors[moving_mean.op.name] = mean.astype(np.float32)
        tensors[moving_var.op.name] = np.maximum(total_sq / n - np.square(mean), 0.0).astype(np.float32)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=output_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[k]) for k in names])
    return len(layers)


# ------------------------------------------------------------------------------------ layout

def versions(base: str) -> List[int]:
    """The complete versions in a model dir such as `<export_dir>/generator`, ascending."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base)
                  if name.isdigit() and os.path.isdir(os.path.join(base, name)))


def version_dir(path: str, role: str = GENERATOR) -> str:
    """A SavedModel directory from an export dir, a model dir (`.../generator`) or a version
    dir: the highest version where there is a choice."""
    if not os.path.exists(path):
        raise ExportError(f"export not found: {path}")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for base in (path, os.path.join(path, role)):
        found = versions(base)
        if found:
            return os.path.join(base, str(found[-1]))
    raise ExportError(f"{path} holds no {role} export (expected {role}/<version>/saved_model.pb)")


def prune_versions(export_dir: str, keep: int) -> List[int]:
    """Delete all but the newest `keep` versions of every part; returns the deleted versions."""
    parts = [os.path.join(export_dir, p) for p in (GENERATOR, DISCRIMINATOR, TFLITE)]
    every = sorted(set(v for base in parts for v in versions(base)))
    doomed = every[:-keep] if keep else every
    for base in parts:
        for version in doomed:
            shutil.rmtree(os.path.join(base, str(version)), ignore_errors=True)
    return doomed


def _publish(temp_path: str, base: str, version: int) -> str:
    """Rename a finished export into place as `<base>/<version>` (atomic on one filesystem)."""
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final} already exists: is another export writing to {os.path.dirname(base)}?")
    os.rename(temp_path, final)
    return final


@dataclass
class ExportResult:
    """Where one `export` call wrote its parts (None for parts not written)."""

    version: int
    global_step: int
    generator: Optional[str] = None
    discriminator: Optional[str] = None
    tflite: Optional[str] = None
    standing_statistics: int = 0
    info: dict = field(default_factory=dict)


def export(gan, export_dir: str, checkpoint_path: Optional[str] = None,
           roles: Sequence[str] = (GENERATOR, DISCRIMINATOR), tflite: Optional[bool] = None) -> ExportResult:
    """Export the checkpoint (default: the latest in `gan.model_dir`) as a new version of each
    of `roles`, and as TFLite when `tflite` (default: `export.tflite` in the config)."""
    ecfg = gan.config.export
    tflite = ecfg.tflite if tflite is None else tflite
    checkpoint_path = checkpoint_path or tf.train.latest_checkpoint(gan.model_dir)
    if not checkpoint_path:
        raise ExportError(f"no checkpoint in {gan.model_dir}: train first")
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
        raise ExportError(f"checkpoint not found: {checkpoint_path}")
    global_step = int(tf.train.load_variable(checkpoint_path, "global_step"))
    os.makedirs(export_dir, exist_ok=True)
    parts = [r for r in roles] + ([TFLITE] if tflite else [])
    version = 1 + max([0] + [v for p in (GENERATOR, DISCRIMINATOR, TFLITE)
                             for v in versions(os.path.join(export_dir, p))])
    result = ExportResult(version=version, global_step=global_step)
    with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=export_dir) as work:
        generator_checkpoint = checkpoint_path
        if GENERATOR in parts and ecfg.standing_statistics:
            generator_checkpoint = os.path.join(work, "standing", "model.ckpt")
            result.standing_statistics = standing_statistics(gan, checkpoint_path, generator_checkpoint)
        result.info = {
            "version": version, "global_step": global_step,
            "checkpoint": os.path.abspath(checkpoint_path),
            "standing_statistics": ({"layers": result.standing_statistics,
                                     "batches": ecfg.standing_batches,
                                     "batch_size": ecfg.standing_batch_size}
                                    if GENERATOR in parts and ecfg.standing_statistics else None),
            "z_dim": gan.config.model.z_dim, "sample_shape": list(gan.config.model.sample_shape),
            "conditional": gan.config.model.conditional, "num_classes": gan.config.model.num_classes,
        }
        assets = _write_assets(work, gan.config, result.info)
        staged = {}
        if GENERATOR in parts:
            staged[GENERATOR] = _export_saved_model(
                gan.generator_estimator, work, generator_receiver_fn(gan.config),
                generator_checkpoint, assets)
        if DISCRIMINATOR in parts:
            staged[DISCRIMINATOR] = _export_saved_model(
                gan.discriminator_estimator, work, discriminator_receiver_fn(gan.config),
                checkpoint_path, assets)
        if TFLITE in parts:
            source = staged.get(GENERATOR) or _export_saved_model(
                gan.generator_estimator, work, generator_receiver_fn(gan.config),
                generator_checkpoint, assets)
            staged[TFLITE] = os.path.join(work, TFLITE)
            os.makedirs(staged[TFLITE])
            to_tflite(source, os.path.join(staged[TFLITE], TFLITE_FILENAME))
        for part in (GENERATOR, DISCRIMINATOR, TFLITE):
            if part in staged:
                base = os.path.join(export_dir, part)
                os.makedirs(base, exist_ok=True)
                setattr(result, part, _publish(staged[part], base, version))
    if result.tflite:
        result.tflite = os.path.join(result.tflite, TFLITE_FILENAME)
    return result


def _write_assets(work: str, config: config_lib.Config, info: dict) -> Dict[str, str]:
    directory = os.path.join(work, "assets")
    os.makedirs(directory)
    config_path = os.path.join(directory, config_lib.CONFIG_FILENAME)
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    info_path = os.path.join(directory, INFO_FILENAME)
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return {config_lib.CONFIG_FILENAME: config_path, INFO_FILENAME: info_path}


def _export_saved_model(estimator, work: str, receiver_fn, checkpoint_path: str, assets) -> str:
    """`Estimator.export_saved_model` into a fresh directory under `work`; returns its path."""
    base = tempfile.mkdtemp(prefix="saved_model-", dir=work)
    path = estimator.export_saved_model(base, receiver_fn, assets_extra=assets,
                                        checkpoint_path=checkpoint_path)
    return path.decode() if isinstance(path, bytes) else path


# ------------------------------------------------------------------------------------ TFLite

def signature_defs(saved_model_dir: str) -> Dict[str, "meta_graph_pb2.SignatureDef"]:
    """The SignatureDefs of a SavedModel's serving meta graph, read from saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ExportError(f"{saved_model_dir} has no 'serve' meta graph")


@contextlib.contextmanager
def _native_output_silenced():
    """Drop what C++ code prints straight to the process's stdout/stderr (the TFLite
    converter's op summary); errors still arrive as exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def to_tflite(saved_model_dir: str, output_path: str) -> str:
    """Convert the generator export's `noise` signature to TFLite (built-in ops only): a
    `serving_default` signature from `noise` (and `labels`) to `samples` and, for images,
    uint8 `images`; PNG encoding is left to the server. Written atomically."""
    signature = signature_defs(saved_model_dir)["noise"]
    names = sorted(signature.inputs)
    fetches = {k: signature.outputs[k].name for k in ("samples", "images") if k in signature.outputs}
    model = tf.saved_model.load(saved_model_dir)
    pruned = model.prune([signature.inputs[k].name for k in names], fetches)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=k) for k, t in zip(names, pruned.inputs)]

    @tf.function(input_signature=specs)
    def serve(*args):
        return pruned(*args)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    with _native_output_silenced():
        flatbuffer = converter.convert()
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, output_path)
    return output_path


# ------------------------------------------------------------------------------------ loading

class ServedGenerator:
    """A generator export loaded with `tf.saved_model.load`, called through its signatures as
    a Python client would. Bad requests raise `ExportError` with a one-line message."""

    def __init__(self, path: str):
        self.path = version_dir(path, GENERATOR)
        try:
            self.model = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ExportError(f"cannot load {self.path}: {str(err).splitlines()[0]}") from None
        signatures = self.model.signatures
        if "noise" not in signatures:
            raise ExportError(f"{self.path} is not a generator export (no 'noise' signature)")
        self._noise_fn = signatures["noise"]
        spec = self._noise_fn.structured_input_signature[1]
        self.z_dim = int(spec["noise"].shape[1])
        self.conditional = "labels" in spec
        self.sample_shape = tuple(self._noise_fn.structured_outputs["samples"].shape[1:])
        info_path = os.path.join(self.path, "assets.extra", INFO_FILENAME)
        self.info = json.load(open(info_path, encoding="utf-8")) if os.path.isfile(info_path) else {}

    def default_labels(self, count: int) -> Optional[np.ndarray]:
        """For a conditional model, the classes in turn; None otherwise."""
        if not self.conditional:
            return None
        return np.arange(count, dtype=np.int32) % int(self.info.get("num_classes") or 1)

    def _labels(self, labels, count: int) -> dict:
        if labels is None:
            labels = self.default_labels(count)
            return {} if labels is None else {"labels": tf.constant(labels)}
        if not self.conditional:
            raise ExportError("labels given, but this generator is not conditional")
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = np.full([count], labels)
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise ExportError(f"labels must be {count} integer class ids, got {labels.dtype} {list(labels.shape)}")
        return {"labels": tf.constant(labels.astype(np.int32))}

    def _call(self, fn, **inputs) -> Dict[str, np.ndarray]:
        try:
            return {k: v.numpy() for k, v in fn(**inputs).items()}
        except tf.errors.InvalidArgumentError as err:
            raise ExportError(_assertion_message(err)) from None

    def from_noise(self, noise, labels=None) -> Dict[str, np.ndarray]:
        """Outputs for noise `[N, z_dim]` (any float dtype)."""
        noise = np.asarray(noise)
        if not np.issubdtype(noise.dtype, np.floating):
            raise ExportError(f"noise must be floating point [N, {self.z_dim}], got dtype {noise.dtype}")
        if noise.ndim != 2 or noise.shape[1] != self.z_dim or noise.shape[0] < 1:
            raise ExportError(f"noise must have shape [N, {self.z_dim}], got {list(noise.shape)}")
        return self._call(self._noise_fn, noise=tf.constant(noise.astype(np.float32)),
                          **self._labels(labels, noise.shape[0]))

    def from_seed(self, seed: int, count: int, truncation: Optional[float] = None,
                  labels=None) -> Dict[str, np.ndarray]:
        """Outputs for `count` samples from noise drawn in the graph from `seed`."""
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ExportError(f"count must be a positive integer, got {count!r}")
        inputs = {"seed": tf.constant(int(seed), tf.int64), "count": tf.constant(int(count), tf.int32),
                  **self._labels(labels, count)}
        name = "seed"
        if truncation is not None:
            name, inputs["truncation"] = "seed_truncated", tf.constant(float(truncation), tf.float32)
        return self._call(self.model.signatures[name], **inputs)


def _assertion_message(err: tf.errors.OpError) -> str:
    """The readable part of an in-graph check's failure (see `model_fns.checked_shape`)."""
    text = err.message.strip()
    for line in text.splitlines():
        groups = re.findall(r"\[([^\[\]]*)\]", line)
        for i, group in enumerate(groups):
            if "must" in group:
                return f"{group} {groups[i + 1]}" if group.endswith("got shape") else group
    return text.splitlines()[0]


def load_generator(path: str) -> ServedGenerator:
    """An exported generator (an export dir, its `generator/` dir or one version; the highest
    version is picked), with `from_seed` / `from_noise` calls that check their inputs and raise
    one-line `ExportError`s."""
    return ServedGenerator(path)


def _json_value(name: str, value: np.ndarray):
    if name.endswith("_bytes"):
        encode = np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object])
        return encode(value).tolist()
    return value.tolist()


def rest_predict(model, request: dict) -> dict:
    """Answer a TF Serving REST predict request body (`{"instances": [...]}` row format or
    `{"inputs": {...}}` columnar, optional `signature_name`) with the body TF Serving would
    return (`predictions` / `outputs`; outputs named `..._bytes` as `{"b64": ...}`), by calling
    the loaded SavedModel's signature: to try a client, or a README example, without a server."""
    signature = model.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    if "instances" in request:
        rows = request["instances"]
        if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
            rows = [{next(iter(specs)): row} for row in rows]
        columns = {k: [row[k] for row in rows] for k in specs}
    else:
        columns = request["inputs"] if isinstance(request["inputs"], dict) else {next(iter(specs)): request["inputs"]}
    outputs = signature(**{k: tf.constant(np.asarray(columns[k]), specs[k].dtype) for k in specs})
    outputs = {k: _json_value(k, v.numpy()) for k, v in sorted(outputs.items())}
    if "instances" in request:
        predictions = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
        return {"predictions": [next(iter(p.values())) for p in predictions] if len(outputs) == 1 else predictions}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


# ------------------------------------------------------------------------ during training

class GANExporter(tf.estimator.Exporter):
    """Exports G and D (see `export`) from a checkpoint, keeping the newest `export.keep`
    versions. Policy `checkpoint` exports every time; `best` only when the EVAL metric
    `export.best_metric` improves (the best value is kept in `<export_dir>/best.json`, so it
    survives restarts). Usable as an Estimator exporter (`EvalSpec(exporters=[...])`) and by
    `ExportListener`. Writes to `export.dir` (default `<model_dir>/export`) whatever
    `export_path` the Estimator suggests."""

    def __init__(self, gan, policy: Optional[str] = None):
        self._gan = gan
        ecfg = gan.config.export
        self.policy = policy or ecfg.during_training
        self.export_dir = ecfg.dir or os.path.join(gan.model_dir, "export")
        self.last_result: Optional[ExportResult] = None

    @property
    def name(self) -> str:
        return "estimator_gan"

    def _improved(self, eval_result) -> bool:
        ecfg = self._gan.config.export
        if eval_result is None or ecfg.best_metric not in eval_result:
            raise ExportError(f"export.best_metric {ecfg.best_metric!r} is not among the EVAL "
                              f"metrics ({', '.join(sorted(eval_result or {}))})")
        value = float(eval_result[ecfg.best_metric])
        path = os.path.join(self.export_dir, "best.json")
        best = json.load(open(path)).get("value") if os.path.isfile(path) else None
        if best is not None and (value >= best if ecfg.best_mode == "min" else value <= best):
            return False
        config_lib.atomic_write_text(path, json.dumps(
            {"metric": ecfg.best_metric, "mode": ecfg.best_mode, "value": value}))
        return True

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if self.policy == "best" and not self._improved(eval_result):
            return None
        self.last_result = export(self._gan, self.export_dir, checkpoint_path)
        prune_versions(self.export_dir, self._gan.config.export.keep)
        return self.last_result.generator


class ExportListener(tf.estimator.CheckpointSaverListener):
    """After each checkpoint of `GAN.train`, runs a `GANExporter` (for `best`, after a short
    evaluation of `export.eval_steps` batches) and prints where the export went. Skips step 0
    and a step the newest export already holds (a resumed run re-saves its first checkpoint)."""

    def __init__(self, gan, stream=None):
        self._gan = gan
        self.exporter = GANExporter(gan)
        self._stream = stream

    def after_save(self, session, global_step_value):
        # The training loop runs in graph mode with a finalized graph; exporting needs a clean
        # (eager) context, which a new thread has.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(self._export, int(global_step_value)).result()

    def _export(self, global_step: int):
        if global_step == 0 or global_step == self._newest_export_step():
            return
        checkpoint = tf.train.latest_checkpoint(self._gan.model_dir)
        eval_result = None
        if self.exporter.policy == "best":
            eval_result = self._gan.evaluate(steps=self._gan.config.export.eval_steps, name="export")
        path = self.exporter.export(None, None, checkpoint, eval_result, False)
        if path:
            print(f"exported step {global_step} to {path}", file=self._stream, flush=True)

    def _newest_export_step(self) -> Optional[int]:
        base = os.path.join(self.exporter.export_dir, GENERATOR)
        found = versions(base)
        info = os.path.join(base, str(found[-1]), "assets.extra", INFO_FILENAME) if found else ""
        return json.load(open(info, encoding="utf-8")).get("global_step") if os.path.isfile(info) else None

"""Export for serving: versioned SavedModels of the generator and discriminator, in the layout
TensorFlow Serving watches, plus TFLite.

Layout of an export directory (TF Serving serves the highest integer version of a model dir):

    <export_dir>/generator/<version>/saved_model.pb, variables/, assets.extra/
        (assets.extra/: config.yaml, export_info.json, tf_serving_warmup_requests)
    <export_dir>/discriminator/<version>/...
    <export_dir>/tflite/<version>/generator.tflite          (with tflite=True)

One `export` call writes the same version number in every part. Everything is first written
into a hidden staging directory (`.tmp-*`) and then renamed into place, so a crash never leaves
a half-written version: on a local filesystem the rename is atomic; on object stores, which
cannot rename atomically, the version appears file by file. A staging directory left by a
killed export is removed by the next export once no process holds it (each export holds a lock
on its own staging directory while it runs).

What a caller must know:

* `export` takes the Estimators to export (their `params` give the config and networks, their
  `model_dir` the latest checkpoint): nothing else of the run is needed.
* The signatures are those of `model.signatures`; the generator graph holds only G's
  variables. Every SavedModel carries TF Serving warm-up requests, one per signature
  (`serving.warmup`).
* Batch norm: the export uses moving statistics, so it is deterministic. They lag a generator
  whose weights still move, so by default they are first recomputed ("standing statistics",
  `export.standing_*` in the config): G runs in training mode with the exported weights over
  many noise batches, and the pooled batch moments replace the moving statistics in a staged
  copy of the checkpoint that the export reads. Checkpoints are never modified.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import yaml

from estimator_gan import checkpoints
from estimator_gan import config as config_lib
from estimator_gan import fileio
from estimator_gan.errors import ExportError
from estimator_gan.model import gan
from estimator_gan.model import signatures
from estimator_gan.serving import saved_model, tflite as tflite_lib, warmup

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys
GENERATOR = gan.GENERATOR  # export layout dirs are named after the roles
DISCRIMINATOR = gan.DISCRIMINATOR
TFLITE = "tflite"
PARTS = (GENERATOR, DISCRIMINATOR, TFLITE)
REMOTE_STALE_SECS = 24 * 3600
_log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------- standing statistics


class Standing(NamedTuple):
    """What `standing_statistics` did: how many batch-norm layers it recomputed, and the moving
    statistics it could not recompute (kept as the checkpoint has them)."""

    layers: int
    kept: List[str]


def standing_statistics(parts: gan.GANParts, checkpoint_path: str, output_prefix: str) -> Standing:
    """Write a copy of the checkpoint whose generator batch-norm moving statistics are
    recomputed for the weights PREDICT reads (the EMA, by default).

    G runs in training mode (batch statistics) on `export.standing_batches` noise batches of
    `export.standing_batch_size`; each layer's mean becomes the average batch mean and its
    variance the pooled variance of all samples. Batch norm built with `layers.batch_norm` or
    a Keras `BatchNormalization` in a `keras_network` reports its batch moments; any other
    (e.g. `tf.compat.v1.layers.batch_normalization` in your own network) keeps its moving
    statistics, with a warning, and is listed in `Standing.kept`.
    """
    cfg = parts.config
    ecfg = cfg.export
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(cfg.train.seed or 0)
        size = ecfg.standing_batch_size
        noise = tf.random.normal([size, cfg.model.z_dim])
        labels = (tf.random.uniform([size], 0, cfg.model.num_classes, tf.int32)
                  if cfg.model.conditional else None)
        layers = parts.generator(noise, labels, ModeKeys.TRAIN,
                                 use_ema=parts.uses_ema(ModeKeys.PREDICT)).batch_norm
        covered = {v.op.name for layer in layers for v in layer[:2]}
        missed = [v.op.name for v in v1.global_variables()
                  if "moving_" in v.op.name.split("/")[-1] and v.op.name not in covered]
        if missed:
            _log.warning("standing statistics: %d moving statistics not made by layers.batch_norm "
                         "or a Keras BatchNormalization in keras_network keep their checkpoint "
                         "values (%s)", len(missed), ", ".join(missed[:3]))
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
    values = checkpoints.reader(checkpoint_path)
    tensors = {name: values.get_tensor(name) for name in values.get_variable_to_dtype_map()}
    n = float(ecfg.standing_batches)
    for (moving_mean, moving_var, _, _), (total, total_sq) in zip(layers, sums):
        mean = total / n
        tensors[moving_mean.op.name] = mean.astype(np.float32)
        tensors[moving_var.op.name] = np.maximum(total_sq / n - np.square(mean), 0.0).astype(np.float32)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=output_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[k]) for k in names])
    return Standing(len(layers), missed)


# ------------------------------------------------------------------------------------ layout


def next_version(export_dir: str) -> int:
    """1 + the highest version any part holds (1 for a new export directory)."""
    return 1 + max([0] + [v for part in PARTS for v in _part_versions(fileio.join(export_dir, part))])


def _part_versions(base: str) -> List[int]:
    if not fileio.isdir(base):
        return []
    return [int(n) for n in fileio.listdir(base) if n.isdigit()]


def prune_versions(export_dir: str, keep: int) -> List[int]:
    """Delete all but the newest `keep` versions of every part; returns the deleted versions."""
    every = sorted({v for part in PARTS for v in _part_versions(fileio.join(export_dir, part))})
    doomed = every[:-keep] if keep else every
    for part in PARTS:
        for version in doomed:
            path = fileio.join(export_dir, part, str(version))
            if fileio.exists(path):
                fileio.rmtree(path)
    return doomed


class _Staging:
    """A hidden staging directory for one export, locked (flock) while the export runs."""

    def __init__(self, export_dir: str):
        self.export_dir = export_dir
        self.path = fileio.local_staging_dir(export_dir)
        self._fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def publish(self, staged: str, part: str, version: int) -> str:
        """Move a staged part into place as `<export_dir>/<part>/<version>`."""
        base = fileio.join(self.export_dir, part)
        fileio.makedirs(base)
        final = fileio.join(base, str(version))
        if fileio.exists(final):
            raise ExportError(f"{final} already exists: is another export writing to {self.export_dir}?")
        if fileio.is_local(self.export_dir):
            os.rename(staged, fileio.local_path(final))
        else:
            upload = fileio.join(self.export_dir, f"{fileio.TMP_PREFIX}{uuid.uuid4().hex}")
            fileio.copy_tree(staged, upload)
            fileio.rename_dir(upload, final)
        return final

    def close(self) -> None:
        os.close(self._fd)
        shutil.rmtree(self.path, ignore_errors=True)


def remove_stale_staging(export_dir: str) -> List[str]:
    """Delete the staging directories of exports that no longer run (killed ones); a staging
    directory whose export still runs is locked and kept. Returns the removed paths."""
    if not fileio.isdir(export_dir):
        return []
    removed = []
    for name in fileio.listdir(export_dir):
        if not name.startswith(fileio.TMP_PREFIX):
            continue
        path = fileio.join(export_dir, name)
        if fileio.is_local(export_dir):
            if not _unlocked(fileio.local_path(path)):
                continue
        else:
            try:
                age = time.time() - fileio.gfile.stat(path).mtime_nsec / 1e9
            except tf.errors.OpError:
                continue
            if age < REMOTE_STALE_SECS:
                continue
        fileio.rmtree(path)
        removed.append(path)
    return removed


def _unlocked(path: str) -> bool:
    """Whether no live process holds the flock on `path` (a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ export


def export(export_dir: str, generator: tf.estimator.Estimator,
           discriminator: Optional[tf.estimator.Estimator] = None,
           checkpoint_path: Optional[str] = None, tflite: Optional[bool] = None) -> ExportResult:
    """Export a checkpoint (default: `checkpoints.newest_readable` of the Estimators' model_dir) as a
    new version of the generator (and of the discriminator, when its Estimator is given), and
    as TFLite when `tflite` (default: `export.tflite` of the config in the Estimators' params)."""
    parts = gan.GANParts.from_params(generator.params)
    config = parts.config
    ecfg = config.export
    tflite = ecfg.tflite if tflite is None else tflite
    checkpoint_path = checkpoint_path or checkpoints.newest_readable(generator.model_dir).path
    if not checkpoint_path:
        raise ExportError(f"no checkpoint in {generator.model_dir}: train first")
    if not fileio.exists(checkpoint_path + ".index"):
        raise ExportError(f"checkpoint not found: {checkpoint_path}")
    if fileio.exists(export_dir) and not fileio.isdir(export_dir):
        raise ExportError(f"export directory {export_dir} exists and is not a directory")
    global_step = checkpoints.step_of(checkpoint_path)
    fileio.makedirs(export_dir)
    remove_stale_staging(export_dir)
    version = next_version(export_dir)
    result = ExportResult(version=version, global_step=global_step)
    staging = _Staging(export_dir)
    try:
        work = staging.path
        generator_checkpoint = checkpoint_path
        standing = None
        if ecfg.standing_statistics:
            generator_checkpoint = os.path.join(work, "standing", "model.ckpt")
            standing = standing_statistics(parts, checkpoint_path, generator_checkpoint)
            result.standing_statistics = standing.layers
        result.info = {
            "version": version, "global_step": global_step,
            "checkpoint": checkpoint_path if not fileio.is_local(checkpoint_path)
            else os.path.abspath(checkpoint_path),
            "standing_statistics": ({"layers": standing.layers, "kept": standing.kept,
                                     "batches": ecfg.standing_batches,
                                     "batch_size": ecfg.standing_batch_size}
                                    if standing is not None else None),
            "z_dim": config.model.z_dim, "sample_shape": list(config.model.sample_shape),
            "conditional": config.model.conditional, "num_classes": config.model.num_classes,
            "clusters": config.data.clusters.count,
            "latent_codes": list(config.model.latent_codes),
        }
        assets = _write_assets(work, config, result.info)
        staged: Dict[str, str] = {GENERATOR: _export_saved_model(
            generator, work, signatures.generator_receiver_fn(config), generator_checkpoint,
            assets, config)}
        if discriminator is not None:
            staged[DISCRIMINATOR] = _export_saved_model(
                discriminator, work, signatures.discriminator_receiver_fn(config), checkpoint_path,
                assets, config)
        if tflite:
            staged[TFLITE] = os.path.join(work, TFLITE)
            tflite_lib.to_tflite(staged[GENERATOR], os.path.join(staged[TFLITE], tflite_lib.TFLITE_FILENAME))
        for part in PARTS:
            if part in staged:
                setattr(result, part, staging.publish(staged[part], part, version))
    finally:
        staging.close()
    if result.tflite:
        result.tflite = fileio.join(result.tflite, tflite_lib.TFLITE_FILENAME)
    return result


def _write_assets(work: str, config, info: dict) -> Dict[str, str]:
    directory = os.path.join(work, "assets")
    paths = {config_lib.CONFIG_FILENAME: os.path.join(directory, config_lib.CONFIG_FILENAME),
             saved_model.INFO_FILENAME: os.path.join(directory, saved_model.INFO_FILENAME)}
    fileio.atomic_write(paths[config_lib.CONFIG_FILENAME],
                        yaml.safe_dump(config.to_dict(), sort_keys=False))
    fileio.atomic_write(paths[saved_model.INFO_FILENAME], json.dumps(info, indent=1))
    return paths


def _export_saved_model(estimator, work: str, receiver_fn, checkpoint_path: str, assets, config) -> str:
    """`Estimator.export_saved_model` into a fresh directory under `work`, with its warm-up
    requests; returns its path."""
    base = tempfile.mkdtemp(prefix="saved_model-", dir=work)
    path = estimator.export_saved_model(base, receiver_fn, assets_extra=assets,
                                        checkpoint_path=checkpoint_path)
    path = path.decode() if isinstance(path, bytes) else path
    warmup.write(path, config)
    os.chmod(path, 0o777 & ~fileio.umask())
    return path


# ------------------------------------------------------------------------ during training


class GANExporter(tf.estimator.Exporter):
    """Exports G and D (see `export`) from a checkpoint, keeping the newest `export.keep`
    versions. Policy `checkpoint` exports every time; `best` only when the EVAL metric
    `export.best_metric` improves (the best value is kept in `<export_dir>/best.json`, so it
    survives restarts). Usable as an Estimator exporter (`EvalSpec(exporters=[...])`). Writes
    to `export.dir` (default `<model_dir>/export`) whatever `export_path` the Estimator
    suggests."""

    def __init__(self, generator: tf.estimator.Estimator,
                 discriminator: Optional[tf.estimator.Estimator] = None, policy: Optional[str] = None):
        self._estimators = (generator, discriminator)
        self._config = generator.params["config"]
        ecfg = self._config.export
        self.policy = policy or ecfg.during_training
        self.export_dir = ecfg.dir or fileio.join(generator.model_dir, "export")
        self.last_result: Optional[ExportResult] = None

    @property
    def name(self) -> str:
        return "estimator_gan"

    def _improved(self, eval_result) -> bool:
        ecfg = self._config.export
        if eval_result is None or ecfg.best_metric not in eval_result:
            raise ExportError(f"export.best_metric {ecfg.best_metric!r} is not among the EVAL "
                              f"metrics ({', '.join(sorted(eval_result or {}))})")
        value = float(eval_result[ecfg.best_metric])
        path = fileio.join(self.export_dir, "best.json")
        best = json.loads(fileio.read_text(path)).get("value") if fileio.exists(path) else None
        if best is not None and (value >= best if ecfg.best_mode == "min" else value <= best):
            return False
        fileio.atomic_write(path, json.dumps(
            {"metric": ecfg.best_metric, "mode": ecfg.best_mode, "value": value}))
        return True

    def newest_export_step(self) -> Optional[int]:
        """The global step of the newest generator version, if any."""
        found = saved_model.versions(fileio.join(self.export_dir, GENERATOR))
        if not found:
            return None
        return saved_model.export_info(fileio.join(self.export_dir, GENERATOR, str(found[-1]))).get("global_step")

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if self.policy == "best" and not self._improved(eval_result):
            return None
        self.last_result = export(self.export_dir, *self._estimators, checkpoint_path=checkpoint_path)
        prune_versions(self.export_dir, self._config.export.keep)
        return self.last_result.generator

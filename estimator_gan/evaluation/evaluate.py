"""Evaluating generated samples next to a real-vs-real reference: for a checkpoint, for an
export, and the per-checkpoint history of a model directory.

What a caller must know:

* `SampleMetrics(config, model_dir)` holds the real data and the feature network of one config
  (`eval.features`); calling it on samples gives the metrics and the reference (see its
  docstring). It loads data and trains (or loads) the feature classifier, or loads the
  Inception graph, on first use, which must be eager.
* Samples come from a *sampling callable*, `generate(count, seed=..., checkpoint_path=...)`
  (e.g. `GAN.generate`), or from an export (`evaluate_export`), with the noise of
  `sampling.noise(count, z_dim, eval.seed)` and, for a conditional model, the classes in turn:
  a checkpoint and its export give the same samples.
* Records are plain dicts (`step`, `source`, `metrics`, `reference`, ...); `metrics.jsonl` in
  `<model_dir>/evaluation/` keeps one per evaluated checkpoint. Files go through `fileio`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from estimator_gan import checkpoints, fileio, sampling
from estimator_gan.data import pipeline, sources
from estimator_gan.errors import ConfigError, DataError, ExportError
from estimator_gan.evaluation import inception
from estimator_gan.evaluation.classifier import train_feature_classifier
from estimator_gan.evaluation.metrics import (class_shares, classifier_score, factor_kl,
                                              fallback_features, frechet_distance, kernel_distance,
                                              mixture_mode_metrics, mode_histogram_metrics)
from estimator_gan.serving import saved_model

EVAL_DIR = "evaluation"
HISTORY_FILE = "metrics.jsonl"
RESULT_FILE = "eval.json"


def evaluation_data_config(config):
    """The real data the metrics use, with the source's own labels (no `data.clusters`): the
    other part of `data.split`, else `data` itself."""
    update = {"clusters": config.data.clusters.model_copy(update={"count": 0})}
    if config.data.split is not None:
        update["split"] = config.data.split.complement()
    return config.data.model_copy(update=update)


def _classifier_cache_path(config, model_dir: str) -> str:
    if config.eval.classifier_cache:
        return os.path.expanduser(config.eval.classifier_cache)
    key = json.dumps({"data": evaluation_data_config(config).model_dump(mode="json"),
                      "shape": list(config.model.sample_shape or []),
                      "epochs": config.eval.classifier_epochs, "seed": config.eval.seed},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return fileio.join(model_dir, EVAL_DIR, f"feature_classifier-{digest}.keras")


class SampleMetrics:
    """Sample-quality metrics of generated samples for one config, next to a real reference.

    Calling it on `[N, ...]` samples returns `(model, reference)`: two dicts with the same
    keys, the second measured on N real examples that stand in for the samples. Which metrics
    (`kind`; for images the feature space of `eval.features`, where `auto` means `classifier`
    for labelled images and `pixels` for unlabelled ones):

    * `mixture` (2D mixture data): modes_covered, modes_covered_any, num_modes,
      high_quality_share, kl_to_uniform (`mixture_mode_metrics`, k = `eval.mode_std_k`).
    * `classifier` (labelled images): frechet_distance, kid, classifier_score and
      min_class_share (the rarest class's share of the samples, by the classifier) in the
      feature space of `train_feature_classifier`, trained on the evaluation data (see
      `evaluation_data_config`) with `eval.seed` and cached (`eval.classifier_cache`).
    * `inception` (any images): frechet_distance (FID), kid (KID) and inception_score on the
      reference Inception graph (`evaluation.inception`, `eval.inception_graph`).
    * `pixels` (any images): frechet_distance and kid on `fallback_features`.
    * `stacked` (Stacked MNIST; `eval.features` stays `auto`): the digit classifier (trained
      on the evaluation data's MNIST digits) labels each channel, which gives each sample its
      mode, a digit triple: modes_covered (at least one sample), num_modes (1,000),
      kl_to_uniform of the mode histogram (`mode_histogram_metrics`), kl_channels (the part of
      it each channel's digit balance explains, `factor_kl`), and frechet_distance on
      the three channels' classifier features side by side. The real statistics and the
      reference are stacks of the evaluation data's digits, drawn with seeds `eval.seed` + 1
      and + 2.

    For images the evaluation data is permuted with `eval.seed`; N examples form the reference
    and the rest the real statistics that both the samples and the reference are compared to.
    Loading data and training the classifier happen on first use, which must be eager.
    """

    def __init__(self, config, model_dir: str, stream=None):
        self.config = config
        self.model_dir = model_dir
        self._stream = stream
        self._ready = False
        self.info: Dict[str, object] = {}

    @property
    def kind(self) -> str:
        self._prepare()
        return self.info["kind"]

    def _log(self, message: str) -> None:
        if self._stream is not None:
            print(message, file=self._stream, flush=True)

    def _prepare(self) -> None:
        if self._ready:
            return
        cfg, data_cfg = self.config, evaluation_data_config(self.config)
        n = cfg.eval.num_samples
        if cfg.data.source == "mixture2d":
            mixture = cfg.data.mixture
            self._centres, self._std = mixture.centres(), mixture.std
            real, _ = pipeline.load_examples(data_cfg, limit=n, seed=cfg.eval.seed)
            self._reference = self._mixture(real)
            self.info = {"kind": "mixture", "real_examples": int(len(real))}
            self._ready = True
            return
        if cfg.data.source == "stacked_mnist":
            self._prepare_stacked(data_cfg, n)
            return
        real, labels = pipeline.load_examples(data_cfg, seed=cfg.eval.seed)
        if len(real) < n + 2:
            raise DataError(
                f"eval.num_samples={n} needs at least {n + 2} real evaluation examples "
                f"({data_cfg.source} has {len(real)}); lower eval.num_samples")
        space = cfg.eval.features
        if space == "auto":
            space = "classifier" if labels is not None else "pixels"
        self._network = None
        if space == "classifier":
            if labels is None:
                raise ConfigError(f"eval.features classifier needs labelled data, but "
                                  f"{data_cfg.source} has no labels: use pixels or inception")
            path = _classifier_cache_path(cfg, self.model_dir)
            self._log(f"feature classifier: {'loading' if fileio.exists(path) else 'training'} "
                      f"{path} ({len(real)} labelled examples)")
            self._network = train_feature_classifier(
                real, labels, sources.num_classes(data_cfg) or int(labels.max()) + 1,
                cache_path=path, seed=cfg.eval.seed, epochs=cfg.eval.classifier_epochs)
            self.info = {"kind": "classifier", "classifier": path}
            if cfg.data.split is not None:
                held_x, held_y = pipeline.load_examples(cfg.data, limit=2000, seed=cfg.eval.seed)
                self.info["classifier_accuracy_on_gan_part"] = self._network.accuracy(held_x, held_y)
        elif space == "inception":
            self._network = inception.load(cfg.eval.inception_graph, cfg.eval.inception_url, self._log)
            self.info = {"kind": "inception", **self._network.info}
            if not self._network.info["reference_graph"]:
                self._log(f"inception: {self._network.info['graph']} is not the reference graph "
                          f"(md5 {self._network.info['graph_md5']}): FID, KID and IS are not "
                          f"comparable with published values")
            self._log(f"inception: features of {len(real) - n} real images")
        else:
            self.info = {"kind": "pixels"}
        self._real_feats = self._features(real[n:])
        ref = real[:n]
        self._reference = self._images(ref)
        self.info.update(real_examples=int(len(real) - n), reference_examples=n)
        self._ready = True

    def _prepare_stacked(self, data_cfg, n: int) -> None:
        cfg = self.config
        digit_cfg = data_cfg.model_copy(update={"source": "mnist", "channels": 1})
        digits, labels = pipeline.load_examples(digit_cfg, seed=cfg.eval.seed)
        if labels is None:
            raise DataError("stacked_mnist: the mode metric needs the MNIST labels files beside "
                            "the images")
        path = _classifier_cache_path(cfg, self.model_dir)
        self._log(f"digit classifier: {'loading' if fileio.exists(path) else 'training'} {path} "
                  f"({len(digits)} labelled digits)")
        self._classifier = train_feature_classifier(digits, labels, 10, cache_path=path,
                                                    seed=cfg.eval.seed,
                                                    epochs=cfg.eval.classifier_epochs)
        self.info = {"kind": "stacked", "classifier": path}
        if cfg.data.split is not None:
            held_x, held_y = pipeline.load_examples(
                cfg.data.model_copy(update={"source": "mnist", "channels": 1}), limit=5000,
                seed=cfg.eval.seed)
            self.info["classifier_accuracy_on_gan_part"] = self._classifier.accuracy(held_x, held_y)
        real, _ = sources.stack_digits(digits, labels, n, cfg.eval.seed + 1)
        self._real_feats = self._stacked_channels(real)[1]
        self._reference = self._stacked(sources.stack_digits(digits, labels, n, cfg.eval.seed + 2)[0])
        self.info.update(real_examples=n, reference_examples=n, digits=int(len(digits)))
        self._ready = True

    def _stacked_channels(self, images):
        """Each channel's digit ([N, 3] ints) and the channels' features side by side."""
        n, h, w, c = images.shape
        if c != 3:
            raise ValueError(f"stacked MNIST samples need 3 channels, got shape {images.shape}")
        channels = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n * 3, h, w, 1)
        feats, probs = self._classifier.features_and_probabilities(channels)
        return np.argmax(probs, axis=1).reshape(n, 3), feats.reshape(n, -1)

    def _stacked(self, images) -> Dict[str, float]:
        digits, feats = self._stacked_channels(images)
        out = mode_histogram_metrics(digits @ np.array([100, 10, 1]), 1000)
        out["kl_channels"] = factor_kl(digits, 10)
        out["frechet_distance"] = frechet_distance(self._real_feats, feats)
        return out

    def _features(self, images) -> np.ndarray:
        if self._network is not None:
            return self._network.features(images)
        return fallback_features(images)

    def _mixture(self, points) -> Dict[str, float]:
        out = mixture_mode_metrics(points, self._centres, self._std, k=self.config.eval.mode_std_k)
        return {key: out[key] for key in
                ("modes_covered", "modes_covered_any", "num_modes", "high_quality_share", "kl_to_uniform")}

    def _images(self, images) -> Dict[str, float]:
        ev = self.config.eval
        if self._network is not None:
            feats, probs = self._network.features_and_probabilities(images)
        else:
            feats, probs = fallback_features(images), None
        kid = kernel_distance(self._real_feats, feats, min(ev.kid_subset_size, len(feats)),
                              ev.kid_num_subsets, ev.seed)
        out = {"frechet_distance": frechet_distance(self._real_feats, feats),
               "kid": kid["mean"], "kid_std": kid["std"]}
        if self.info["kind"] == "inception":
            score = classifier_score(probs)
            out.update(inception_score=score["mean"], inception_score_std=score["std"])
        elif probs is not None:
            score = classifier_score(probs)
            out.update(classifier_score=score["mean"], classifier_score_std=score["std"],
                       min_class_share=float(class_shares(probs).min()))
        return out

    def __call__(self, samples):
        self._prepare()
        samples = np.asarray(samples, np.float32)
        if self.info["kind"] == "mixture":
            return self._mixture(samples), dict(self._reference)
        if samples.ndim == 3:
            samples = samples[..., None]
        if len(samples) != self.config.eval.num_samples:
            raise ValueError(f"expected {self.config.eval.num_samples} samples, got {len(samples)}")
        if self.info["kind"] == "stacked":
            return self._stacked(samples), dict(self._reference)
        return self._images(samples), dict(self._reference)


def evaluate_samples(metrics: SampleMetrics, samples, step: Optional[int], source: str) -> dict:
    """The record `evaluate` and the listener write: step, sample metrics and real reference."""
    model, reference = metrics(samples)
    return {"step": step, "source": source, "time": time.time(),
            "num_samples": int(len(samples)), "kind": metrics.info["kind"],
            "metrics": _clean(model), "reference": _clean(reference)}


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _clean(tree: Dict[str, object]) -> Dict[str, object]:
    return {k: (_finite(v) if isinstance(v, (float, np.floating)) else
                int(v) if isinstance(v, (np.integer,)) else v) for k, v in tree.items()}


def evaluate_checkpoint(generate: Callable, metrics: SampleMetrics, checkpoint_path: str,
                        estimator_eval: Optional[Callable] = None) -> dict:
    """Sample metrics of one checkpoint, the samples drawn by `generate(count, seed=...,
    checkpoint_path=...)`, and with `estimator_eval(checkpoint_path) -> dict` the Estimator's
    EVAL metrics (losses, D accuracy, D probability, 2D mode metrics). Must run eagerly."""
    ev = metrics.config.eval
    samples = generate(ev.num_samples, seed=ev.seed, checkpoint_path=checkpoint_path)
    record = evaluate_samples(metrics, samples, checkpoints.step_of(checkpoint_path), "checkpoint")
    record["checkpoint"] = checkpoint_path
    if estimator_eval is not None:
        result = estimator_eval(checkpoint_path)
        record["estimator"] = _clean({k: v for k, v in result.items()
                                      if k != "global_step" and np.ndim(v) == 0})
    record["samples"] = samples
    return record


def export_samples(path: str, config) -> np.ndarray:
    """`eval.num_samples` samples of the exported generator at `path` (anything
    `saved_model.find_saved_model` takes), drawn as for a checkpoint; `ExportError` when the
    export does not fit `config` (another z_dim or sample shape)."""
    served = saved_model.load_generator(path)
    model = config.model
    if served.z_dim != model.z_dim or list(served.sample_shape) != list(model.sample_shape):
        raise ExportError(
            f"the export {served.path} takes noise of {served.z_dim} values and makes samples of "
            f"shape {list(served.sample_shape)}, but the config has model.z_dim {model.z_dim} and "
            f"sample_shape {list(model.sample_shape)}: evaluate it with the model dir it was "
            f"exported from")
    ev = config.eval
    noise = sampling.noise(ev.num_samples, model.z_dim, ev.seed)
    return np.concatenate([served.from_noise(noise[i:i + 256])["samples"]
                           for i in range(0, len(noise), 256)])


def evaluate_export(path: str, metrics: SampleMetrics) -> dict:
    """Sample metrics of an exported generator (see `export_samples`)."""
    samples = export_samples(path, metrics.config)
    record = evaluate_samples(metrics, samples, None, "export")
    record["export"] = saved_model.find_saved_model(path)
    record["samples"] = samples
    return record


def history_path(model_dir: str) -> str:
    return fileio.join(model_dir, EVAL_DIR, HISTORY_FILE)


def read_history(model_dir: str) -> List[dict]:
    """The per-checkpoint records of `metrics.jsonl`, one per step (the latest record wins),
    sorted by step. Unreadable lines are skipped."""
    by_step: Dict[int, dict] = {}
    path = history_path(model_dir)
    if fileio.exists(path):
        for line in fileio.read_text(path).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def append_history(model_dir: str, record: dict) -> str:
    """Add a record (without its samples) to `<model_dir>/evaluation/metrics.jsonl`,
    rewriting the file atomically."""
    path = history_path(model_dir)
    old = fileio.read_text(path) if fileio.exists(path) else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = json.dumps({k: v for k, v in record.items() if k != "samples"}, sort_keys=True)
    return fileio.atomic_write(path, old + line + "\n")


def write_result(path: str, record: dict) -> str:
    """Write one evaluation record (without its samples) as JSON, atomically."""
    return fileio.atomic_write(path, json.dumps({k: v for k, v in record.items() if k != "samples"},
                                                indent=2, sort_keys=True) + "\n")

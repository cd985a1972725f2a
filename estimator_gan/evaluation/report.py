"""What an evaluation shows a person: one-line and table summaries of a record, the metric
curves and sample pictures of a model directory, and TensorBoard summaries."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from estimator_gan import fileio, plotting
from estimator_gan.evaluation import evaluate

SAMPLE_GRID = 64


def _summary_value(tag: str, value: float):
    return tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))


def _image_summary_value(tag: str, picture):
    return tf.compat.v1.Summary.Value(tag=tag, image=tf.compat.v1.Summary.Image(
        height=picture.height, width=picture.width,
        colorspace=1 if picture.mode == "L" else 3,
        encoded_image_string=plotting.png_bytes(picture)))


def write_summaries(model_dir: str, step: int, record: Optional[dict] = None,
                    pictures: Optional[Dict[str, object]] = None) -> None:
    """TensorBoard: a record's metrics as `eval/<name>` and `eval_reference/<name>` scalars,
    and PIL pictures as image summaries, into the model dir's training event file."""
    values = []
    for group, prefix in (("metrics", "eval/"), ("reference", "eval_reference/")):
        for key, value in ((record or {}).get(group) or {}).items():
            if isinstance(value, (int, float)) and value is not None and np.isfinite(value):
                values.append(_summary_value(prefix + key, value))
    for tag, picture in (pictures or {}).items():
        values.append(_image_summary_value(tag, picture))
    if values:
        writer = tf.compat.v1.summary.FileWriterCache.get(model_dir)
        writer.add_summary(tf.compat.v1.Summary(value=values), step)
        writer.flush()


_LOG_SCALE = ("frechet_distance", "kid")
_MAIN_METRICS = ("frechet_distance", "kid", "inception_score", "classifier_score", "min_class_share",
                 "modes_covered", "modes_covered_any", "high_quality_share", "kl_to_uniform", "kl_channels")


def format_inline(record: dict) -> str:
    parts = []
    for key in _MAIN_METRICS:
        if key in record["metrics"]:
            value, ref = record["metrics"][key], record["reference"].get(key)
            parts.append(f"{key} {_fmt(value)} (real {_fmt(ref)})")
    return ", ".join(parts)


def _fmt(value) -> str:
    if value is None:
        return "nan"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def format_table(record: dict) -> str:
    """A text table: metric, the model's value, the real-vs-real reference; then the EVAL
    metrics of the Estimator, if any."""
    rows = [("metric", "model", "real reference")]
    for key, value in record["metrics"].items():
        rows.append((key, _fmt(value), _fmt(record["reference"].get(key))))
    for key, value in (record.get("estimator") or {}).items():
        rows.append((key, _fmt(value), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_plots(model_dir: str, config, record: Optional[dict] = None) -> List[str]:
    """PNGs in `<model_dir>/evaluation/`: `metrics.png`, the main metrics over the recorded
    checkpoints (model and real reference), and, for a record with samples,
    `samples_step_<N>.png` (a grid, or a scatter plot with the mode centres for 2D data)."""
    paths = []
    history = evaluate.read_history(model_dir)
    keys = [k for k in _MAIN_METRICS if any(k in r.get("metrics", {}) for r in history)]
    if keys:
        xs = [r["step"] for r in history]
        charts = []
        for key in keys:
            ys = [r["metrics"].get(key) for r in history]
            positive = [y for y in ys if y is not None and y > 0]
            log = key in _LOG_SCALE and len(positive) == len(ys) and max(ys) > 10 * min(ys)
            charts.append(plotting.line_chart(key, xs, ys, [r.get("reference", {}).get(key)
                                                          for r in history], log=log))
        paths.append(plotting.save_png(plotting.tile(charts),
                                     fileio.join(model_dir, evaluate.EVAL_DIR, "metrics.png")))
    if record is not None and record.get("samples") is not None:
        centres = config.data.mixture_centres()
        samples = np.asarray(record["samples"])
        if samples.ndim != 2:
            samples = samples[:SAMPLE_GRID]
        name = f"samples_step_{record['step']:08d}.png" if record.get("step") is not None \
            else "samples_export.png"
        paths.append(plotting.save_png(plotting.samples_picture(samples, centres),
                                     fileio.join(model_dir, evaluate.EVAL_DIR, name)))
    return paths


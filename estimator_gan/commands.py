"""What each command of the command line does (`cli` parses the arguments), and how a failure
becomes one line: an `estimator_gan.Error` prints `error: <message>` and exits with its code;
an environment failure (`runtime.failures`) likewise; anything else is a bug and keeps its
traceback. `--debug` prints the traceback before the line, with the same exit code.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import tensorflow as tf

from estimator_gan import checkpoints, fileio, plotting
from estimator_gan import config as config_lib
from estimator_gan.errors import ConfigError, Error, ExportError
from estimator_gan.evaluation import evaluate, report
from estimator_gan.gan import GAN
from estimator_gan.runtime import cluster as cluster_lib
from estimator_gan.runtime import launcher
from estimator_gan.runtime.failures import describe_failure
from estimator_gan.runtime.signals import GracefulStop
from estimator_gan.serving import saved_model
from estimator_gan.serving.export import DISCRIMINATOR, GENERATOR, TFLITE


def _quiet_tensorflow():
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- train


def train(args) -> int:
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    gan = GAN(config_lib.load_config(args.config, overrides), model_dir=args.model_dir)
    config = gan.config
    _print_cluster_role(config)
    start_step = gan.global_step()
    max_steps = config.train.max_steps
    if start_step >= max_steps:
        print(f"{args.model_dir} is already at step {start_step} >= max_steps {max_steps}; "
              f"nothing to train (raise train.max_steps to train further)")
        if args.export_dir:
            _export_and_report(gan, args.export_dir)
        return 0
    model = config.model
    networks = (model.architecture if not (model.generator_fn or model.discriminator_fn) else
                f"{model.generator_fn or model.architecture} / {model.discriminator_fn or model.architecture}")
    shape = "x".join(str(d) for d in model.sample_shape)
    print(f"training {networks} on {config.data.source} ({shape}), "
          f"loss {config.loss.name}, D:G {config.train.d_steps}:{config.train.g_steps}, "
          f"{'resuming at step ' + str(start_step) if start_step else 'from scratch'}, "
          f"to step {max_steps}, model dir {args.model_dir}", flush=True)
    started = time.time()
    cluster = cluster_lib.read_tf_config()
    with GracefulStop(config.train.stop_grace_secs, active=not (cluster and cluster.task_type == "ps")) as stop:
        step = gan.train(hooks=[stop.hook()])
    elapsed = time.time() - started
    result = gan.last_train
    if stop.signum:
        print(f"stopped by {stop.signal_name} at step {step} after {elapsed:.1f}s; checkpoint saved "
              f"in {args.model_dir}; rerun the same command to resume", flush=True)
        return stop.exit_code
    if result.budget_expired:
        print(f"stopped by the time budget (train.max_minutes={config.train.max_minutes:g}) at "
              f"step {step} after {elapsed:.1f}s; checkpoint saved in {args.model_dir}; rerun the "
              f"same command to continue", flush=True)
        return 0
    print(f"done: step {step} in {elapsed:.1f}s; checkpoint and config in {args.model_dir}"
          + (f"; samples: {result.sample_path}" if result.sample_path else ""))
    if gan.last_export:
        print(f"exported the generator to {gan.last_export.generator}")
    if args.export_dir:
        _export_and_report(gan, args.export_dir)
    return 0


def _print_cluster_role(config) -> None:
    cluster = cluster_lib.read_tf_config()
    if cluster is not None or config.distribute.strategy != "none":
        print(f"distributed: {cluster.describe() if cluster else 'one process'}, "
              f"strategy {config.distribute.strategy}", flush=True)


# ----------------------------------------------------------------------------- export


def _size(path: str) -> str:
    return f"{fileio.size(path) / 1e6:.2f} MB"


def _export_and_report(gan: GAN, export_dir: str, checkpoint=None, generator_only=False, tflite=None):
    result = gan.export(export_dir, checkpoint_path=checkpoint, tflite=tflite,
                        generator_only=generator_only)
    standing = result.info.get("standing_statistics")
    kept = standing.get("kept") if standing else None
    print(f"exported step {result.global_step} as version {result.version}"
          + (f" (batch-norm statistics of {standing['layers']} layers recomputed over "
             f"{standing['batches']}x{standing['batch_size']} samples)" if standing else ""))
    if kept:
        print(f"  note: {len(kept)} moving statistics kept their checkpoint values (batch norm not "
              f"made by layers.batch_norm or a Keras BatchNormalization in keras_network): "
              f"{', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''}")
    for part in (GENERATOR, DISCRIMINATOR, TFLITE):
        path = getattr(result, part)
        if path:
            print(f"  {part:<14} {path}  ({_size(path)})")
    return result


def _model_dir_config(model_dir: str, overrides, command: str) -> config_lib.Config:
    """A model dir's saved config with `overrides`, which may not change the architecture."""
    if not fileio.isdir(model_dir):
        if fileio.exists(model_dir):
            raise ConfigError(f"{model_dir} is a file, not a model dir (the --model-dir of a training)")
        raise ConfigError(f"model dir not found: {model_dir}")
    saved = config_lib.load_model_dir_config(model_dir)
    config = config_lib.config_from_dict(saved.to_dict(), overrides)
    diffs = config_lib.architecture_differences(saved, config)
    if diffs:
        raise ConfigError(f"{command} cannot change the architecture ({'; '.join(diffs)})")
    return config


def _model_dir_gan(model_dir: str, overrides, command: str) -> GAN:
    """The GAN of a model dir (see `_model_dir_config`)."""
    return GAN(_model_dir_config(model_dir, overrides, command), model_dir=model_dir)


def _checkpoint(gan: GAN, name=None) -> str:
    """The checkpoint a command reads: the one named (a prefix, or a name in the model dir),
    else the one `train` would resume from, with a note when the state file says otherwise."""
    return checkpoints.named(gan.model_dir, name) if name else gan.checkpoint(stream=sys.stderr)


def export(args) -> int:
    gan = _model_dir_gan(args.model_dir, args.overrides, "export")
    _export_and_report(gan, args.export_dir, _checkpoint(gan, args.checkpoint), args.generator_only,
                       args.tflite or None)
    return 0


# ----------------------------------------------------------------------------- generate


def _parse_labels(text):
    if not text:
        return None
    try:
        labels = [int(x) for x in text.split(",")]
    except ValueError:
        raise ExportError(f"--labels must be integers separated by commas, got {text!r}") from None
    return labels[0] if len(labels) == 1 else labels


def _parse_codes(text):
    if not text:
        return None
    try:
        return [int(x) if x.strip() else None for x in text.split(",")]
    except ValueError:
        raise ExportError(f"--codes must be integers separated by commas (empty: any), got {text!r}") from None


def _read_noise(path: str) -> np.ndarray:
    if not fileio.exists(path) or fileio.isdir(path):
        raise ExportError(f"noise file not found: {path}")
    try:
        return np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False)
    except ValueError as err:
        raise ExportError(f"cannot read {path} as a .npy array: {err}") from None


def generate(args) -> int:
    if args.count < 1:
        raise ExportError(f"--count must be at least 1, got {args.count}")
    labels = _parse_labels(args.labels)
    codes = _parse_codes(args.codes)
    if codes is not None and (args.noise or args.truncation is not None):
        raise ExportError("--codes draws its own noise from --seed: leave out --noise and --truncation")
    out_kind = os.path.splitext(args.out)[1].lower()
    if out_kind not in ("", ".png", ".npy"):
        raise ExportError(f"--out must end in .png or .npy, or be a directory, got {args.out}")
    with tempfile.TemporaryDirectory(prefix="estimator-gan-generate-") as scratch:
        source = args.export
        if args.model_dir:
            gan = _model_dir_gan(args.model_dir, [], "generate")
            source = gan.export(scratch, checkpoint_path=_checkpoint(gan), tflite=False,
                                generator_only=True).generator
        generator = saved_model.load_generator(source)
        if args.noise:
            outputs = generator.from_noise(_read_noise(args.noise), labels)
        elif codes is not None:
            outputs = generator.from_codes(args.seed, args.count, codes, labels)
        else:
            outputs = generator.from_seed(args.seed, args.count, args.truncation, labels)
    samples = outputs["samples"]
    if out_kind == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, samples)
        fileio.atomic_write(args.out, buffer.getvalue())
    elif out_kind == ".png":
        plotting.save_png(plotting.samples_picture(samples), args.out)
    elif "png_bytes" not in outputs:
        raise ExportError("one PNG per sample needs image samples; use --out FILE.png or FILE.npy")
    else:
        for i, png in enumerate(outputs["png_bytes"]):
            fileio.atomic_write(fileio.join(args.out, f"sample_{i:04d}.png"), png)
    step = generator.info.get("global_step")
    print(f"wrote {len(samples)} samples ({'x'.join(str(d) for d in samples.shape[1:])}) to {args.out} "
          f"from {args.export or args.model_dir}" + (f" (step {step})" if step is not None else ""))
    return 0


# ----------------------------------------------------------------------------- evaluate


def _checkpoints_to_evaluate(args, gan: GAN) -> list:
    if args.all_checkpoints:
        paths = []
        for _, path in reversed(checkpoints.on_disk(args.model_dir)):
            problem = checkpoints.unreadable(path)
            if problem is None:
                paths.append(path)
            else:
                print(f"note: skipping {fileio.basename(path)}, unreadable ({problem})", file=sys.stderr)
        if not paths:
            raise ConfigError(f"no readable checkpoint in {args.model_dir}: train first")
        return paths
    return [_checkpoint(gan, args.checkpoint)]


def evaluate_command(args) -> int:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"eval.num_samples={args.num_samples}")
    config = _model_dir_config(args.model_dir, overrides, "evaluate")
    gan = None if args.export else GAN(config, model_dir=args.model_dir)  # an export has its graph
    metrics = evaluate.SampleMetrics(config, args.model_dir, stream=sys.stdout)
    if gan is None:
        record = evaluate.evaluate_export(args.export, metrics)
        print(f"evaluated export {record['export']}")
    else:
        paths = _checkpoints_to_evaluate(args, gan)
        steps = gan.config.eval.eval_batches
        for path in paths:
            estimator_eval = (lambda p: gan.evaluate(steps=steps, checkpoint_path=p)) if path == paths[-1] else None
            record = evaluate.evaluate_checkpoint(gan.generate, metrics, path, estimator_eval)
            evaluate.append_history(args.model_dir, record)
            print(f"step {record['step']}: {report.format_inline(record)}", flush=True)
    where = metrics.info.get("classifier") or metrics.info.get("graph")
    print(f"\n{record['num_samples']} samples, features: {metrics.info['kind']}"
          + (f" ({where})" if where else ""))
    print(report.format_table(record))
    record["feature_extractor"] = metrics.info
    output = evaluate.write_result(args.output or fileio.join(args.model_dir, evaluate.RESULT_FILE), record)
    print(f"wrote {output}")
    if args.plot:
        for path in report.write_plots(args.model_dir, config, record):
            print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- local cluster


def local_cluster(args) -> int:
    """Run one training job as a chief, workers, ps (and evaluator) on 127.0.0.1."""
    train_args = args.train
    config = config_lib.load_config(train_args.config, list(train_args.overrides))
    if args.workers < 0 or args.ps < 0:
        raise ConfigError("--workers and --ps must be >= 0")
    jobs = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"] * args.workers,
            "ps": ["127.0.0.1:3"] * args.ps}
    cluster_lib.check_cluster(cluster_lib.Cluster({k: v for k, v in jobs.items() if v}, "chief", 0),
                              config.distribute)
    log_dir = args.log_dir or os.path.join(train_args.model_dir, "cluster-logs")
    command = [sys.executable, "-m", "estimator_gan", "train"] + list(args.train_args)
    max_steps = train_args.max_steps if train_args.max_steps is not None else config.train.max_steps

    def job_done():
        return checkpoints.latest_step(train_args.model_dir) >= max_steps

    status, _ = launcher.run_local_cluster(
        command, workers=args.workers, ps=args.ps, evaluator=args.evaluator, log_dir=log_dir,
        timeout=args.timeout, stop_grace=config.train.stop_grace_secs + 30, job_done=job_done)
    if status in (0, 130) and not job_done():
        print(f"[cluster] stopped at step {checkpoints.latest_step(train_args.model_dir)} of "
              f"{max_steps}; checkpoint in {train_args.model_dir}; rerun the same command to resume; "
              f"logs in {log_dir}", flush=True)
    else:
        print(f"[cluster] {'done' if status == 0 else 'failed'}; logs in {log_dir}", flush=True)
    return status


COMMANDS = {"train": train, "export": export, "generate": generate, "evaluate": evaluate_command,
            "local-cluster": local_cluster}


def run(command: str, args) -> int:
    """Run a parsed command; failures a user can fix become one line and an exit code."""
    _quiet_tensorflow()
    try:
        return COMMANDS[command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - turned into one line (after the traceback with --debug)
        if isinstance(err, Error):
            message, code = str(err) or type(err).__name__, err.exit_code
        else:
            described = describe_failure(err, getattr(args, "model_dir", None))
            if described is None:
                raise
            message, code = described
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {message.strip().splitlines()[0]}", file=sys.stderr)
        return code

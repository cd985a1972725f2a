"""Command line: `estimator-gan train ...` (and `python run_train.py ...`, the same as `train`).

Errors a user can fix (bad config, bad data, bad paths, a full disk, a locked model dir) print
one line, `error: ...`, and exit 2; a diverged run exits 3; SIGTERM stops cleanly with exit 0,
SIGINT with 130 (see `reliability`). `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

DEFAULT_MODEL_DIR = os.path.join("runs", "default")


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _add_config_args(parser: argparse.ArgumentParser):
    parser.add_argument("--config", help="YAML config file (default: the built-in default job)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=5000 (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _train_parser(parser: argparse.ArgumentParser):
    _add_config_args(parser)
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help=f"checkpoints, config.yaml, events and sample PNGs (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    parser.add_argument("--export", dest="export_dir", metavar="DIR",
                        help="after training, export for serving into DIR (see the export command)")
    return parser


def cmd_train(args) -> int:
    _quiet_tensorflow()
    from estimator_gan import config as config_lib
    from estimator_gan import reliability
    from estimator_gan import training

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    config = config_lib.load_config(args.config, overrides)
    gan = training.GAN(config, model_dir=args.model_dir)
    _print_cluster_role(gan.config)
    start_step = gan.global_step()
    max_steps = gan.config.train.max_steps
    shape = "x".join(str(d) for d in gan.config.model.sample_shape)
    if start_step >= max_steps:
        print(f"{args.model_dir} is already at step {start_step} >= max_steps {max_steps}; "
              f"nothing to do (raise train.max_steps to train further)")
        return 0
    model = gan.config.model
    networks = (model.architecture if not (model.generator_fn or model.discriminator_fn) else
                f"{model.generator_fn or model.architecture} / {model.discriminator_fn or model.architecture}")
    print(f"training {networks} on {gan.config.data.source} ({shape}), "
          f"loss {gan.config.loss.name}, D:G {gan.config.train.d_steps}:{gan.config.train.g_steps}, "
          f"{'resuming at step ' + str(start_step) if start_step else 'from scratch'}, "
          f"to step {max_steps}, model dir {args.model_dir}", flush=True)
    started = time.time()
    with reliability.GracefulStop(gan.config.train.stop_grace_secs) as stop:
        step = gan.train(hooks=[stop.hook()])
    elapsed = time.time() - started
    if stop.signum:
        print(f"stopped by {stop.signal_name} at step {step} after {elapsed:.1f}s; checkpoint saved "
              f"in {args.model_dir}; rerun the same command to resume", flush=True)
        return stop.exit_code
    print(f"done: step {step} in {elapsed:.1f}s; checkpoint and config in {args.model_dir}"
          + (f"; samples: {gan.sample_listener.last_path}" if gan.sample_listener.last_path else ""))
    if gan.last_export:
        print(f"exported the generator to {gan.last_export}")
    if args.export_dir:
        _export_and_report(gan, args.export_dir)
    return 0


def _export_parser(parser: argparse.ArgumentParser):
    parser.add_argument("--model-dir", required=True, help="a model dir written by train")
    parser.add_argument("--export-dir", required=True,
                        help="writes generator/<version>/, discriminator/<version>/ (TF Serving layout)")
    parser.add_argument("--checkpoint", help="checkpoint prefix to export (default: the latest)")
    parser.add_argument("--tflite", action="store_true", help="also write tflite/<version>/generator.tflite")
    parser.add_argument("--generator-only", action="store_true", help="skip the discriminator")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override export settings, e.g. --set export.standing_batches=100")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _size(path: str) -> str:
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) \
        if os.path.isdir(path) else os.path.getsize(path)
    return f"{total / 1e6:.2f} MB"


def _export_and_report(gan, export_dir: str, checkpoint=None, roles=None, tflite=None):
    from estimator_gan import export

    result = export.export(gan, export_dir, checkpoint_path=checkpoint, tflite=tflite,
                           roles=roles or (export.GENERATOR, export.DISCRIMINATOR))
    standing = result.info.get("standing_statistics")
    print(f"exported step {result.global_step} as version {result.version}"
          + (f" (batch-norm statistics of {standing['layers']} layers recomputed over "
             f"{standing['batches']}x{standing['batch_size']} samples)" if standing else ""))
    for part in (export.GENERATOR, export.DISCRIMINATOR, export.TFLITE):
        path = getattr(result, part)
        if path:
            print(f"  {part:<14} {path}  ({_size(path)})")
    return result


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from estimator_gan import config as config_lib
    from estimator_gan import export
    from estimator_gan import training

    saved = config_lib.load_model_dir_config(args.model_dir)
    config = config_lib.config_from_dict(saved.to_dict(), args.overrides)
    diffs = config_lib.architecture_differences(saved, config)
    if diffs:
        raise config_lib.ConfigError(f"export cannot change the architecture ({'; '.join(diffs)})")
    gan = training.GAN(config, model_dir=args.model_dir)
    roles = (export.GENERATOR,) if args.generator_only else None
    _export_and_report(gan, args.export_dir, args.checkpoint, roles, args.tflite or None)
    return 0


def _generate_parser(parser: argparse.ArgumentParser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", help="an export dir, a generator/ dir or one version of it")
    source.add_argument("--model-dir", help="a model dir: exports its latest checkpoint first")
    parser.add_argument("--count", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--truncation", type=float,
                        help="draw noise from the normal truncated to [-T, T]")
    parser.add_argument("--noise", help="a .npy file of noise [N, z_dim] instead of --seed/--count")
    parser.add_argument("--labels", help="conditional models: one class id, or one per sample "
                                         "(comma-separated); default: the classes in turn")
    parser.add_argument("--out", required=True,
                        help="FILE.png (a grid), FILE.npy (the samples) or a directory (one PNG each)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def cmd_generate(args) -> int:
    _quiet_tensorflow()
    import tempfile

    import numpy as np

    from estimator_gan import config as config_lib
    from estimator_gan import export
    from estimator_gan import images

    if args.count < 1:
        raise export.ExportError(f"--count must be at least 1, got {args.count}")
    labels = None
    if args.labels:
        try:
            labels = [int(x) for x in args.labels.split(",")]
        except ValueError:
            raise export.ExportError(f"--labels must be integers separated by commas, got {args.labels!r}") from None
        labels = labels[0] if len(labels) == 1 else labels
    out_kind = os.path.splitext(args.out)[1].lower()
    with tempfile.TemporaryDirectory(prefix="estimator-gan-generate-") as scratch:
        source = args.export
        if args.model_dir:
            from estimator_gan import training

            gan = training.GAN(config_lib.load_model_dir_config(args.model_dir), model_dir=args.model_dir)
            source = export.export(gan, scratch, roles=(export.GENERATOR,), tflite=False).generator
        generator = export.load_generator(source)
        if args.noise:
            if not os.path.isfile(args.noise):
                raise export.ExportError(f"noise file not found: {args.noise}")
            try:
                noise = np.load(args.noise, allow_pickle=False)
            except ValueError as err:
                raise export.ExportError(f"cannot read {args.noise} as a .npy array: {err}") from None
            outputs = generator.from_noise(noise, labels)
        else:
            outputs = generator.from_seed(args.seed, args.count, args.truncation, labels)
    samples = outputs["samples"]
    if out_kind == ".npy":
        _save_npy(samples, args.out)
    elif out_kind == ".png":
        images.save_png(images.samples_picture(samples), args.out)
    elif out_kind:
        raise export.ExportError(f"--out must end in .png or .npy, or be a directory, got {args.out}")
    elif "png_bytes" not in outputs:
        raise export.ExportError("one PNG per sample needs image samples; use --out FILE.png or FILE.npy")
    else:
        os.makedirs(args.out, exist_ok=True)
        for i, png in enumerate(outputs["png_bytes"]):
            config_lib.atomic_write_bytes(os.path.join(args.out, f"sample_{i:04d}.png"), png)
    step = generator.info.get("global_step")
    print(f"wrote {len(samples)} samples ({'x'.join(str(d) for d in samples.shape[1:])}) to {args.out} "
          f"from {args.export or args.model_dir}" + (f" (step {step})" if step is not None else ""))
    return 0


def _save_npy(array, path: str):
    import io

    from estimator_gan import config as config_lib
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    config_lib.atomic_write_bytes(path, buffer.getvalue())


def _evaluate_parser(parser: argparse.ArgumentParser):
    parser.add_argument("--model-dir", required=True,
                        help="a model dir written by `train` (its config.yaml and checkpoints)")
    parser.add_argument("--export", metavar="DIR",
                        help="evaluate this exported generator (SavedModel, or a folder of "
                             "timestamped exports) instead of a checkpoint")
    parser.add_argument("--checkpoint", help="evaluate this checkpoint (default: the latest)")
    parser.add_argument("--all-checkpoints", action="store_true",
                        help="evaluate every checkpoint still in the model dir (metric curves)")
    parser.add_argument("--num-samples", type=int, help="shorthand for --set eval.num_samples=N")
    parser.add_argument("--output", help="result JSON (default: <model-dir>/eval.json)")
    parser.add_argument("--plot", action="store_true",
                        help="write evaluation/metrics.png (curves over checkpoints) and a "
                             "samples picture (a scatter with the mode centres for 2D data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the saved config, e.g. --set eval.classifier_epochs=5")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    import tensorflow as tf

    from estimator_gan import config as config_lib
    from estimator_gan import evaluation
    from estimator_gan import training

    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"eval.num_samples={args.num_samples}")
    if not os.path.isdir(args.model_dir):
        raise FileNotFoundError(f"model dir not found: {args.model_dir}")
    config_lib.load_model_dir_config(args.model_dir)  # a one-line error if it is not one
    config = config_lib.load_config(os.path.join(args.model_dir, config_lib.CONFIG_FILENAME), overrides)
    gan = training.GAN(config, model_dir=args.model_dir)
    metrics = evaluation.SampleMetrics(gan.config, args.model_dir, stream=sys.stdout)
    if args.export:
        samples = evaluation.export_samples(args.export, gan.config, gan.config.eval.num_samples,
                                            gan.config.eval.seed)
        record = evaluation.evaluate_samples(metrics, samples, None, "export")
        record["export"] = evaluation.find_saved_model(args.export)
        print(f"evaluated export {record['export']}")
    else:
        if args.checkpoint:
            checkpoints = [args.checkpoint]
        elif args.all_checkpoints:
            state = tf.train.get_checkpoint_state(args.model_dir)
            checkpoints = list(state.all_model_checkpoint_paths) if state else []
        else:
            checkpoints = [p for p in [tf.train.latest_checkpoint(args.model_dir)] if p]
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoint in {args.model_dir}: train first")
        for path in checkpoints:
            if not tf.io.gfile.exists(path + ".index"):
                raise FileNotFoundError(f"checkpoint not found: {path}")
            record = evaluation.evaluate_checkpoint(gan, metrics, path,
                                                    estimator_eval=path == checkpoints[-1])
            evaluation.append_history(args.model_dir, record)
            print(f"step {record['step']}: {evaluation.format_inline(record)}", flush=True)
    print(f"\n{record['num_samples']} samples, features: {metrics.info['kind']}"
          + (f" ({metrics.info['classifier']})" if "classifier" in metrics.info else ""))
    print(evaluation.format_table(record))
    record["feature_extractor"] = metrics.info
    output = evaluation.write_result(
        args.output or os.path.join(args.model_dir, evaluation.RESULT_FILE), record)
    print(f"wrote {output}")
    if args.plot:
        for path in evaluation.write_plots(args.model_dir, gan.config, record):
            print(f"wrote {path}")
    return 0


def _print_cluster_role(config) -> None:
    from estimator_gan import distributed

    cluster = distributed.read_tf_config()
    if cluster is not None or config.distribute.strategy != "none":
        print(f"distributed: {cluster.describe() if cluster else 'one process'}, "
              f"strategy {config.distribute.strategy}", flush=True)


def _local_cluster_parser(parser: argparse.ArgumentParser):
    parser.add_argument("--workers", type=int, default=1, help="workers besides the chief (default 1)")
    parser.add_argument("--ps", type=int, default=1,
                        help="parameter servers (default 1; 0 for multi_worker_mirrored)")
    parser.add_argument("--evaluator", action="store_true", help="also run an evaluator process")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="stop every process after this many seconds (default 3600)")
    parser.add_argument("--log-dir", help="per-process logs (default: <model-dir>/cluster-logs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                        help="arguments of `train` for every process, after `--`")
    return parser


def cmd_local_cluster(args) -> int:
    """Run one training job as a chief, workers, ps (and evaluator) on 127.0.0.1."""
    from estimator_gan import config as config_lib
    from estimator_gan import distributed

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    train_args_parsed = _train_parser(argparse.ArgumentParser(prog="train")).parse_args(train_args)
    overrides = list(train_args_parsed.overrides)
    config = config_lib.load_config(train_args_parsed.config, overrides)
    if args.workers < 0 or args.ps < 0:
        raise config_lib.ConfigError("--workers and --ps must be >= 0")
    jobs = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"] * args.workers,
            "ps": ["127.0.0.1:3"] * args.ps}
    distributed.check_cluster(distributed.Cluster({k: v for k, v in jobs.items() if v}, "chief", 0),
                              config.distribute)
    log_dir = args.log_dir or os.path.join(train_args_parsed.model_dir, "cluster-logs")
    command = [sys.executable, "-m", "estimator_gan.cli", "train"] + train_args
    status, _ = distributed.run_local_cluster(
        command, workers=args.workers, ps=args.ps, evaluator=args.evaluator, log_dir=log_dir,
        timeout=args.timeout)
    print(f"[cluster] {'done' if status == 0 else 'failed'}; logs in {log_dir}", flush=True)
    return status


COMMANDS = {
    "train": (_train_parser, cmd_train, "train a GAN (resumes from the model dir's latest checkpoint)"),
    "export": (_export_parser, cmd_export, "export a trained model for TensorFlow Serving (and TFLite)"),
    "generate": (_generate_parser, cmd_generate, "write samples from an export or a model dir (PNG grid, PNGs, .npy)"),
    "evaluate": (_evaluate_parser, cmd_evaluate,
                 "sample-quality metrics of a checkpoint or export, next to a real-vs-real reference"),
    "local-cluster": (_local_cluster_parser, cmd_local_cluster,
                      "run a distributed training job as local processes on 127.0.0.1 (for trying it out)"),
}


def _user_errors():
    from estimator_gan.config import ConfigError
    from estimator_gan.custom import NetworkError
    from estimator_gan.data import DataError
    from estimator_gan.export import ExportError

    return (ConfigError, DataError, ExportError, NetworkError, FileNotFoundError, NotADirectoryError,
            PermissionError)


def _run(fn, args) -> int:
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - turned into one line unless --debug
        if getattr(args, "debug", False):
            raise
        if not isinstance(err, _user_errors()):
            return _environment_error(err, args)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


def _environment_error(err: Exception, args) -> int:
    """Disk full, permissions, a diverged model, a locked model_dir: one line and an exit code;
    anything unrecognised is a bug and keeps its traceback."""
    from estimator_gan import reliability

    described = reliability.describe_failure(err, getattr(args, "model_dir", None))
    if described is None:
        raise err
    message, code = described
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="estimator-gan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (build, fn, help_text) in COMMANDS.items():
        build(sub.add_parser(name, help=help_text, description=help_text)).set_defaults(fn=fn)
    args = parser.parse_args(argv)
    return _run(args.fn, args)


def train_main(argv: Optional[List[str]] = None) -> int:
    """`run_train.py`: the `train` command on its own."""
    parser = _train_parser(argparse.ArgumentParser(
        prog="run_train.py", description=COMMANDS["train"][2]))
    args = parser.parse_args(argv)
    return _run(cmd_train, args)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `estimator-gan train | export | generate | evaluate | local-cluster` (and
`python run_train.py ...`, the same as `train`).

This module only parses arguments; the commands live in `commands`, which is imported once the
arguments are known, so that `--help`, `--version` and usage errors answer without starting
TensorFlow.

Errors a user can fix (bad config, bad data, bad paths, a full disk, a locked model dir) print
one line, `error: ...`, and exit 2; a diverged run exits 3; SIGTERM (from start-up on) and an
expired time budget stop cleanly with exit 0, SIGINT with 130. `--debug` also shows the
traceback, with the same exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from typing import List, Optional

from estimator_gan import __version__

DESCRIPTION = ("Train GANs on TensorFlow Estimators and export the generator for TensorFlow "
               "Serving (and TFLite).")
EPILOG = ("Exit codes: 0 done, or stopped by SIGTERM or train.max_minutes with a checkpoint saved "
          "(rerun the same command to resume); 2 a problem to fix, printed as one line "
          "'error: ...'; 3 training diverged; 130 interrupted (SIGINT). "
          "Run '%(prog)s COMMAND --help' for a command's options.")
# TensorFlow 2.15 logs these three at import on every machine (its CUDA plugins register twice):
# noise whatever TF_CPP_MIN_LOG_LEVEL a user chose for the rest.
_IMPORT_NOISE = re.compile(rb"Unable to register cu(DNN|FFT|BLAS) factory")
DEFAULT_MODEL_DIR = os.path.join("runs", "default")


def _add_common(parser: argparse.ArgumentParser, overrides_help: str):
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=overrides_help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def train_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="a YAML config file, or the name of a shipped config "
                                         "(digits_dcgan, mnist_dcgan, mnist_unconditional, stacked_mnist, "
                                         "mixture_ring, mixture_grid, "
                                         "cifar10_sngan, celeba64); "
                                         "default: the built-in default job")
    _add_common(parser, "override a config value, e.g. --set train.max_steps=5000 (repeatable)")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help=f"checkpoints, config.yaml, events and sample PNGs; any TensorFlow "
                             f"filesystem (gs://, s3://, ...) (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    parser.add_argument("--max-minutes", type=float,
                        help="shorthand for --set train.max_minutes=M: stop after M minutes like "
                             "SIGTERM does (checkpoint, exit 0); rerun to continue")
    parser.add_argument("--export", dest="export_dir", metavar="DIR",
                        help="after training, export for serving into DIR (see the export command)")
    return parser


def _export_parser(parser: argparse.ArgumentParser):
    parser.add_argument("--model-dir", required=True, help="a model dir written by train")
    parser.add_argument("--export-dir", required=True,
                        help="writes generator/<version>/, discriminator/<version>/ (TF Serving layout)")
    parser.add_argument("--checkpoint", help="checkpoint prefix to export (default: the latest)")
    parser.add_argument("--tflite", action="store_true", help="also write tflite/<version>/generator.tflite")
    parser.add_argument("--generator-only", action="store_true", help="skip the discriminator")
    _add_common(parser, "override export settings, e.g. --set export.standing_batches=100")


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
    parser.add_argument("--codes", help="InfoGAN models (model.latent_codes): the value of each "
                                        "code, comma-separated, empty for any (e.g. 3 or 3,,7)")
    parser.add_argument("--out", required=True,
                        help="FILE.png (a grid), FILE.npy (the samples) or a directory (one PNG each)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _evaluate_parser(parser: argparse.ArgumentParser):
    parser.add_argument("--model-dir", required=True,
                        help="a model dir written by `train` (its config.yaml and checkpoints)")
    parser.add_argument("--export", metavar="DIR",
                        help="evaluate this exported generator instead of a checkpoint: an export "
                             "dir, its generator/ dir or one version (the highest is picked)")
    parser.add_argument("--checkpoint", help="evaluate this checkpoint (default: the latest)")
    parser.add_argument("--all-checkpoints", action="store_true",
                        help="evaluate every checkpoint still in the model dir (metric curves)")
    parser.add_argument("--num-samples", type=int, help="shorthand for --set eval.num_samples=N")
    parser.add_argument("--output", help="result JSON (default: <model-dir>/eval.json)")
    parser.add_argument("--plot", action="store_true",
                        help="write evaluation/metrics.png (curves over checkpoints) and a "
                             "samples picture (a scatter with the mode centres for 2D data)")
    _add_common(parser, "override the saved config, e.g. --set eval.classifier_epochs=5")


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


COMMANDS = {
    "train": (train_parser, "train a GAN (resumes from the model dir's latest checkpoint)"),
    "export": (_export_parser, "export a trained model for TensorFlow Serving (and TFLite)"),
    "generate": (_generate_parser, "write samples from an export or a model dir (PNG grid, PNGs, .npy)"),
    "evaluate": (_evaluate_parser,
                 "sample-quality metrics of a checkpoint or export, next to a real-vs-real reference"),
    "local-cluster": (_local_cluster_parser,
                      "run a distributed training job as local processes on 127.0.0.1 (for trying it out)"),
}


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"estimator-gan {__version__}")


def _stop_during_startup(signum, frame):
    """SIGTERM before training's own handler is installed (importing TensorFlow, loading the
    config and data) or after it is gone: nothing unsaved exists, so exit at once, as
    documented: 0, with a line saying why."""
    print(f"{signal.Signals(signum).name} received outside the training loop: exiting; nothing "
          f"unsaved was lost", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


def _import_commands():
    """Import `commands`, which starts TensorFlow, without the three lines of `_IMPORT_NOISE`
    (when TF_CPP_MIN_LOG_LEVEL lets errors through): stderr passes through a pipe that drops
    them and forwards everything else as it comes."""
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() in ("3", "4")
    if quiet or "estimator_gan.commands" in sys.modules:
        return importlib.import_module("estimator_gan.commands")
    sys.stderr.flush()
    stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _IMPORT_NOISE.search(line):
                    os.write(stderr, line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        return importlib.import_module("estimator_gan.commands")
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes the pipe's write end: the forwarder reads to its end
        forwarder.join(timeout=10)
        os.close(stderr)


def _run(command: str, args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handles_sigterm = command == "train" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_during_startup) if handles_sigterm else None
    try:
        return _import_commands().run(command, args)
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="estimator-gan", description=DESCRIPTION, epilog=EPILOG)
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (build, help_text) in COMMANDS.items():
        build(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command == "local-cluster":
        rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        args.train_args = rest
        args.train = train_parser(argparse.ArgumentParser(prog="train")).parse_args(rest)
    return _run(args.command, args)


def train_main(argv: Optional[List[str]] = None) -> int:
    """`run_train.py`: the `train` command on its own."""
    parser = train_parser(argparse.ArgumentParser(prog="run_train.py", description=COMMANDS["train"][1],
                                                  epilog=EPILOG))
    _add_version(parser)
    return _run("train", parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

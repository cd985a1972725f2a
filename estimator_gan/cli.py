"""Command line: `estimator-gan train ...` (and `python run_train.py ...`, the same as `train`).

Errors a user can fix (bad config, bad data, bad paths) print one line, `error: ...`, and exit 2;
`--debug` shows the traceback instead.
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
    return parser


def cmd_train(args) -> int:
    _quiet_tensorflow()
    from estimator_gan import config as config_lib
    from estimator_gan import training

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    config = config_lib.load_config(args.config, overrides)
    gan = training.GAN(config, model_dir=args.model_dir)
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
    step = gan.train()
    elapsed = time.time() - started
    print(f"done: step {step} in {elapsed:.1f}s; checkpoint and config in {args.model_dir}"
          + (f"; samples: {gan.sample_listener.last_path}" if gan.sample_listener.last_path else ""))
    return 0


COMMANDS = {
    "train": (_train_parser, cmd_train, "train a GAN (resumes from the model dir's latest checkpoint)"),
}


def _user_errors():
    from estimator_gan.config import ConfigError
    from estimator_gan.custom import NetworkError
    from estimator_gan.data import DataError

    return (ConfigError, DataError, NetworkError, FileNotFoundError, NotADirectoryError, PermissionError)


def _run(fn, args) -> int:
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - turned into one line unless --debug
        if getattr(args, "debug", False) or not isinstance(err, _user_errors()):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


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

"""The orchestrated training loop: one Estimator whose TRAIN graph runs `steps_per_run` global
steps of `d_steps` D updates and `g_steps` G updates per `session.run`, in one graph and one
session, on one model_dir.

Why not alternate `generator_estimator.train()` and `discriminator_estimator.train()`? Each
`train()` call rebuilds the graph, opens a session, restores and saves a checkpoint: 1-2 s
against a few ms for one update in an open session. RunConfig, hooks, resuming and TF_CONFIG
distribution work as for any Estimator, and the generator and discriminator Estimators
predict, evaluate, export or train further from the checkpoints it writes.

What `train` does, in order: reads `TF_CONFIG` (one-line errors before any server starts);
checks the config against the data and that the model and one step of `data.batch_size` fit
in memory; loads the data. Then, on the chief, under the model directory's lock: checks that the newest readable checkpoint
fits (the saved config's architecture, and every variable of the TRAIN graph: networks,
optimizer slots); only then writes: removes what a killed save left, points the state file at
that checkpoint, writes `config.yaml`. Then trains (single process: `Estimator.train`; in a
cluster: `tf.estimator.train_and_evaluate`).

Exact resume (single process, in-memory data, the built-in input pipeline): the input stream
starts at the example the checkpoint's step reached, and every random draw is keyed on the
step (see `model.gan`), so an interrupted and resumed run computes what an uninterrupted one
does, bit for bit on the same CPU build.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from estimator_gan import checkpoints, fileio
from estimator_gan import memory as memory_lib
from estimator_gan import config as config_lib
from estimator_gan.data import pipeline, sources
from estimator_gan.errors import ConfigError, DataError
from estimator_gan.model import gan, model_fns
from estimator_gan.runtime import cluster as cluster_lib
from estimator_gan.runtime import hooks as hooks_lib
from estimator_gan.runtime import model_dir as model_dir_lib
from estimator_gan.runtime.signals import TimeBudget

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys


@dataclass
class TrainResult:
    """How a `train` call ended."""

    step: int
    is_chief: bool
    cluster: Optional[cluster_lib.Cluster]
    steps_per_run: int
    budget_expired: bool = False
    sample_path: Optional[str] = None


# ---------------------------------------------------------------------------- input fns


def call_input_fn(input_fn, input_context=None):
    """Call an input_fn that may or may not take an `input_context`."""
    if "input_context" in inspect.signature(input_fn).parameters:
        return input_fn(input_context=input_context)
    return input_fn()


def stacked_input_fn(input_fn: Callable, d_steps: int, steps_per_run: int) -> Callable:
    """One element per `session.run`: `[steps_per_run, d_steps, B, ...]` consecutive batches."""

    def fn(input_context=None):
        ds = call_input_fn(input_fn, input_context).batch(d_steps, drop_remainder=True)
        return ds.batch(steps_per_run, drop_remainder=True)

    return fn


def _lazy_input_fn(make: Callable[[], Callable]) -> Callable:
    """An input_fn that builds the real one (loading the data) on first use only: processes of a
    cluster that never read this input (ps, evaluator, chief for eval data) skip the loading."""
    built: List[Callable] = []

    def fn(input_context=None):
        if not built:
            built.append(make())
        return call_input_fn(built[0], input_context)

    return fn


def _sharded_input_fn(input_fn: Callable, input_context) -> Callable:
    """`input_fn` with a fixed input context (this worker's shard) when Estimator gives none."""

    def fn(input_context_given=None):
        return call_input_fn(input_fn, input_context_given or input_context)

    return fn


# ---------------------------------------------------------------------------- checks


def check_labels(config) -> None:
    """Refuse data whose labels (0..n-1, where known before reading it all) exceed
    `model.num_classes`: an embedding lookup would fail mid-training or, on some devices,
    silently read zeros."""
    classes = config.model.num_classes
    found = sources.num_classes(config.data) if classes is not None else None
    if found is not None and found > classes:
        raise DataError(
            f"{config.data.source}: labels go up to {found - 1} but model.num_classes is "
            f"{classes}; labels must lie in 0..{classes - 1}")


class NetworkCost(NamedTuple):
    """What a model costs, estimated from its graph: bytes of its variables with both
    optimizers' slots and the EMA, its largest variable, floating-point operations of one
    global step (forward and backward passes of every update), and bytes of the tensors one
    step holds at once (`step_bytes`, activations at `data.batch_size`)."""

    variable_bytes: int
    largest: Tuple[str, List[int]]
    step_flops: int
    step_bytes: int


# Tensors not made per example: constants and variables (counted in variable_bytes) and views.
_NOT_ACTIVATIONS = {"Const", "VarHandleOp", "VariableV2", "ReadVariableOp", "Identity"}


def network_cost(parts: gan.GANParts) -> NetworkCost:
    """Build G and D on one global batch in a throwaway graph (no memory is allocated) and
    measure them (see `NetworkCost`)."""
    model, train = parts.model, parts.config.train
    batch = parts.config.data.batch_size
    with tf.Graph().as_default() as graph:
        labels = tf.zeros([batch], tf.int32) if model.conditional else None
        fake = parts.generator(tf.zeros([batch, model.z_dim]), labels, ModeKeys.TRAIN).outputs
        parts.discriminator(fake, labels, ModeKeys.TRAIN)
        sizes = [(int(np.prod(v.shape.as_list())) * v.dtype.size, v) for v in v1.global_variables()]
        options = v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        forward = v1.profiler.profile(graph, options=options).total_float_ops
        # Every float tensor of one forward pass of G and D. Measured on the default DCGAN at
        # batch 2048 and 8192, a training step's peak memory grew by 0.85-0.95 times this sum
        # (the backward passes reuse what the forward ones free).
        activations = sum(int(np.prod(t.shape.as_list())) * t.dtype.size
                          for op in graph.get_operations() if op.type not in _NOT_ACTIVATIONS
                          for t in op.outputs if t.dtype.is_floating and t.shape.is_fully_defined())
    copies = 4 if parts.ema_decay is not None else 3  # weights, two Adam slots, EMA
    _, largest = max(sizes, key=lambda pair: pair[0])
    # Each update runs about one forward of both networks and twice that backward.
    return NetworkCost(sum(size for size, _ in sizes) * copies,
                       (largest.op.name, largest.shape.as_list()),
                       3 * forward * (train.d_steps + train.g_steps), activations)


# A step may use this share of the memory; the rest is TensorFlow's own (about 0.7 GB), the
# input pipeline's and the process's.
STEP_MEMORY_SHARE = 0.8


def check_model_size(parts: gan.GANParts, memory: Optional[memory_lib.Memory] = None) -> NetworkCost:
    """Refuse, before anything is written, networks whose variables (with both optimizers'
    slots and the EMA) would not fit in half of the memory this process may use
    (`memory.available()`: the RAM or a cgroup's limit), and a `data.batch_size` whose training
    step would not fit in `STEP_MEMORY_SHARE` of it (TensorFlow would die of `std::bad_alloc`
    mid-run); returns the `NetworkCost`."""
    cost = network_cost(parts)
    memory = memory or memory_lib.available()
    gib = 2 ** 30
    if cost.variable_bytes > memory.bytes // 2:
        name, shape = cost.largest
        raise ConfigError(
            f"the networks need about {cost.variable_bytes / gib:.1f} GiB for their variables "
            f"and optimizer state, more than half of {memory.source}, {memory.bytes / gib:.1f} GiB "
            f"(the largest is {name} {shape}, model.z_dim={parts.model.z_dim}): make the model smaller")
    needed = cost.variable_bytes + cost.step_bytes
    budget = int(memory.bytes * STEP_MEMORY_SHARE)
    if needed > budget:
        batch = parts.config.data.batch_size
        fits = int(0.9 * (budget - cost.variable_bytes) / (cost.step_bytes / batch))
        fits = int(float(f"{max(fits, 1):.2g}"))  # a round figure, with a margin
        raise ConfigError(
            f"data.batch_size={batch} needs about {needed / gib:.1f} GiB per training step (both "
            f"networks' activations and variables), more than {STEP_MEMORY_SHARE:.0%} of "
            f"{memory.source}, {memory.bytes / gib:.1f} GiB: lower data.batch_size (about "
            f"{fits} fits)")
    return cost


def training_variables(params: dict) -> dict:
    """{name: shape} of every variable the orchestrator's TRAIN graph holds (networks, EMA,
    optimizer slots, counters), from a throwaway graph: what a resumed checkpoint must hold."""
    config = params["config"]
    model, batch = config.model, config.data.batch_size
    d_steps = max(config.train.d_steps, 1)
    with tf.Graph().as_default():
        v1.train.get_or_create_global_step()
        features = v1.placeholder(tf.float32, [1, d_steps, batch, *model.sample_shape])
        labels = v1.placeholder(tf.int32, [1, d_steps, batch]) if model.conditional else None
        model_fns.gan_model_fn(features, labels, ModeKeys.TRAIN,
                               dict(params, steps_per_run=1, training_hooks=None))
        return {v.op.name: v.shape.as_list() for v in v1.global_variables()}


def check_resumable(params: dict, model_dir: str, newest: checkpoints.Newest) -> None:
    """Refuse, before anything is written, a checkpoint these settings cannot resume: another
    architecture by the saved config, or variables the TRAIN graph needs that the checkpoint
    lacks or holds in another shape (other networks, another optimizer's slots), which also
    covers a model dir whose config.yaml is gone."""
    if newest.path is None:
        return
    model_dir_lib.check_architecture(params["config"], model_dir)
    problems = checkpoints.differences(newest.path, training_variables(params))
    if problems:
        more = f"; {len(problems) - 1} more differ" if len(problems) > 1 else ""
        raise ConfigError(f"{model_dir} holds a checkpoint that does not fit these settings "
                          f"({problems[0]}{more}); {model_dir_lib.resume_advice(model_dir)}")


# `train.steps_per_run: null` runs small steps (below COMPUTE_BOUND_FLOPS) MAX_STEPS_PER_RUN at a
# time, which hides the per-run cost of session.run and the hooks, and larger ones one at a time:
# measured here, the 2D MLPs ran 13-18% faster at 100 steps per run than at 25, while the digits
# DCGAN ran 8% slower at 2 than at 1 and the MNIST DCGAN gained nothing from 4.
COMPUTE_BOUND_FLOPS = 1e9
MAX_STEPS_PER_RUN = 100


def steps_per_run(config, step_flops: Optional[int] = None) -> int:
    """The steps per `session.run`: `train.steps_per_run`, or when it is null,
    `MAX_STEPS_PER_RUN` for steps of fewer than `COMPUTE_BOUND_FLOPS` (`step_flops`, estimated
    when not given) and 1 for larger ones; then lowered to the largest divisor of the logging,
    summary and checkpoint intervals, so that each of them falls on a run boundary."""
    train = config.train
    k = train.steps_per_run
    if k is None:
        if step_flops is None:
            step_flops = network_cost(gan.GANParts.from_params({"config": config})).step_flops
        k = MAX_STEPS_PER_RUN if step_flops < COMPUTE_BOUND_FLOPS else 1
    interval = math.gcd(math.gcd(train.log_every_steps, train.save_checkpoints_steps),
                        train.save_summary_steps)
    return max(d for d in range(1, min(k, interval) + 1) if interval % d == 0)


# ---------------------------------------------------------------------------- training


def _training_hooks(config, model_dir: str, max_steps: int, k: int, progress: bool, stream,
                    run_loop: bool) -> Callable:
    """The `training_hooks(ops, scaffold)` the TRAIN spec calls with its `GANTrainOps`. With
    `run_loop` (one process) `RunLoopHook` feeds the steps per run, stops at max_steps and writes
    the summaries at the steps they are due (the Estimator's summary hook would be off by up to
    K); its checkpoint saver hook reads the global step after every run, so it saves at the
    exact steps whatever K is."""
    train = config.train
    centres = config.data.mixture_centres()

    def real_examples():
        count = 1024 if centres is not None else min(64, train.sample_grid ** 2)
        return pipeline.load_examples(config.data, limit=count, seed=config.eval.seed)[0]

    def hooks_fn(ops: gan.GANTrainOps, scaffold):
        hooks: List = []
        chief: List = [hooks_lib.NonFiniteLossHook(ops, model_dir),
                       hooks_lib.SamplePictureHook(ops, model_dir, train.save_checkpoints_steps,
                                                   centres, real_examples)]
        if run_loop:
            hooks.append(hooks_lib.RunLoopHook(ops, k, max_steps, model_dir, train.save_summary_steps))
        if progress:
            hooks.append(hooks_lib.ProgressHook(ops, train.log_every_steps, max_steps,
                                                config.data.batch_size * train.d_steps, stream))
        return hooks, chief

    return hooks_fn


def train(params: dict, model_dir: str, input_fn: Optional[Callable] = None,
          max_steps: Optional[int] = None, hooks: Iterable = (), listeners: Iterable = (),
          progress: bool = True, stream=None, run_config: Optional[tf.estimator.RunConfig] = None,
          started: Optional[float] = None) -> TrainResult:
    """Train the GAN of `params` (the Estimator params: `config`, optional custom networks and
    loss) until global step `max_steps` (default `train.max_steps`), resuming from the latest
    checkpoint in `model_dir` (see the module docstring). `hooks` and `listeners` are passed to
    the Estimator; `run_config` (optional) supplies settings the config does not (its
    model_dir is replaced). `started` (a `time.time()`) starts the `train.max_minutes` budget."""
    config = params["config"]
    train_cfg = config.train
    max_steps = max_steps or train_cfg.max_steps
    cluster = cluster_lib.read_tf_config()
    cluster_lib.check_cluster(cluster, config.distribute)
    is_chief = cluster.is_chief if cluster is not None else (run_config.is_chief if run_config else True)
    if input_fn is None:
        check_labels(config)
    cost = check_model_size(gan.GANParts.from_params(params))
    start_step = checkpoints.latest_step(model_dir)

    def train_input_fn():
        if input_fn is not None:
            return input_fn
        return pipeline.make_input_fn(config.data, training=True, seed=train_cfg.seed,
                                      start_example=start_step * train_cfg.d_steps * config.data.batch_size)

    # The data is loaded and checked before the model dir is touched (ps and evaluator never
    # read it); the checkpoint is checked under the lock, which keeps other trainings out,
    # before anything is written.
    reads_data = cluster is None or cluster.worker_index is not None
    train_input = train_input_fn() if reads_data else _lazy_input_fn(train_input_fn)
    with model_dir_lib.RunLock(model_dir) if is_chief else contextlib.nullcontext():
        if is_chief:
            newest = checkpoints.newest_readable(model_dir)
            check_resumable(params, model_dir, newest)
            if newest.step != start_step:  # changed since the data was positioned
                start_step = newest.step
                train_input = train_input_fn() if reads_data else train_input
            model_dir_lib.remove_partial_files(model_dir)
            model_dir_lib.recover_latest_checkpoint(model_dir, newest)
            config_lib.save_config(config, model_dir)
        distributed = cluster is not None or config.distribute.strategy != "none"
        k = 1 if distributed else steps_per_run(config, cost.step_flops)
        budget = TimeBudget(train_cfg.max_minutes, started) if train_cfg.max_minutes else None
        # One process: summaries are written by RunLoopHook at the due steps whatever K is.
        overrides = {} if distributed else dict(save_summary_steps=None)
        estimator_config = cluster_lib.make_run_config(config, model_dir, cluster, **overrides)
        if run_config is not None:
            estimator_config = run_config.replace(model_dir=model_dir, **overrides)
        hooks_fn = _training_hooks(config, model_dir, max_steps, k, progress, stream, not distributed)
        estimator = tf.estimator.Estimator(
            model_fn=model_fns.gan_model_fn, config=estimator_config,
            params=dict(params, steps_per_run=k, training_hooks=hooks_fn))
        all_hooks = list(hooks)
        if budget is not None:
            all_hooks.append(budget)
        if cluster is None:
            estimator.train(stacked_input_fn(train_input, train_cfg.d_steps, k),
                            max_steps=max_steps, hooks=all_hooks, saving_listeners=list(listeners))
        else:
            _train_and_evaluate(estimator, config, cluster, train_input, max_steps, all_hooks,
                                list(listeners))
            _remove_worker_scratch(config, cluster, model_dir)
    step = checkpoints.latest_step(model_dir)
    picture = fileio.join(model_dir, "samples", f"step_{step:08d}.png")
    return TrainResult(step, is_chief, cluster, k, budget is not None and budget.expired,
                       picture if fileio.exists(picture) else None)


def _train_and_evaluate(estimator, config, cluster, train_input, max_steps, hooks, listeners) -> None:
    """This process's part of a distributed job (chief, worker, ps or evaluator), through
    `tf.estimator.train_and_evaluate`."""
    dcfg = config.distribute
    context = cluster_lib.worker_input_context(cluster, dcfg)
    if context is not None:
        train_input = _sharded_input_fn(train_input, context)
    train_spec = tf.estimator.TrainSpec(
        stacked_input_fn(train_input, config.train.d_steps, 1), max_steps=max_steps,
        hooks=hooks, saving_listeners=listeners)
    eval_spec = tf.estimator.EvalSpec(
        _lazy_input_fn(lambda: pipeline.make_input_fn(config.data, training=False, seed=config.train.seed)),
        steps=dcfg.evaluator_steps, exporters=[hooks_lib.EvaluationPrinter()], start_delay_secs=0,
        throttle_secs=dcfg.evaluator_throttle_secs)
    tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)


def _remove_worker_scratch(config, cluster, model_dir: str) -> None:
    """Under multi_worker_mirrored every worker but the chief saves checkpoints and summaries
    into `<model_dir>/tmp_<task>_<index>/` (each save is a collective op every worker must run);
    once the worker is done they are copies nobody reads."""
    if config.distribute.strategy != "multi_worker_mirrored" or cluster.is_chief or cluster.worker_index is None:
        return
    scratch = fileio.join(model_dir, f"tmp_{cluster.task_type}_{cluster.task_index}")
    if fileio.isdir(scratch):
        fileio.rmtree(scratch)

"""User-supplied networks and losses: import paths, signature checks, and Keras models.

A network is any callable `fn(inputs, labels, mode, params)`; config files name one by import
path, `"package.module:attribute"` (the current directory is importable, as for `python -m`).
`resolve` and `check_callable` turn a bad path or a wrong signature into a one-line error that
names it, before any graph is built. A function passed from Python that no import path reaches
(defined in the training script's `__main__`, a lambda, a closure) is recorded as
`"in-script:<name>"` (`recorded_name`): the model dir then says what it was, and the command
line, which cannot rebuild it, refuses it in one line.

Variable sharing: the model_fns call a role's network several times per graph (D on real, on
fake, in the G update, in a gradient penalty) inside the role's variable scope with
`reuse=AUTO_REUSE`. Layers built on `tf.compat.v1.get_variable` (the built-in nets,
`tf.compat.v1.layers`) therefore share weights by name. Keras layers do not: a Keras layer object
made on each call makes new variables. `keras_network` adapts a Keras model factory: the model is
built once per graph and role, and its batch-norm updates are put in `UPDATE_OPS` like the
built-in batch norm's. A network that makes new variables on a repeated call, or outside its
scope, is refused with a `NetworkError` (see `model.gan`).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import weakref
from typing import Any, Callable, Optional

import tensorflow as tf

from estimator_gan.errors import ConfigError, NetworkError
from estimator_gan.model import layers

v1 = tf.compat.v1

GENERATOR_SIGNATURE = "fn(noise, labels, mode, params) -> samples"
DISCRIMINATOR_SIGNATURE = "fn(samples, labels, mode, params) -> logits"


IN_SCRIPT = "in-script:"


def resolve(path: str, what: str) -> Any:
    """The object at import path `"package.module:attribute"` (attribute may be dotted).

    `what` names the setting in the error, e.g. `model.generator_fn`.
    """
    if str(path).startswith(IN_SCRIPT):
        name = str(path)[len(IN_SCRIPT):]
        raise ConfigError(
            f"{what}: this run's network {name} was defined in the training script and passed to "
            f"eg.GAN, so only that script can rebuild it: export it there with GAN.export (or "
            f"define it in an importable module and pass it from there)")
    module_name, sep, attribute = str(path).partition(":")
    if not (sep and module_name.strip() and attribute.strip()):
        raise ConfigError(f"{what}: {path!r} is not an import path of the form 'package.module:name'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what}: cannot import {module_name!r} for {path!r}: {err}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what}: {path!r} does not resolve: module {module_name!r} "
                              f"has no attribute {attribute!r}") from None
    return obj


def import_path(obj: Any) -> Optional[str]:
    """`"module:name"` when that path resolves back to `obj` (so a saved config can name it):
    its qualified name, or a module-level name bound to it (e.g. `d = keras_network(build)`);
    else None (e.g. functions defined in `__main__` or inside another function)."""
    module_name = getattr(obj, "__module__", None)
    module = sys.modules.get(module_name) if module_name != "__main__" else None
    if module is None:
        return None
    qualname = getattr(obj, "__qualname__", "")
    if "<locals>" not in qualname:
        try:
            if resolve(f"{module_name}:{qualname}", "import path") is obj:
                return f"{module_name}:{qualname}"
        except ConfigError:
            pass
    names = [name for name, value in vars(module).items() if value is obj and not name.startswith("_")]
    return f"{module_name}:{names[0]}" if names else None


def recorded_name(obj: Any) -> str:
    """What a saved config records for a function passed from Python: its `import_path`, else
    `"in-script:<name>"`, which `resolve` refuses with a one-line error."""
    path = import_path(obj)
    if path is not None:
        return path
    return IN_SCRIPT + str(getattr(obj, "__name__", None) or type(obj).__name__)


def is_in_script(path: Optional[str]) -> bool:
    return str(path or "").startswith(IN_SCRIPT)


def check_callable(fn: Any, num_args: int, what: str, expected: str, error=TypeError) -> Callable:
    """Refuse `fn` unless it can be called with `num_args` positional arguments."""
    if not callable(fn):
        raise error(f"{what} must be callable as {expected}; got {type(fn).__name__} {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return fn
    try:
        signature.bind(*range(num_args))
    except TypeError:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise error(f"{what}: {name}{signature} has the wrong signature; "
                    f"expected {expected}") from None
    return fn


def network_function(spec: Any, role: str, what: Optional[str] = None) -> Callable:
    """A checked network function for `role` ('generator' or 'discriminator') from a callable
    or an import path string. Errors from a path are `ConfigError`s, from a callable `TypeError`s."""
    what = what or f"{role}_fn"
    expected = GENERATOR_SIGNATURE if role == "generator" else DISCRIMINATOR_SIGNATURE
    if isinstance(spec, str):
        return check_callable(resolve(spec, what), 4, f"{what} {spec!r}", expected, ConfigError)
    return check_callable(spec, 4, what, expected)


def keras_network(build_model: Callable) -> Callable:
    """Adapt a Keras model factory to a network function `fn(inputs, labels, mode, params)`.

    `build_model(params)` (or `build_model()`) returns a Keras model or layer. It is called once
    per graph and role, inside the role's scope, so every call of the network in that graph
    shares the model's weights, and variable names are the same in every graph (checkpoints
    restore across the generator, discriminator and orchestrator Estimators). The model is
    called as `model(inputs, training=mode == TRAIN)`, or `model([inputs, labels], ...)` when
    `model.conditional` is set. In TRAIN mode its new updates (batch-norm moving statistics) go
    to `UPDATE_OPS`, where the model_fns collect them for that role's update only, and each
    `tf.keras.layers.BatchNormalization` reports its moving statistics and batch moments like
    `layers.batch_norm`, so an export recomputes its statistics ("standing statistics").
    A discriminator may return logits `[B]` or `[B, 1]`. The generator EMA
    (`model.generator.ema_decay`) does not apply to a Keras generator: its weights bypass the
    variable-scope getter that PREDICT reads the EMA through, so it is skipped (with a warning).
    """
    takes_params = bool(inspect.signature(build_model).parameters)
    models: "weakref.WeakKeyDictionary[tf.Graph, dict]" = weakref.WeakKeyDictionary()

    def network(inputs, labels, mode, params):
        scope = v1.get_variable_scope().name
        graph = v1.get_default_graph()
        while getattr(graph, "outer_graph", None) is not None:  # a while-loop body's FuncGraph
            graph = graph.outer_graph
        per_graph = models.setdefault(graph, {})
        # An absolute name scope: Keras names variables after the name scope, not the variable
        # scope, and a re-entered variable scope opens `scope_1/`, `scope_2/`, ...
        with v1.name_scope(scope + "/" if scope else None):
            if scope not in per_graph:
                # Layer names ("dense", "dense_1") are unique per graph; reset them so the
                # variable names do not depend on which role a graph builds first.
                tf.keras.backend.reset_uids()
                per_graph[scope] = build_model(params) if takes_params else build_model()
                for layer in _batch_norm_layers(per_graph[scope]):
                    _report_batch_moments(layer)
            model = per_graph[scope]
            training = mode == tf.estimator.ModeKeys.TRAIN
            before = {id(u) for u in model.updates}
            if params["config"].model.conditional:
                if labels is None:
                    raise NetworkError(f"model.conditional is set but the {scope or 'network'} got no labels")
                outputs = model([inputs, labels], training=training)
            else:
                outputs = model(inputs, training=training)
            if training:
                for update in model.updates:
                    if id(update) not in before:
                        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
        return outputs

    network.is_keras_network = True
    network.__name__ = getattr(build_model, "__name__", "keras_network")
    network.__module__ = build_model.__module__
    network.__doc__ = build_model.__doc__
    return network


def _batch_norm_layers(model) -> list:
    """The Keras batch-norm layers of a model or layer, nested ones included."""
    modules = [model] + list(getattr(model, "submodules", ()))
    return [m for m in modules if isinstance(m, tf.keras.layers.BatchNormalization)]


def _report_batch_moments(layer) -> None:
    """Make a Keras batch-norm layer add, on each training-mode call, its moving statistics and
    the batch's moments (population variance) to the `layers.BATCH_NORM_*` collections, as
    `layers.batch_norm` does: the standing statistics of an export read them. Layers that
    normalise otherwise (renorm, virtual batches, several axes, frozen) report nothing."""
    original = layer.call

    def call(inputs, *args, **kwargs):
        outputs = original(inputs, *args, **kwargs)
        training = kwargs.get("training", args[0] if args else None)
        axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if (training is True and layer.trainable and not layer.renorm and len(axes) == 1
                and layer.virtual_batch_size is None):
            rank = inputs.shape.rank
            channel = axes[0] % rank
            mean, variance = tf.nn.moments(tf.cast(inputs, tf.float32),
                                           [i for i in range(rank) if i != channel])
            for key, value in zip(layers.BATCH_NORM_COLLECTIONS,
                                  (layer.moving_mean, layer.moving_variance, mean, variance)):
                v1.add_to_collection(key, value)
        return outputs

    layer.call = call

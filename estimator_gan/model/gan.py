"""The GAN in one graph, as small immutable values built once and passed down, never looked up
again (TF-GAN's `GANModel` / `GANLoss` / `GANTrainOps` are the model):

* `GANParts` — what the model is made of: the config, the two network functions and the loss,
  resolved once from an Estimator's `params`. Its `generator(...)` / `discriminator(...)` run a
  network in its fixed variable scope (`generator/`, `discriminator/`, with reuse) and return a
  `NetworkOutput`: the outputs and what that call asks its caller to run (batch-norm updates,
  spectral-norm power iterations) or offers it (batch moments, for standing statistics).
* `GANModel` — one forward pass: noise, real batch, generated batch, D's logits on both.
  `generator_model` / `discriminator_model` build one network only (PREDICT never creates the
  other's variables).
* `GANLosses` — the two loss tensors of a forward pass.
* `GANTrainOps` — one `session.run` of training: `steps_per_run` global steps, each `d_steps`
  D updates (one real batch each) then `g_steps` G updates that see the freshly updated D, with
  the losses of the run's last step, where a loss first became non-finite, the op that
  refreshes the EMA generator's batch-norm statistics, and the sample-picture tensor.

Every TRAIN graph builds both networks, both optimizers (`G_Adam` / `D_Adam` slots, beta powers
under `G_train/` / `D_train/`) and the `generator_step` / `discriminator_step` counters, so a
checkpoint written by any of the three Estimators restores into the others.

Randomness is stateless and keyed on (train.seed, worker, global step, update): the noise of
every update, the gradient penalty's interpolation and the refresh batch are the same when a run
is resumed from a checkpoint as in an uninterrupted run, and the same for any `steps_per_run`.

Sample-quality state, also in every TRAIN graph and so in every checkpoint:

* Generator EMA (`model.generator.ema_decay`): each trainable G variable `v` has a
  non-trainable shadow `v/ExponentialMovingAverage`, moved towards `v` right after every G
  update with decay min(ema_decay, (1 + n) / (10 + n)), n = `generator_step` after the update.
  The EMA generator has its own batch-norm statistics (`.../moving_mean/
  ExponentialMovingAverage`); they are not updated per step but recomputed for the current EMA
  weights whenever they are read: before every checkpoint is saved (`GANTrainOps.
  refresh_statistics`, run by the train spec's saver), before every sample picture, and as
  standing statistics before an export. (Under a distribution strategy, and for batch norm
  other than `layers.batch_norm`, they are updated after every G update instead, by one more
  forward pass of the EMA generator.) EVAL and PREDICT read the shadows through a custom
  getter, unless `model.generator.inference_weights` is `raw`.
* Spectral norm (`model.discriminator.spectral_norm`): the power-iteration vectors `.../sn_u`
  advance exactly once per D update, after its gradients: every D call of one update (real,
  fake, gradient penalty) uses the same `u`, and the G update's D call uses the updated one.
* Conditional models get their labels validated in-graph (int32 ids in [0, num_classes)).
* InfoGAN codes (`model.latent_codes`, `model.info`): G gets the codes its noise carries; each
  D update adds D's code cross-entropy on its fakes to D's loss, each G update the same term on
  the samples it makes to G's loss (times `loss.info_weight`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from estimator_gan import sampling
from estimator_gan.errors import ConfigError, NetworkError
from estimator_gan.model import augment as augment_lib
from estimator_gan.model import losses as losses_lib
from estimator_gan.model import info, layers, networks

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
ROLES = (GENERATOR, DISCRIMINATOR)
GENERATOR_STEP = "generator_step"
DISCRIMINATOR_STEP = "discriminator_step"
EMA_SUFFIX = "ExponentialMovingAverage"
SAMPLE_NOISE_SEED = 1234
REFRESH_BATCH = 1024
# Activations (`activation_bytes`) of one generator call of the statistics refresh stay below
# this; measured on the residual generators, their peak memory was 3.5-6 times smaller.
REFRESH_CHUNK_BYTES = 4 * 2 ** 30


# ------------------------------------------------------------------------------- the parts


class NetworkOutput(NamedTuple):
    """One network call: its outputs and what it leaves for its caller.

    `update_ops`: batch-norm moving-statistics updates (run by this role's update only).
    `batch_norm`: `(moving_mean, moving_variance, batch_mean, batch_variance)` per built-in
    batch-norm layer (TRAIN mode). `power_iterations`: `(u, u_new)` per spectrally normalised
    weight (TRAIN mode), assigned once per D update. `code_logits`: a discriminator's
    predictions of the InfoGAN codes, [B, sum(model.latent_codes)] (None without codes).
    """

    outputs: tf.Tensor
    update_ops: Tuple = ()
    batch_norm: Tuple = ()
    power_iterations: Tuple = ()
    code_logits: Optional[tf.Tensor] = None


def _collected(keys: Sequence[str], fn: Callable):
    """`fn()` and, per collection key, what it added to the graph collection."""
    before = [len(v1.get_collection(k)) for k in keys]
    out = fn()
    return out, [tuple(v1.get_collection(k)[n:]) for k, n in zip(keys, before)]


def _ema_getter(getter, name, *args, **kwargs):
    """Hands out the EMA generator's variable (a weight's shadow, or its own batch-norm
    statistic) in place of each raw one."""
    kwargs["trainable"] = False
    return getter(f"{name}/{EMA_SUFFIX}", *args, **kwargs)


def role_variables(scope: str, trainable: bool = True) -> List[tf.Variable]:
    key = v1.GraphKeys.TRAINABLE_VARIABLES if trainable else v1.GraphKeys.GLOBAL_VARIABLES
    return v1.get_collection(key, scope=scope + "/")


@dataclass(frozen=True)
class GANParts:
    """The config, the two network functions and the loss of a model (see the module
    docstring). Made from an Estimator's `params` (`from_params`), where `config` is required
    and `generator_fn`, `discriminator_fn` and `loss` override what the config names."""

    config: object
    generator_fn: Callable
    discriminator_fn: Callable
    loss: losses_lib.GANLoss

    @classmethod
    def from_params(cls, params: dict) -> "GANParts":
        config = params["config"]
        gen, disc = networks.networks_for(config, params.get("generator_fn"), params.get("discriminator_fn"))
        loss = params.get("loss") or losses_lib.as_loss(config.loss.name)
        return cls(config, gen, disc, loss)

    @property
    def model(self):
        return self.config.model

    @property
    def params(self) -> dict:
        """What a network function gets as `params`: `{"config": Config}`."""
        return {"config": self.config}

    @property
    def ema_decay(self) -> Optional[float]:
        """The generator EMA decay in force: the config's, or None for a Keras generator (its
        variables bypass the variable-scope getter through which the shadows are read)."""
        if getattr(self.generator_fn, "is_keras_network", False):
            return None
        return self.model.generator.ema_decay

    def uses_ema(self, mode, use_ema: Optional[bool] = None) -> bool:
        """Whether G reads its moving-average weights: by default in EVAL and PREDICT when the
        config keeps an EMA and `inference_weights` is `ema`."""
        if use_ema is None:
            use_ema = mode != ModeKeys.TRAIN and self.model.generator.inference_weights == "ema"
        return bool(use_ema) and self.ema_decay is not None

    def checked_labels(self, labels):
        """The labels a conditional model's networks get: int32 [B], asserted in-graph to lie
        in [0, model.num_classes). Unconditional models get `labels` unchanged."""
        model = self.model
        if not model.conditional:
            return labels
        if labels is None:
            raise ValueError(
                "model.conditional is true but no labels reached the model: training and "
                "evaluation need a labelled data source; PREDICT needs features "
                "{'noise': ..., 'labels': ...}")
        labels = tf.convert_to_tensor(labels)
        if not labels.dtype.is_integer:
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        n = model.num_classes
        message = f"labels must be class ids in [0, {n}) (model.num_classes={n})"
        with tf.control_dependencies([tf.debugging.assert_non_negative(labels, message=message),
                                      tf.debugging.assert_less(labels, n, message=message)]):
            return tf.identity(labels)

    def generator(self, noise, labels, mode, use_ema: Optional[bool] = None) -> NetworkOutput:
        """G in its scope. `use_ema` (default: `uses_ema(mode)`) reads the moving-average
        weights (and, in TRAIN mode, gives the EMA generator's own batch-norm statistics). With
        InfoGAN codes the network gets them one-hot after the noise (`info.with_codes`)."""
        labels = self.checked_labels(labels)
        noise = info.with_codes(noise, self.model.latent_codes)
        getter = _ema_getter if self.uses_ema(mode, use_ema) else None

        def call():
            with v1.variable_scope(GENERATOR, reuse=v1.AUTO_REUSE, custom_getter=getter):
                return self.generator_fn(noise, labels, mode, self.params)

        out = self._call(GENERATOR, call)
        expected = list(self.model.sample_shape)
        if not out.outputs.shape[1:].is_compatible_with(expected):
            raise NetworkError(
                f"the generator returned samples of shape {out.outputs.shape.as_list()}; "
                f"expected [batch, {', '.join(map(str, expected))}] (model.sample_shape)")
        return out

    def discriminator(self, samples, labels, mode) -> NetworkOutput:
        """D in its scope, with the same weights on every call; logits `[B]` (`[B / m]` with
        PacGAN packing m, the network seeing packed samples and a conditional one's labels as
        `[B / m, m]`) and, with InfoGAN codes, the code
        head's logits per sample, `[B, sum(model.latent_codes)]`, unpacked."""
        labels = self.checked_labels(labels)
        packing = self.model.discriminator.packing
        packed = networks.pack(samples, packing)
        if labels is not None and self.model.conditional and packing > 1:
            labels = tf.reshape(labels, [-1, packing])

        def call():
            with v1.variable_scope(DISCRIMINATOR, reuse=v1.AUTO_REUSE):
                return self.discriminator_fn(packed, labels, mode, self.params)

        out = self._call(DISCRIMINATOR, call)
        logits, code_logits = out.outputs, None
        width = info.code_width(self.model)
        if width:
            if logits.shape.rank != 2 or logits.shape[1] != 1 + width:
                raise NetworkError(
                    f"the discriminator returned logits of shape {logits.shape.as_list()}; with "
                    f"model.latent_codes {self.model.latent_codes} expected [batch, {1 + width}]: "
                    f"the logit, then the code head (layers.logit with a code_width)")
            code_logits = tf.reshape(logits[:, 1:], [-1, sum(self.model.latent_codes)])
            logits = logits[:, 0]
        if logits.shape.rank == 2 and logits.shape[1] == 1:
            logits = tf.squeeze(logits, axis=1)
        if logits.shape.rank != 1:
            raise NetworkError(f"the discriminator returned logits of shape "
                               f"{logits.shape.as_list()}; expected [batch] or [batch, 1]")
        return out._replace(outputs=logits, code_logits=code_logits)

    def _call(self, scope: str, call: Callable) -> NetworkOutput:
        """Run a network; collect what it left in the graph collections; refuse one that makes
        variables outside its scope or on a repeated call, which would silently break weight
        sharing and var_list separation."""
        keys = (v1.GraphKeys.UPDATE_OPS, *layers.BATCH_NORM_COLLECTIONS,
                layers.SPECTRAL_NORM_VECTORS, layers.SPECTRAL_NORM_UPDATES,
                v1.GraphKeys.GLOBAL_VARIABLES)
        existing = role_variables(scope, trainable=False)
        out, (updates, means, variances, batch_means, batch_vars, vectors, steps, new) = \
            _collected(keys, call)
        if not tf.distribute.has_strategy():
            # Mirrored variables add per-replica components to the collection; the
            # single-device graphs (PREDICT, EVAL, any first run) have made the check already.
            self._check_variables(scope, existing, new)
        return NetworkOutput(tf.convert_to_tensor(out), updates,
                             tuple(zip(means, variances, batch_means, batch_vars)),
                             tuple(zip(vectors, steps)))

    @staticmethod
    def _check_variables(scope, existing, new) -> None:
        new = [v for v in new if not v.op.name.endswith("/" + EMA_SUFFIX)]
        names = ", ".join(v.op.name for v in new[:3]) + (", ..." if len(new) > 3 else "")
        fix = ("build layers with tf.compat.v1.get_variable or tf.compat.v1.layers, or wrap a "
               "Keras model with estimator_gan.keras_network")
        if any(not v.op.name.startswith(scope + "/") for v in new):
            raise NetworkError(f"the {scope} made variables outside the '{scope}/' variable "
                               f"scope ({names}): {fix}")
        if existing and new:
            raise NetworkError(f"the {scope} made new variables when called again ({names}), "
                               f"so its calls would not share weights: {fix}")


# ------------------------------------------------------------------------ forward and loss


class GANModel(NamedTuple):
    """One forward pass. PREDICT builds one network only and leaves the other's fields None.
    `real` and `fake` are the batches D judged (augmented in training when `model.augment` is
    set; `fake` under `stop_gradient`); `generated` is G's output itself."""

    noise: Optional[tf.Tensor]
    labels: Optional[tf.Tensor]
    real: Optional[tf.Tensor]
    generated: Optional[tf.Tensor]
    real_logits: Optional[tf.Tensor]
    fake_logits: Optional[tf.Tensor]
    generator_call: Optional[NetworkOutput]
    real_call: Optional[NetworkOutput]
    fake_call: Optional[NetworkOutput]
    fake: Optional[tf.Tensor] = None


class GANLosses(NamedTuple):
    """The two losses (scalars); None for a role a graph does not update."""

    discriminator: Optional[tf.Tensor]
    generator: Optional[tf.Tensor]


def gan_model(parts: GANParts, real, labels, mode, noise,
              transform: Optional[Callable] = None) -> GANModel:
    """G on `noise`, then D on `real` and on the generated batch under `stop_gradient` (so the
    D loss never reaches G; the G update calls D on `generated` itself). `transform(images,
    stream)` (training augmentation) changes what D sees: stream 0 the real, 1 the fake batch."""
    transform = transform or (lambda images, stream: images)
    generated = parts.generator(noise, labels, mode)
    real = transform(real, 0)
    fake = transform(tf.stop_gradient(generated.outputs), 1)
    real_call = parts.discriminator(real, labels, mode)
    fake_call = parts.discriminator(fake, labels, mode)
    return GANModel(noise, labels, real, generated.outputs, real_call.outputs, fake_call.outputs,
                    generated, real_call, fake_call, fake)


def generator_model(parts: GANParts, noise, labels, mode=ModeKeys.PREDICT) -> GANModel:
    generated = parts.generator(noise, labels, mode)
    return GANModel(noise, labels, None, generated.outputs, None, None, generated, None, None)


def discriminator_model(parts: GANParts, samples, labels, mode=ModeKeys.PREDICT) -> GANModel:
    call = parts.discriminator(samples, labels, mode)
    return GANModel(None, labels, samples, None, call.outputs, None, None, call, None)


def loss_inputs(parts: GANParts, model: GANModel, mode, seed=None) -> losses_lib.DiscriminatorLossInputs:
    """What the discriminator loss of a forward pass gets (see `DiscriminatorLossInputs`)."""
    return losses_lib.DiscriminatorLossInputs(
        model.real_logits, model.fake_logits, model.real,
        model.fake if model.fake is not None else model.generated,
        lambda x: parts.discriminator(x, model.labels, mode).outputs, seed)


def gan_losses(parts: GANParts, model: GANModel, mode, seed=None) -> GANLosses:
    """Both losses of a forward pass: D's from both logits (and, for a gradient penalty, D
    itself), G's from the logits of its samples."""
    return GANLosses(parts.loss.discriminator_loss(loss_inputs(parts, model, mode, seed), parts.config.loss),
                     parts.loss.generator_loss(model.fake_logits, parts.config.loss))


def stateless_normal(shape, key) -> tf.Tensor:
    return tf.random.stateless_normal(shape, seed=key, alg="philox")


def fold(key, *data) -> tf.Tensor:
    """A new stateless key from `key` and integers (e.g. the step and the update)."""
    for value in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


# ---------------------------------------------------------------------------- training


class GANTrainOps(NamedTuple):
    """One `session.run` of training (see the module docstring).

    `losses`: of the run's last step. `global_step_after`: the global step the run ends at.
    `nonfinite_step`: the first step (1-based global step) of the run whose loss was NaN/inf, or
    -1; `nonfinite_losses` its losses. `steps_per_run`: a placeholder with the graph's default,
    to feed fewer steps. `refresh_statistics`: sets the EMA generator's batch-norm statistics
    for its current weights (None when there is nothing to refresh). `samples`: the sample
    picture's tensor, G in inference mode on fixed noise, after the refresh.
    """

    train_op: tf.Operation
    losses: GANLosses
    global_step_after: tf.Tensor
    nonfinite_step: tf.Tensor
    nonfinite_losses: GANLosses
    steps_per_run: tf.Tensor
    refresh_statistics: Optional[tf.Operation]
    samples: tf.Tensor


def step_counter(name: str) -> tf.Variable:
    """`generator_step` / `discriminator_step`: updates made to each network."""
    with v1.variable_scope(v1.VariableScope(reuse=v1.AUTO_REUSE, name="")):
        return v1.get_variable(
            name, shape=[], dtype=tf.int64, initializer=v1.zeros_initializer(), trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, use_resource=True)


def ema_variable(var) -> tf.Variable:
    """The moving-average shadow of a generator variable. Its initializer reuses the variable's
    initial-value tensor, so one initializer run gives both the same value."""
    with v1.variable_scope(v1.VariableScope(reuse=v1.AUTO_REUSE, name="")):
        # Under MirroredStrategy `var.op` is the current replica's component (`.../replica_1`).
        name = re.sub(r"/replica_\d+$", "", var.op.name)
        return v1.get_variable(f"{name}/{EMA_SUFFIX}", initializer=var.initial_value,
                               trainable=False, aggregation=tf.VariableAggregation.MEAN)


_OPTIMIZER_PREFIX = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSProp"}


def _optimizer(cfg, role_prefix: str, learning_rate):
    name = f"{role_prefix}_{_OPTIMIZER_PREFIX[cfg.name]}"
    if cfg.name == "adam":
        return v1.train.AdamOptimizer(learning_rate, beta1=cfg.beta1, beta2=cfg.beta2, name=name)
    if cfg.name == "rmsprop":
        return v1.train.RMSPropOptimizer(learning_rate, name=name)
    return v1.train.GradientDescentOptimizer(learning_rate, name=name)


def learning_rate(base: float, train, step) -> tf.Tensor:
    """`base`, decayed linearly from `train.lr_decay_start` of max_steps on to
    `train.lr_decay_final` times `base` at max_steps (constant without a decay start)."""
    if train.lr_decay_start is None:
        return tf.constant(base)
    begin = train.lr_decay_start * train.max_steps
    progress = tf.clip_by_value((tf.cast(step, tf.float32) - begin) / max(train.max_steps - begin, 1.0), 0.0, 1.0)
    return base * (1.0 - (1.0 - train.lr_decay_final) * progress)


def top_k_share(loss, train, step) -> tf.Tensor:
    """The share of fakes G's loss counts at `step` with `loss.top_k`: 1 at step 0, falling
    linearly to `loss.top_k` at `loss.top_k_anneal` of max_steps, then constant."""
    span = max(loss.top_k_anneal * train.max_steps, 1.0)
    progress = tf.clip_by_value(tf.cast(step, tf.float32) / span, 0.0, 1.0)
    return 1.0 - (1.0 - loss.top_k) * progress


class _Trainer:
    """Builds the updates of one graph with one pair of optimizers (see `gan_train_ops`)."""

    def __init__(self, parts: GANParts, key):
        self.parts = parts
        self.key = key
        train = parts.config.train
        self.step_tensor = None  # the global step of the update being built (see `step`)
        self.g_opt = _optimizer(train.generator_optimizer, "G", lambda: learning_rate(
            train.generator_optimizer.learning_rate, train, self.step_tensor))
        self.d_opt = _optimizer(train.discriminator_optimizer, "D", lambda: learning_rate(
            train.discriminator_optimizer.learning_rate, train, self.step_tensor))
        self.augmentations = augment_lib.policy(parts.model.augment)
        if self.augmentations and len(parts.model.sample_shape) != 3:
            raise ConfigError(f"model.augment applies to images; these samples have shape "
                              f"{list(parts.model.sample_shape)}")

    def _transform(self, key) -> Optional[Callable]:
        """The augmentation of D's inputs for an update with this key (None without)."""
        if not self.augmentations:
            return None
        return lambda images, stream: augment_lib.augment(images, self.augmentations, fold(key, 10, stream))

    @staticmethod
    def _apply(optimizer, loss, scope, counter, name_scope, update_ops=()):
        var_list = role_variables(scope)
        if not var_list:
            raise ValueError(f"{name_scope}: the network has no trainable variables")
        with tf.control_dependencies(list(update_ops)):
            grads_and_vars = optimizer.compute_gradients(loss, var_list=var_list)
        # Optimizer state (e.g. Adam's beta powers) is named after the enclosing name scope:
        # fix it per role so it never depends on which update a graph builds first.
        with v1.name_scope(name_scope + "/"):
            return optimizer.apply_gradients(grads_and_vars, global_step=step_counter(counter))

    def discriminator_update(self, real, labels, key) -> Tuple[tf.Operation, GANModel, tf.Tensor]:
        """One D update on fresh fakes; returns the op, the forward pass (whose `generated`
        batch a G update may reuse) and the loss. Power iterations advance after it."""
        batch = tf.shape(real)[0]
        noise = stateless_normal([batch, self.parts.model.z_dim], fold(key, 0))
        model = gan_model(self.parts, real, labels, ModeKeys.TRAIN, noise, self._transform(key))
        inputs = loss_inputs(self.parts, model, ModeKeys.TRAIN, fold(key, 1))
        d_loss = self.parts.loss.discriminator_loss(inputs, self.parts.config.loss)
        d_loss = tf.identity(d_loss + self._r1(inputs) + self._info(model.fake_call, noise),
                             name="discriminator_loss")
        op = self._apply(self.d_opt, d_loss, DISCRIMINATOR, DISCRIMINATOR_STEP, "D_train",
                         model.real_call.update_ops + model.fake_call.update_ops)
        pairs = model.real_call.power_iterations
        if pairs:
            # After the update: every read of `u` in this update (all feed its gradients) is done.
            with tf.control_dependencies([op]):
                op = tf.group([v1.assign(u, u_new) for u, u_new in pairs])
        return op, model, d_loss

    def _info(self, fake_call: NetworkOutput, noise) -> tf.Tensor:
        """`loss.info_weight` times D's code cross-entropy on the fakes of `noise` (InfoGAN); 0
        without codes."""
        codes = self.parts.model.latent_codes
        if not codes:
            return tf.constant(0.0)
        return self.parts.config.loss.info_weight * info.code_loss(fake_call.code_logits, noise, codes)

    def _top_k(self, fake_logits) -> tf.Tensor:
        """The logits G's loss counts: all, or with `loss.top_k` the share D scores most real."""
        loss = self.parts.config.loss
        if loss.top_k is None:
            return fake_logits
        return losses_lib.top_k_logits(fake_logits, top_k_share(loss, self.parts.config.train, self.step_tensor))

    def _r1(self, inputs) -> tf.Tensor:
        """gamma/2 R1, every `loss.r1_every`-th step only (times that factor); 0 without."""
        cfg = self.parts.config.loss
        if cfg.r1_weight <= 0:
            return tf.constant(0.0)
        term = lambda: 0.5 * cfg.r1_weight * cfg.r1_every * losses_lib.r1_penalty(inputs)  # noqa: E731
        if cfg.r1_every == 1:
            return term()
        return tf.cond(tf.equal(self.step_tensor % cfg.r1_every, 0), term, lambda: tf.constant(0.0))

    def generator_update(self, batch, labels, key, reuse: Optional[GANModel] = None):
        """One G update through D: G's own variables (and batch-norm statistics) only. With
        `reuse`, the generated batch (and its forward activations) of a D update whose G weights
        are still current stands in for a new G forward."""
        if reuse is None:
            noise = stateless_normal([batch, self.parts.model.z_dim], fold(key, 0))
            generated = self.parts.generator(noise, labels, ModeKeys.TRAIN)
        else:
            noise, generated = reuse.noise, reuse.generator_call
        transform = self._transform(key)
        fake = generated.outputs if transform is None else transform(generated.outputs, 2)
        fake_call = self.parts.discriminator(fake, labels, ModeKeys.TRAIN)
        g_loss = self.parts.loss.generator_loss(self._top_k(fake_call.outputs), self.parts.config.loss)
        g_loss = tf.identity(g_loss + self._info(fake_call, noise), name="generator_loss")
        op = self._apply(self.g_opt, g_loss, GENERATOR, GENERATOR_STEP, "G_train",
                         generated.update_ops)
        per_step = tf.distribute.has_strategy() or not refreshable(generated)
        return self._update_ema(op, batch, labels, key, per_step), g_loss

    def _update_ema(self, after, batch, labels, key, statistics_per_step: bool):
        """Once `after` (a G update) has run, move every shadow towards its G variable. With
        `statistics_per_step` (a distribution strategy, whose replicas cannot run a refresh
        outside the train op, or a generator whose batch norm is not `layers.batch_norm`),
        the EMA generator's batch-norm statistics are also updated here, on a fresh batch."""
        decay = self.parts.ema_decay
        if decay is None:
            return after
        with tf.control_dependencies([after]):
            n = tf.cast(step_counter(GENERATOR_STEP).read_value(), tf.float32)
            rate = 1.0 - tf.minimum(decay, (1.0 + n) / (10.0 + n))
            updates = []
            for var in role_variables(GENERATOR):
                shadow = ema_variable(var)
                updates.append(v1.assign_sub(shadow, (shadow - var.read_value()) * rate))
        if statistics_per_step:
            with tf.control_dependencies(updates):
                noise = stateless_normal([batch, self.parts.model.z_dim], fold(key, 3))
                updates += list(self.parts.generator(noise, labels, ModeKeys.TRAIN, use_ema=True).update_ops)
        return tf.group(updates)

    def step(self, batches, labels, d_steps: int, g_steps: int, step) -> Tuple[tf.Operation, GANLosses]:
        """One global step: `d_steps` D updates, then `g_steps` G updates, chained; a side with
        zero updates is still built, unrun, so the graph holds its optimizer state."""
        key = fold(self.key, step)
        self.step_tensor = step
        reuse_fakes = self.parts.config.train.reuse_fakes
        dependency: List = []
        d_loss = g_loss = model = None
        for i in range(max(d_steps, 1)):
            with tf.control_dependencies(dependency if d_steps else []):
                op, model, loss = self.discriminator_update(batches[i], _at(labels, i), fold(key, 1, i))
            if d_steps:
                dependency, d_loss = [op], loss
        last_labels = _at(labels, max(d_steps, 1) - 1)
        batch = tf.shape(batches[max(d_steps, 1) - 1])[0]
        for j in range(max(g_steps, 1)):
            reuse = model if (j == 0 and d_steps and reuse_fakes) else None
            with tf.control_dependencies(dependency if g_steps else []):
                op, loss = self.generator_update(batch, last_labels, fold(key, 2, j), reuse)
            if g_steps:
                dependency, g_loss = [op], loss
        with tf.control_dependencies(dependency):
            increment = v1.assign_add(v1.train.get_global_step(), 1).op
        return increment, GANLosses(d_loss, g_loss)


def _at(labels, i):
    return None if labels is None else labels[i]


def run_key(config, worker: int = 0) -> tf.Tensor:
    """The stateless key of a training process: (train.seed, worker)."""
    seed = config.train.seed if config.train.seed is not None else 0
    return tf.constant([seed, worker], tf.int64)


def _nonfinite(losses: GANLosses) -> tf.Tensor:
    values = [v for v in losses if v is not None]
    return tf.logical_not(tf.reduce_all(tf.math.is_finite(tf.stack(values)))) if values else tf.constant(False)


def _zero_if_none(value):
    return tf.constant(0.0) if value is None else value


def gan_train_ops(parts: GANParts, features, labels, d_steps: int, g_steps: int,
                  steps_per_run: int = 1, worker: int = 0) -> GANTrainOps:
    """The training of one `session.run`: `features` is `[steps_per_run, max(d_steps, 1), B,
    ...]` (and `labels` the matching `[..., B]` or None); feed `steps_per_run` (a
    placeholder with that default) to make fewer steps, e.g. the last run before max_steps."""
    expected = list(parts.model.sample_shape)
    if not features.shape[3:].is_compatible_with(expected):
        raise ConfigError(f"the input_fn yields examples of shape {features.shape.as_list()[3:]} "
                          f"but model.sample_shape is {expected}: set model.sample_shape to match")
    trainer = _Trainer(parts, run_key(parts.config, worker))
    global_step = v1.train.get_global_step()
    start = tf.identity(global_step.read_value())
    steps = v1.placeholder_with_default(tf.constant(steps_per_run, tf.int64), [], name="steps_per_run")
    first_op, first = trainer.step(features[0], _at(labels, 0), d_steps, g_steps, start)
    bad = tf.where(_nonfinite(first), start + 1, tf.constant(-1, tf.int64))
    state = (tf.constant(1, tf.int64), _zero_if_none(first.discriminator), _zero_if_none(first.generator),
             bad, _zero_if_none(first.discriminator), _zero_if_none(first.generator))
    if steps_per_run > 1:
        def body(i, d, g, bad, bad_d, bad_g):
            op, step_losses = trainer.step(features[i], _at(labels, i), d_steps, g_steps, start + i)
            with tf.control_dependencies([op]):
                d_new, g_new = (tf.identity(_zero_if_none(v)) for v in step_losses)
                first_bad = tf.logical_and(bad < 0, _nonfinite(step_losses))
                bad_new = tf.where(first_bad, start + i + 1, bad)
                return (i + 1, d_new, g_new, bad_new,
                        tf.where(first_bad, d_new, bad_d), tf.where(first_bad, g_new, bad_g))

        with tf.control_dependencies([first_op]):
            state = tf.while_loop(lambda i, *_: i < steps, body, state, parallel_iterations=1,
                                  maximum_iterations=steps_per_run)
        train_op = tf.group(state)
    else:
        train_op = first_op
    done, d_last, g_last, bad, bad_d, bad_g = state
    keep = GANLosses(d_last if d_steps else None, g_last if g_steps else None)
    refresh = None if tf.distribute.has_strategy() else refresh_statistics(parts, trainer.key)
    return GANTrainOps(train_op, keep, start + done, bad,
                       GANLosses(bad_d if d_steps else None, bad_g if g_steps else None),
                       steps, refresh, sample_grid(parts, refresh))


def refreshable(call: NetworkOutput) -> bool:
    """Whether every batch-norm update of a generator call comes from `layers.batch_norm`
    (two updates per layer, whose batch moments it reports), so its statistics can be
    recomputed at once instead of tracked per step."""
    return len(call.update_ops) == 2 * len(call.batch_norm)


def activation_bytes(parts: GANParts) -> int:
    """Bytes per sample of every tensor a TRAIN-mode call of the EMA generator computes from its
    noise (built in a throwaway graph): more than the call's peak memory, which frees tensors
    as it goes, and proportional to it."""
    model = parts.model
    with tf.Graph().as_default():
        noise = tf.zeros([2, model.z_dim])
        parts.generator(noise, tf.zeros([2], tf.int32) if model.conditional else None,
                        ModeKeys.TRAIN, use_ema=True)
        reached, frontier = set(), [noise.op]
        while frontier:
            for tensor in frontier.pop().outputs:
                for op in tensor.consumers():
                    if op not in reached:
                        reached.add(op)
                        frontier.append(op)
        return sum(t.shape.num_elements() * t.dtype.size for op in reached for t in op.outputs
                   if t.dtype.is_floating and t.shape.is_fully_defined()) // 2


def refresh_chunk(parts: GANParts) -> int:
    """Samples per generator call of the statistics refresh: `REFRESH_BATCH`, halved until the
    call's activations fit `REFRESH_CHUNK_BYTES` (large generators, e.g. the 64-128 px residual
    ones, would need several GiB for 1024 samples at once)."""
    chunk, per_sample = REFRESH_BATCH, max(activation_bytes(parts), 1)
    while chunk > 1 and chunk * per_sample > REFRESH_CHUNK_BYTES:
        chunk //= 2
    return chunk


def refresh_statistics(parts: GANParts, key) -> Optional[tf.Operation]:
    """An op that sets the EMA generator's batch-norm statistics to the batch moments of the
    current EMA weights on `REFRESH_BATCH` noise samples; None without EMA, without batch norm,
    or when they are tracked per step instead (see `refreshable`).

    A generator too large for one call on all of them (`refresh_chunk`) runs on chunks in an
    in-graph loop; each layer then gets the mean of the chunks' means and their pooled variance,
    as standing statistics are computed for an export."""
    if parts.ema_decay is None:
        return None
    model = parts.model
    chunk = refresh_chunk(parts)
    labels = (tf.constant(sampling.labels_in_turn(REFRESH_BATCH, model.num_classes))
              if model.conditional else None)

    def moments(i):
        noise = stateless_normal([chunk, model.z_dim], fold(key, -1) if chunk == REFRESH_BATCH
                                 else fold(key, -1, i))
        part = None if labels is None else labels[i * chunk:(i + 1) * chunk]
        return parts.generator(noise, part, ModeKeys.TRAIN, use_ema=True)

    call = moments(0)  # outside the loop: it may create the EMA statistics' variables
    if not call.batch_norm or not refreshable(call):
        return None
    values = [(mean, variance) for _, _, mean, variance in call.batch_norm]
    if chunk < REFRESH_BATCH:
        def body(i, sums):
            new = moments(i).batch_norm
            return i + 1, [(m + mean, s + variance + tf.square(mean))
                           for (m, s), (_, _, mean, variance) in zip(sums, new)]

        count = REFRESH_BATCH // chunk
        first = [(mean, variance + tf.square(mean)) for mean, variance in values]
        _, sums = tf.while_loop(lambda i, _: i < count, body, (tf.constant(1), first),
                                parallel_iterations=1)
        values = [(m / count, tf.maximum(s / count - tf.square(m / count), 0.0)) for m, s in sums]
    return tf.group([v1.assign(var, value) for (moving_mean, moving_var, _, _), (mean, variance)
                     in zip(call.batch_norm, values)
                     for var, value in ((moving_mean, mean), (moving_var, variance))],
                    name="refresh_ema_statistics")


def sample_grid(parts: GANParts, after: Optional[tf.Operation] = None) -> tf.Tensor:
    """G in inference mode on fixed noise, for the sample pictures: `train.sample_grid`
    squared images (1024 points for 2D data), after `after` (the statistics refresh)."""
    model = parts.model
    count = 1024 if len(model.sample_shape) == 1 else parts.config.train.sample_grid ** 2
    noise = tf.constant(sampling.noise(count, model.z_dim, SAMPLE_NOISE_SEED))
    labels = tf.constant(sampling.labels_in_turn(count, model.num_classes)) if model.conditional else None
    with tf.control_dependencies([after] if after is not None else []):
        return generator_model(parts, noise, labels).generated

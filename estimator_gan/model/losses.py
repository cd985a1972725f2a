"""GAN losses, chosen by name from one registry.

A loss is a pair of functions:

    discriminator_loss(inputs: DiscriminatorLossInputs, config: LossConfig) -> scalar
    generator_loss(fake_logits, config: LossConfig) -> scalar

The discriminator side gets both logits, both batches and the discriminator itself (a callable
from samples to logits, with the same weights), which a gradient penalty needs. The generator
side gets only the logits of its fakes, so a G update never evaluates D on real data.
Register your own with `register_loss(name, discriminator_loss, generator_loss)`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional

import tensorflow as tf

from estimator_gan.errors import ConfigError
from estimator_gan.model import custom


class DiscriminatorLossInputs(NamedTuple):
    """What a discriminator loss gets: logits `[B]` on real and fake batches, the batches,
    `discriminator(samples) -> logits`, D with the same weights (e.g. for a gradient penalty),
    and `seed`, an int64 `[2]` key for stateless random ops (`tf.random.stateless_*`), unique
    to this update: randomness drawn from it is the same when a run is resumed."""

    real_logits: tf.Tensor
    fake_logits: tf.Tensor
    real: tf.Tensor
    fake: tf.Tensor
    discriminator: Callable[[tf.Tensor], tf.Tensor]
    seed: Optional[tf.Tensor] = None


class GANLoss(NamedTuple):
    """A named pair `(discriminator_loss, generator_loss)`; see the module docstring."""

    name: str
    discriminator_loss: Callable[[DiscriminatorLossInputs, object], tf.Tensor]
    generator_loss: Callable[[tf.Tensor, object], tf.Tensor]


_REGISTRY: Dict[str, GANLoss] = {}


def register_loss(name: str, discriminator_loss, generator_loss, overwrite: bool = False) -> GANLoss:
    """Add a loss to the registry so that configs and `GAN(loss=name)` can name it.

    `discriminator_loss(inputs: DiscriminatorLossInputs, config: LossConfig) -> scalar` and
    `generator_loss(fake_logits, config: LossConfig) -> scalar`; returns the `GANLoss`.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered")
    custom.check_callable(discriminator_loss, 2, f"loss {name!r}: discriminator_loss",
                          "discriminator_loss(inputs, config) -> scalar")
    custom.check_callable(generator_loss, 2, f"loss {name!r}: generator_loss",
                          "generator_loss(fake_logits, config) -> scalar")
    _REGISTRY[name] = GANLoss(name, discriminator_loss, generator_loss)
    return _REGISTRY[name]


def registered_losses() -> List[str]:
    """The names `loss.name` accepts (besides import paths), sorted."""
    return sorted(_REGISTRY)


def get_loss(name: str) -> GANLoss:
    """The registered loss called `name`; ValueError listing the choices when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(registered_losses())}") from None


def as_loss(loss) -> GANLoss:
    """A `GANLoss` from any way of naming one: a registered name, an import path
    `"package.module:name"` (of a GANLoss or a pair), a `GANLoss`, or a pair of callables
    `(discriminator_loss, generator_loss)`. Signatures are checked here, with an error that
    names the loss."""
    what, error = "loss", TypeError
    if isinstance(loss, str):
        if ":" not in loss:
            return get_loss(loss)
        what, error = f"loss {loss!r}", ConfigError
        loss = custom.resolve(loss, "loss.name")
    if isinstance(loss, GANLoss):
        name, pair = loss.name, (loss.discriminator_loss, loss.generator_loss)
    elif isinstance(loss, (tuple, list)) and len(loss) == 2:
        name, pair = "custom", tuple(loss)
    else:
        raise error(f"{what} must be a registered name, a GANLoss or a pair "
                    f"(discriminator_loss, generator_loss); got {type(loss).__name__}")
    custom.check_callable(pair[0], 2, f"{what}: discriminator_loss",
                          "discriminator_loss(inputs: DiscriminatorLossInputs, config) -> scalar", error)
    custom.check_callable(pair[1], 2, f"{what}: generator_loss",
                          "generator_loss(fake_logits, config) -> scalar", error)
    return GANLoss(name, *pair)


def top_k_logits(fake_logits: tf.Tensor, share) -> tf.Tensor:
    """The `share` (a float tensor in (0, 1]) of `fake_logits` that D scores most real, at
    least one: what a top-k generator loss sees (gradients reach only those fakes)."""
    flat = tf.reshape(fake_logits, [-1])
    count = tf.cast(tf.size(flat), tf.float32)
    k = tf.maximum(tf.cast(tf.math.ceil(share * count - 1e-4), tf.int32), 1)
    return tf.math.top_k(flat, k=k, sorted=False).values


def _mean(x):
    return tf.reduce_mean(x)


def _cross_entropy_d(inputs, config):
    return _mean(tf.nn.softplus(-inputs.real_logits)) + _mean(tf.nn.softplus(inputs.fake_logits))


def gradient_penalty(inputs: DiscriminatorLossInputs) -> tf.Tensor:
    """WGAN-GP: E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates of real and fake."""
    real, fake = inputs.real, tf.stop_gradient(inputs.fake)
    eps_shape = [tf.shape(real)[0]] + [1] * (real.shape.rank - 1)
    if inputs.seed is None:
        eps = tf.random.uniform(eps_shape, 0.0, 1.0)
    else:
        eps = tf.random.stateless_uniform(eps_shape, seed=inputs.seed)
    interpolates = real + eps * (fake - real)
    logits = inputs.discriminator(interpolates)
    grads = tf.gradients(tf.reduce_sum(logits), [interpolates])[0]
    norms = tf.sqrt(tf.reduce_sum(tf.reshape(tf.square(grads), [tf.shape(grads)[0], -1]), axis=1) + 1e-12)
    return _mean(tf.square(norms - 1.0))


def r1_penalty(inputs: DiscriminatorLossInputs) -> tf.Tensor:
    """R1 (Mescheder et al., 2018): E[||grad_x D(x)||^2] on the real batch D judged (half of it
    times gamma is the penalty)."""
    grads = tf.gradients(tf.reduce_sum(inputs.real_logits), [inputs.real])[0]
    return _mean(tf.reduce_sum(tf.reshape(tf.square(grads), [tf.shape(grads)[0], -1]), axis=1))


FORWARD_KL_MAX_LOGIT = 5.0


def _forward_kl_g(fake_logits, config):
    """f-GAN's forward KL(p_data || p_g) for G, with the cross-entropy D: D's logit on a fake
    estimates log(p_data / p_g), so G maximises E[exp(logit)]. Each fake's gradient is weighted
    exp(logit) (minimax: sigmoid(logit), non-saturating: sigmoid(-logit)), so the fakes D finds
    under-drawn pull hardest: mass-covering, where the non-saturating loss is mode-seeking. The
    logit is capped at `FORWARD_KL_MAX_LOGIT` (weights up to e^5; a fake past it gets none) so
    one fake cannot own an update."""
    return -_mean(tf.exp(tf.minimum(fake_logits, FORWARD_KL_MAX_LOGIT)))


def _wasserstein_d(inputs, config):
    loss = _mean(inputs.fake_logits) - _mean(inputs.real_logits)
    if config.gradient_penalty_weight > 0:
        loss += config.gradient_penalty_weight * gradient_penalty(inputs)
    return loss


register_loss(
    "non_saturating", _cross_entropy_d,
    lambda fake_logits, config: _mean(tf.nn.softplus(-fake_logits)))
register_loss(
    "minimax", _cross_entropy_d,
    lambda fake_logits, config: -_mean(tf.nn.softplus(fake_logits)))
register_loss(
    "forward_kl", _cross_entropy_d, _forward_kl_g)
register_loss(
    "wasserstein", _wasserstein_d,
    lambda fake_logits, config: -_mean(fake_logits))
register_loss(
    "hinge",
    lambda i, config: _mean(tf.nn.relu(1.0 - i.real_logits)) + _mean(tf.nn.relu(1.0 + i.fake_logits)),
    lambda fake_logits, config: -_mean(fake_logits))
register_loss(
    "least_squares",
    lambda i, config: 0.5 * (_mean(tf.square(i.real_logits - 1.0)) + _mean(tf.square(i.fake_logits))),
    lambda fake_logits, config: 0.5 * _mean(tf.square(fake_logits - 1.0)))

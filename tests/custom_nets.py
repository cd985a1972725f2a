"""User-style networks and losses for test_api.py, importable as `custom_nets:<name>` (pytest puts
tests/ on sys.path). Sized for tiny_config(): 8x8x1 images, z_dim 8. Both pairs use batch norm
in G *and* in D, so the tests see each role's BN updates run only in its own update."""
import tensorflow as tf

import estimator_gan as eg

v1 = tf.compat.v1
TRAIN = tf.estimator.ModeKeys.TRAIN


def v1_generator(noise, labels, mode, params):
    x = v1.layers.dense(noise, 4 * 4 * 8)
    x = tf.nn.relu(v1.layers.batch_normalization(x, training=mode == TRAIN))
    x = tf.reshape(x, [-1, 4, 4, 8])
    return tf.tanh(v1.layers.conv2d_transpose(x, 1, 4, strides=2, padding="same"))


def v1_discriminator(samples, labels, mode, params):
    x = v1.layers.conv2d(samples, 4, 4, strides=2, padding="same")
    x = tf.nn.leaky_relu(v1.layers.batch_normalization(x, training=mode == TRAIN), 0.2)
    return v1.layers.dense(v1.layers.flatten(x), 1)


def _keras_generator():
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.Dense(4 * 4 * 8), layers.BatchNormalization(), layers.ReLU(),
        layers.Reshape((4, 4, 8)),
        layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh")])


def _keras_discriminator(params):
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.Conv2D(4, 4, strides=2, padding="same"), layers.BatchNormalization(),
        layers.LeakyReLU(0.2), layers.Flatten(), layers.Dense(1)])


keras_generator = eg.keras_network(_keras_generator)
keras_discriminator = eg.keras_network(_keras_discriminator)


def _conditional_keras_generator(params):
    noise = tf.keras.Input([params["config"].model.z_dim])
    label = tf.keras.Input([], dtype="int32")
    x = tf.keras.layers.Concatenate()([noise, tf.keras.layers.Embedding(10, 4)(label)])
    x = tf.keras.layers.Dense(8 * 8, activation="tanh")(x)
    return tf.keras.Model([noise, label], tf.keras.layers.Reshape((8, 8, 1))(x))


conditional_keras_generator = eg.keras_network(_conditional_keras_generator)


def raw_keras_discriminator(samples, labels, mode, params):
    """The pitfall: Keras layers made on every call do not share weights."""
    x = tf.keras.layers.Flatten()(samples)
    return tf.keras.layers.Dense(1)(x)


def wrong_shape_generator(noise, labels, mode, params):
    return tf.reshape(v1.layers.dense(noise, 16), [-1, 4, 4, 1])


def wrong_signature(noise, mode):
    return noise


def frozen_discriminator_loss(inputs, config):
    """A loss whose D gradient is zero: D must not move."""
    return 0.0 * tf.reduce_mean(inputs.real_logits) + 0.0 * tf.reduce_mean(inputs.fake_logits)


def plain_generator_loss(fake_logits, config):
    return tf.reduce_mean(tf.nn.softplus(-fake_logits))


frozen_d_loss = eg.GANLoss("frozen_d", frozen_discriminator_loss, plain_generator_loss)

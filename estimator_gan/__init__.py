"""estimator-gan: GANs on TensorFlow Estimators, with the generator exported for serving.

Names are loaded on first use, so that `import estimator_gan.cli` does not import TensorFlow
before the command line has set its logging options.
"""
import importlib as _importlib
import sys as _sys

if not ((3, 9) <= _sys.version_info[:2] < (3, 12)):
    raise ImportError(
        f"estimator-gan needs Python >=3.9,<3.12 (TensorFlow 2.15 with tf.estimator); "
        f"this is Python {_sys.version.split()[0]}")

__version__ = "0.2.0"

_EXPORTS = {
    "GAN": "estimator_gan.gan",
    "Config": "estimator_gan.config",
    "load_config": "estimator_gan.config",
    # errors
    "Error": "estimator_gan.errors",
    "ConfigError": "estimator_gan.errors",
    "DataError": "estimator_gan.errors",
    "NetworkError": "estimator_gan.errors",
    "ExportError": "estimator_gan.errors",
    # networks
    "dcgan_generator": "estimator_gan.model.networks",
    "dcgan_discriminator": "estimator_gan.model.networks",
    "mlp_generator": "estimator_gan.model.networks",
    "mlp_discriminator": "estimator_gan.model.networks",
    "keras_network": "estimator_gan.model.custom",
    # losses
    "register_loss": "estimator_gan.model.losses",
    "get_loss": "estimator_gan.model.losses",
    "registered_losses": "estimator_gan.model.losses",
    "GANLoss": "estimator_gan.model.losses",
    "DiscriminatorLossInputs": "estimator_gan.model.losses",
    "gradient_penalty": "estimator_gan.model.losses",
    # data
    "make_input_fn": "estimator_gan.data.pipeline",
    "digits_input_fn": "estimator_gan.input_fns",
    "mixture_input_fn": "estimator_gan.input_fns",
    "mnist_input_fn": "estimator_gan.input_fns",
    "stacked_mnist_input_fn": "estimator_gan.input_fns",
    "images_input_fn": "estimator_gan.input_fns",
    "tfrecord_input_fn": "estimator_gan.input_fns",
    "npy_input_fn": "estimator_gan.input_fns",
    "tfds_input_fn": "estimator_gan.input_fns",
    # serving
    "noise_receiver_fn": "estimator_gan.model.signatures",
    "generator_receiver_fn": "estimator_gan.model.signatures",
    "discriminator_receiver_fn": "estimator_gan.model.signatures",
    "load_generator": "estimator_gan.serving.saved_model",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'estimator_gan' has no attribute {name!r}")


def __dir__():
    return __all__

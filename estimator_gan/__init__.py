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

__version__ = "0.1.0"

_EXPORTS = {
    "GAN": "estimator_gan.training",
    "Config": "estimator_gan.config",
    "ConfigError": "estimator_gan.config",
    "load_config": "estimator_gan.config",
    # networks
    "dcgan_generator": "estimator_gan.nets",
    "dcgan_discriminator": "estimator_gan.nets",
    "mlp_generator": "estimator_gan.nets",
    "mlp_discriminator": "estimator_gan.nets",
    "keras_network": "estimator_gan.custom",
    "NetworkError": "estimator_gan.custom",
    # losses
    "register_loss": "estimator_gan.losses",
    "get_loss": "estimator_gan.losses",
    "registered_losses": "estimator_gan.losses",
    "GANLoss": "estimator_gan.losses",
    "DiscriminatorLossInputs": "estimator_gan.losses",
    "gradient_penalty": "estimator_gan.losses",
    # data
    "make_input_fn": "estimator_gan.data",
    "DataError": "estimator_gan.data",
    "digits_input_fn": "estimator_gan.inputs",
    "mixture_input_fn": "estimator_gan.inputs",
    "mnist_input_fn": "estimator_gan.inputs",
    "images_input_fn": "estimator_gan.inputs",
    "tfrecord_input_fn": "estimator_gan.inputs",
    "npy_input_fn": "estimator_gan.inputs",
    # serving
    "noise_receiver_fn": "estimator_gan.export",
    "generator_receiver_fn": "estimator_gan.export",
    "discriminator_receiver_fn": "estimator_gan.export",
    "load_generator": "estimator_gan.export",
    "ExportError": "estimator_gan.export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'estimator_gan' has no attribute {name!r}")


def __dir__():
    return __all__

"""estimator-gan: GANs on TensorFlow Estimators, with the generator exported for serving."""
import sys as _sys

if not ((3, 9) <= _sys.version_info[:2] < (3, 12)):
    raise ImportError(
        f"estimator-gan needs Python >=3.9,<3.12 (TensorFlow 2.15 with tf.estimator); "
        f"this is Python {_sys.version.split()[0]}")

from estimator_gan.config import Config, ConfigError, load_config  # noqa: E402
from estimator_gan.training import GAN  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GAN", "Config", "ConfigError", "load_config", "__version__"]

"""estimator-gan: GANs trained on TensorFlow Estimators, exported for serving."""
import sys

from setuptools import find_packages, setup

if not ((3, 9) <= sys.version_info[:2] < (3, 12)):
    sys.exit(
        "estimator-gan needs Python >=3.9,<3.12 (TensorFlow 2.15 with tf.estimator); "
        f"this is Python {sys.version.split()[0]}."
    )

setup(
    name="estimator-gan",
    version="0.1.0",
    description="Train GANs on tf.estimator and export the generator for TensorFlow Serving.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["estimator_gan", "estimator_gan.*"]),
    package_data={"estimator_gan": ["configs/*.yaml"]},
    python_requires=">=3.9,<3.12",
    install_requires=[
        "tensorflow==2.15.*",
        "tensorflow-estimator==2.15.*",
        "numpy>=1.23,<2",
        "pyyaml>=6",
        "pydantic>=2.5,<3",
        "scikit-learn>=1.2",
        "pillow>=9",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2.1"]},
    entry_points={"console_scripts": ["estimator-gan=estimator_gan.cli:main"]},
)

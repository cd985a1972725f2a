"""Train a GAN: `python run_train.py [--config FILE] [--set key=value ...] [--model-dir DIR]`.

A thin entry point; the same as `estimator-gan train`. See README.md.
"""
import sys

if not ((3, 9) <= sys.version_info[:2] < (3, 12)):
    sys.exit(f"estimator-gan needs Python >=3.9,<3.12 (TensorFlow 2.15); this is {sys.version.split()[0]}")

from estimator_gan.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())

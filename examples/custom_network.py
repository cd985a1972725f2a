"""Your own generator and discriminator (Keras layers with batch norm) trained on MNIST.

    python examples/custom_network.py --steps 2000 --model-dir runs/custom_mnist

Reads MNIST from --data (a folder of IDX files or an mnist.npz) or, without it, from Keras' cache
~/.keras/datasets/mnist.npz (fetched once when online), trains with the orchestrated loop, and
writes 16 samples to <model-dir>/generated.png.
"""
import argparse
import os

import numpy as np
import tensorflow as tf
from PIL import Image

import estimator_gan as eg

layers = tf.keras.layers


def build_generator(params):
    """noise [B, z_dim] -> images [B, 28, 28, 1] in [-1, 1]."""
    return tf.keras.Sequential([
        layers.Dense(7 * 7 * 64, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Reshape((7, 7, 64)),
        layers.Conv2DTranspose(32, 4, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh"),
    ])


def build_discriminator(params):
    """images -> logits [B, 1] (the model_fns accept [B] or [B, 1])."""
    return tf.keras.Sequential([
        layers.Conv2D(32, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Conv2D(64, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Flatten(), layers.Dense(1),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MNIST IDX folder or mnist.npz (default: Keras' cache)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--model-dir", default=os.path.join("runs", "custom_mnist"))
    args = parser.parse_args()

    config = eg.load_config("mnist_dcgan",
                            ([f"data.path={args.data}"] if args.data else [])
                            + [f"train.max_steps={args.steps}",
                             "train.max_minutes=null", "model.conditional=false",
                             # Keras networks: no generator EMA (see eg.keras_network), and no
                             # in-training metrics (their eager Keras classifier cannot share a
                             # process with graph-mode Keras models): run `estimator-gan evaluate`.
                             "model.generator.ema_decay=null", "eval.every_checkpoints=0"])
    gan = eg.GAN(config, model_dir=args.model_dir,
                 generator_fn=eg.keras_network(build_generator),
                 discriminator_fn=eg.keras_network(build_discriminator))
    step = gan.train(input_fn=eg.mnist_input_fn(args.data, batch_size=64))

    samples = gan.generate(16, seed=0)                       # [16, 28, 28, 1] in [-1, 1]
    grid = samples.reshape(4, 4, 28, 28).transpose(0, 2, 1, 3).reshape(4 * 28, 4 * 28)
    path = os.path.join(args.model_dir, "generated.png")
    Image.fromarray(np.uint8(np.round((grid + 1) * 127.5))).save(path)
    print(f"done: step {step}; samples: {path}")


if __name__ == "__main__":
    main()

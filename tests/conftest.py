"""Shared fixtures: tiny configs and in-memory input functions, on real TensorFlow."""
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from estimator_gan import config as config_lib  # noqa: E402

tf.get_logger().setLevel(logging.ERROR)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")


def checkpoint_values(path):
    """Every tensor of the checkpoint at `path` (a prefix), by name; raises if one does not read."""
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def newest_complete_step(model_dir):
    """The step a run resumes from: the newest checkpoint on disk whose every tensor reads,
    whatever the state file says (a kill between a save and the state file's update leaves it
    one save behind, several steps with several steps per run call). 0 if there is none."""
    for index in sorted(glob.glob(os.path.join(model_dir, "model.ckpt-*.index")),
                        key=lambda p: -int(p.split("-")[-1].split(".")[0])):
        try:
            return int(checkpoint_values(index[:-len(".index")])["global_step"])
        except Exception:  # noqa: BLE001 - a save cut short by a kill
            continue
    return 0


def tiny_config(*overrides, architecture="dcgan"):
    """A config small enough to build and train in well under a second per step."""
    base = [
        f"model.architecture={architecture}",
        "model.z_dim=8",
        "model.generator.filters=4",
        "model.discriminator.filters=4",
        "model.generator.hidden_units=[16]",
        "model.discriminator.hidden_units=[16]",
        "data.batch_size=8",
        "train.max_steps=4",
        "train.save_checkpoints_steps=2",
        "train.log_every_steps=2",
        "train.sample_grid=2",
    ]
    if architecture == "dcgan":
        base.append("model.sample_shape=[8,8,1]")
    else:
        base += ["model.sample_shape=[2]", "data.source=mixture2d"]
    return config_lib.load_config(None, base + list(overrides))


def array_input_fn(array, labels=None, batch_size=8, repeat=True):
    def input_fn(input_context=None):
        ds = tf.data.Dataset.from_tensor_slices(array if labels is None else (array, labels))
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size, drop_remainder=True)

    return input_fn


def tiny_images(n=64, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32)


@pytest.fixture
def images():
    return tiny_images()

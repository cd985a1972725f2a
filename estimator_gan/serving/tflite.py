"""TFLite conversion of a generator export's `noise` signature (built-in TFLite ops only)."""
from __future__ import annotations

import contextlib
import os
import sys

import tensorflow as tf

from estimator_gan import fileio
from estimator_gan.serving import saved_model

TFLITE_FILENAME = "generator.tflite"


@contextlib.contextmanager
def _native_output_silenced():
    """Drop what C++ code prints straight to the process's stdout/stderr (the TFLite
    converter's op summary); errors still arrive as exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def to_tflite(saved_model_dir: str, output_path: str) -> str:
    """Convert the generator export's `noise` signature to TFLite: a `serving_default`
    signature from `noise` (and `labels`) to `samples` and, for images, uint8 `images`; PNG
    encoding is left to the server. Written atomically."""
    signature = saved_model.signature_defs(saved_model_dir)["noise"]
    names = sorted(signature.inputs)
    fetches = {k: signature.outputs[k].name for k in ("samples", "images") if k in signature.outputs}
    model = tf.saved_model.load(saved_model_dir)
    pruned = model.prune([signature.inputs[k].name for k in names], fetches)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=k) for k, t in zip(names, pruned.inputs)]

    @tf.function(input_signature=specs)
    def serve(*args):
        return pruned(*args)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    with _native_output_silenced():
        flatbuffer = converter.convert()
    return fileio.atomic_write(output_path, flatbuffer)

"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests` in every SavedModel
the project exports.

TensorFlow Serving replays this file when it loads a version, before it marks the version
available, so the lazy initialisation of the graph (kernels, memory, the PNG encoder) happens
then and not on a client's first request. The file is a TFRecord of
`tensorflow.serving.PredictionLog` protos (package `tensorflow-serving-api`): one
`predict_log.request` per signature of the SavedModel, naming the signature and feeding each of
its inputs the small valid value of `model.signatures.example_inputs`. TF Serving reads at most
1,000 records; an export has one per signature.

What a caller must know: `write` reads the signatures from the SavedModel itself, so the
requests always match what was exported; it is called on the staged SavedModel before the
export publishes it (see `serving.export`).
"""
from __future__ import annotations

from typing import List

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from estimator_gan import fileio
from estimator_gan.errors import ExportError
from estimator_gan.model import signatures
from estimator_gan.serving import saved_model

WARMUP_FILENAME = "tf_serving_warmup_requests"
MAX_RECORDS = 1000


def warmup_path(saved_model_dir: str) -> str:
    return fileio.join(saved_model_dir, "assets.extra", WARMUP_FILENAME)


def requests(saved_model_dir: str, config) -> List[prediction_log_pb2.PredictionLog]:
    """One PredictionLog (a PredictRequest) per signature of the SavedModel, sorted by name."""
    logs = []
    for name, signature in sorted(saved_model.signature_defs(saved_model_dir).items()):
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = name
        for key, value in signatures.example_inputs(config, sorted(signature.inputs)).items():
            dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value.astype(dtype.as_numpy_dtype)))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    if len(logs) > MAX_RECORDS:
        raise ExportError(f"{len(logs)} signatures, but TF Serving warms up with at most {MAX_RECORDS}")
    return logs


def write(saved_model_dir: str, config) -> str:
    """Write the warm-up requests into `<saved_model_dir>/assets.extra/`; returns the path."""
    path = warmup_path(saved_model_dir)
    fileio.makedirs(fileio.join(saved_model_dir, "assets.extra"))
    with tf.io.TFRecordWriter(path) as writer:
        for log in requests(saved_model_dir, config):
            writer.write(log.SerializeToString())
    return path


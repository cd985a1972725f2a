"""Finding and calling exports: the one SavedModel lookup, a checked Python client of an
exported generator, and the TF Serving REST answer for a request body.

`find_saved_model(path)` is what every command that reads an export uses (`generate`,
`evaluate --export`, `load_generator`): `path` may be an export directory
(`<dir>/generator/<version>/`), a model directory of versions (`<dir>/generator`), one version,
or a directory of Estimator-style timestamped exports; the highest integer version wins (10 over
9). Everything is read through `fileio`, so exports may live on any TensorFlow filesystem.
"""
from __future__ import annotations

import base64
import json
import re
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from estimator_gan import fileio, sampling
from estimator_gan.errors import ExportError

SAVED_MODEL_FILE = "saved_model.pb"
INFO_FILENAME = "export_info.json"


def versions(base: str) -> List[int]:
    """The complete versions in a directory such as `<export_dir>/generator`, ascending:
    sub-directories with an integer name that hold a saved_model.pb (a server ignores the
    rest, e.g. a hidden temporary directory)."""
    if not fileio.isdir(base):
        return []
    return sorted(int(name) for name in fileio.listdir(base)
                  if name.isdigit() and fileio.exists(fileio.join(base, name, SAVED_MODEL_FILE)))


def find_saved_model(path: str, role: str = "generator") -> str:
    """The SavedModel directory `path` means (see the module docstring), or `ExportError`."""
    if not fileio.exists(path):
        raise ExportError(f"export not found: {path}")
    if fileio.exists(fileio.join(path, SAVED_MODEL_FILE)):
        return path
    for base in (path, fileio.join(path, role)):
        found = versions(base)
        if found:
            return fileio.join(base, str(found[-1]))
    raise ExportError(f"{path} holds no {role} export (expected {role}/<version>/{SAVED_MODEL_FILE})")


def export_info(saved_model_dir: str) -> dict:
    """`assets.extra/export_info.json` of an export (step, checkpoint, shapes), or {}."""
    path = fileio.join(saved_model_dir, "assets.extra", INFO_FILENAME)
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else {}


def signature_defs(saved_model_dir: str) -> Dict[str, "meta_graph_pb2.SignatureDef"]:
    """The SignatureDefs of a SavedModel's serving meta graph, read from saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(fileio.read_bytes(fileio.join(saved_model_dir, SAVED_MODEL_FILE)))
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ExportError(f"{saved_model_dir} has no 'serve' meta graph")


class ServedGenerator:
    """A generator export loaded with `tf.saved_model.load`, called through its signatures as
    a Python client would. Bad requests raise `ExportError` with a one-line message."""

    def __init__(self, path: str):
        self.path = find_saved_model(path)
        try:
            self.model = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ExportError(f"cannot load {self.path}: {str(err).splitlines()[0]}") from None
        signatures = self.model.signatures
        if "noise" not in signatures:
            raise ExportError(f"{self.path} is not a generator export (no 'noise' signature)")
        self._noise_fn = signatures["noise"]
        spec = self._noise_fn.structured_input_signature[1]
        self.z_dim = int(spec["noise"].shape[1])
        self.conditional = "labels" in spec
        self.sample_shape = tuple(self._noise_fn.structured_outputs["samples"].shape[1:])
        self.info = export_info(self.path)

    @property
    def num_classes(self) -> int:
        return int(self.info.get("num_classes") or 1)

    def default_labels(self, count: int) -> Optional[np.ndarray]:
        """For a conditional model, the classes in turn; None otherwise."""
        return sampling.labels_in_turn(count, self.num_classes) if self.conditional else None

    def _labels(self, labels, count: int) -> dict:
        ids = sampling.request_labels(self.conditional, self.num_classes, labels, count)
        return {} if ids is None else {"labels": tf.constant(ids)}

    def _call(self, fn, **inputs) -> Dict[str, np.ndarray]:
        try:
            return {k: v.numpy() for k, v in fn(**inputs).items()}
        except tf.errors.InvalidArgumentError as err:
            raise ExportError(assertion_message(err)) from None

    def from_noise(self, noise, labels=None) -> Dict[str, np.ndarray]:
        """Outputs for finite noise `[N, z_dim]` (any float dtype)."""
        noise = np.asarray(noise)
        if not np.issubdtype(noise.dtype, np.floating):
            raise ExportError(f"noise must be floating point [N, {self.z_dim}], got dtype {noise.dtype}")
        if noise.ndim != 2 or noise.shape[1] != self.z_dim or noise.shape[0] < 1:
            raise ExportError(f"noise must have shape [N, {self.z_dim}], got {list(noise.shape)}")
        if not np.isfinite(noise).all():
            row, col = (int(i) for i in np.argwhere(~np.isfinite(noise))[0])
            raise ExportError(f"noise must be finite; row {row}, column {col} is {noise[row, col]}")
        return self._call(self._noise_fn, noise=tf.constant(noise.astype(np.float32)),
                          **self._labels(labels, noise.shape[0]))

    def from_seed(self, seed: int, count: int, truncation: Optional[float] = None,
                  labels=None) -> Dict[str, np.ndarray]:
        """Outputs for `count` samples from noise drawn in the graph from `seed`."""
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ExportError(f"count must be a positive integer, got {count!r}")
        if truncation is not None and not np.isfinite(truncation):
            raise ExportError(f"truncation must be a finite number >= 0, got {truncation}")
        inputs = {"seed": tf.constant(int(seed), tf.int64), "count": tf.constant(int(count), tf.int32),
                  **self._labels(labels, count)}
        name = "seed"
        if truncation is not None:
            name, inputs["truncation"] = "seed_truncated", tf.constant(float(truncation), tf.float32)
        return self._call(self.model.signatures[name], **inputs)


def assertion_message(err: tf.errors.OpError) -> str:
    """The readable part of an in-graph check's failure (see `signatures.checked_shape`)."""
    text = err.message.strip()
    for line in text.splitlines():
        groups = re.findall(r"\[([^\[\]]*)\]", line)
        for i, group in enumerate(groups):
            if "must" in group:
                return f"{group} {groups[i + 1]}" if group.endswith("got shape") else group
    return text.splitlines()[0]


def load_generator(path: str) -> ServedGenerator:
    """An exported generator (an export dir, its `generator/` dir or one version; the highest
    version is picked), with `from_seed` / `from_noise` calls that check their inputs and raise
    one-line `ExportError`s."""
    return ServedGenerator(path)


def _json_value(name: str, value: np.ndarray):
    if name.endswith("_bytes"):
        encode = np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object])
        return encode(value).tolist()
    return value.tolist()


def rest_predict(model, request) -> dict:
    """Answer a TF Serving REST predict request body (`{"instances": [...]}` row format or
    `{"inputs": {...}}` columnar, optional `signature_name`) with the body TF Serving would
    return (`predictions` / `outputs`; outputs named `..._bytes` as `{"b64": ...}`), by calling
    the loaded SavedModel's signature: to try a client, or a README example, without a server.
    A malformed request gets TF Serving's answer to it, `{"error": "..."}`."""
    if not isinstance(request, dict):
        return {"error": "JSON Value: request body must be a JSON object"}
    name = request.get("signature_name", "serving_default")
    if name not in model.signatures:
        return {"error": f'Serving signature name: "{name}" not found in signature def'}
    if ("instances" in request) == ("inputs" in request):
        return {"error": "Missing 'inputs' or 'instances' key" if "instances" not in request
                else "Both 'inputs' and 'instances' keys are present"}
    signature = model.signatures[name]
    specs = signature.structured_input_signature[1]
    try:
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list):
                return {"error": "Excepting 'instances' to be an list/array"}
            if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
                rows = [{next(iter(specs)): row} for row in rows]
            columns = {k: [row[k] for row in rows] for k in specs}
        else:
            inputs = request["inputs"]
            columns = inputs if isinstance(inputs, dict) else {next(iter(specs)): inputs}
        missing = sorted(set(specs) - set(columns))
        if missing:
            return {"error": f"Failed to get input map for signature: {name}; missing input "
                             f"{missing[0]!r}"}
        outputs = signature(**{k: tf.constant(np.asarray(columns[k]), specs[k].dtype) for k in specs})
    except (KeyError, TypeError, ValueError) as err:
        return {"error": f"Failed to process element: {err}"}
    except tf.errors.InvalidArgumentError as err:
        return {"error": assertion_message(err)}
    outputs = {k: _json_value(k, v.numpy()) for k, v in sorted(outputs.items())}
    if "instances" in request:
        predictions = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
        return {"predictions": [next(iter(p.values())) for p in predictions] if len(outputs) == 1 else predictions}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

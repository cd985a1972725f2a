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
from estimator_gan.errors import ExportError, op_error_text

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

    @property
    def latent_codes(self) -> list:
        """The sizes of the model's InfoGAN codes (`model.latent_codes`); [] without."""
        return list(self.info.get("latent_codes") or [])

    def default_labels(self, count: int) -> Optional[np.ndarray]:
        """For a conditional model, the classes in turn; None otherwise."""
        return sampling.labels_in_turn(count, self.num_classes) if self.conditional else None

    def _labels(self, labels, count: int) -> dict:
        if labels is not None and self.info.get("clusters"):
            raise ExportError(f"labels given, but this export draws its {self.info['clusters']} "
                              "clusters (data.clusters) in turn itself and takes none; to draw one "
                              "cluster, call GAN(model_dir=...).generate(count, labels=...)")
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
        _check_count(count)
        if truncation is not None and not np.isfinite(truncation):
            raise ExportError(f"truncation must be a finite number >= 0, got {truncation}")
        inputs = {"seed": tf.constant(int(seed), tf.int64), "count": tf.constant(int(count), tf.int32),
                  **self._labels(labels, count)}
        name = "seed"
        if truncation is not None:
            name, inputs["truncation"] = "seed_truncated", tf.constant(float(truncation), tf.float32)
        return self._call(self.model.signatures[name], **inputs)

    def from_codes(self, seed: int, count: int, codes, labels=None) -> Dict[str, np.ndarray]:
        """Outputs for `count` samples whose InfoGAN codes are `codes` (one value, or None for
        any, per code), from the noise `sampling.noise(count, z_dim, seed)`."""
        _check_count(count)
        noise = sampling.with_codes(sampling.noise(count, self.z_dim, seed), self.latent_codes, codes)
        return self.from_noise(noise, labels)


def _check_count(count) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ExportError(f"count must be a positive integer, got {count!r}")


def assertion_message(err: tf.errors.OpError) -> str:
    """The readable part of an in-graph check's failure (see `signatures.checked_shape`)."""
    text = err.message.strip()
    for line in text.splitlines():
        groups = re.findall(r"\[([^\[\]]*)\]", line)
        for i, group in enumerate(groups):
            if "must" in group:
                return f"{group} {groups[i + 1]}" if group.endswith("got shape") else group
    return op_error_text(text)


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


def _json_text(value) -> str:
    """A JSON value as TF Serving quotes it in an error (pretty-printed, 4-space indent)."""
    try:
        return json.dumps(value, indent=4)
    except (TypeError, ValueError):
        return repr(value)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_DATA_TYPE_NAMES = {"float32": "float", "float64": "double", "string": "string"}


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _dense_shape(value) -> List[int]:
    """The shape a JSON value claims, from the first element of every list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_tensor(value, dtype: tf.DType, shape: List[int], level: int = 0) -> Optional[str]:
    """TF Serving's complaint about a JSON value as a tensor of `dtype` and `shape` (a dense
    nested list of numbers of the right kind), or None."""
    if not isinstance(value, list):
        if level != len(shape):
            return (f"JSON Value: {_json_text(value)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {len(shape)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if dtype.is_bool:
            fits = isinstance(value, bool)
        elif dtype.is_integer:
            fits = number and isinstance(value, int) and dtype.min <= value <= dtype.max
        elif dtype.is_floating:
            fits = number
        else:
            fits = isinstance(value, str) or _is_b64(value)
        if not fits:
            return (f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected "
                    f"type: {_DATA_TYPE_NAMES.get(dtype.name, dtype.name)}")
        return None
    if level >= len(shape):
        return f"Encountered list at unexpected level: {level} expected < {len(shape)}"
    if len(value) != shape[level]:
        return (f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
                f"size: {shape[level]}")
    for item in value:
        error = _check_tensor(item, dtype, shape, level + 1)
        if error:
            return error
    return None


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _request_columns(request: dict, specs: dict):
    """`({input: value}, None)` from a predict request body, or `(None, error)` with the
    message TF Serving's JSON parser gives (tensorflow_serving/util/json_tensor.cc)."""
    body = request
    if "instances" in body and "inputs" in body:
        return None, (f"JSON Value: {_json_text(body)} Not formatted correctly expecting only one "
                      f"of 'inputs' or 'instances' keys to exist")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            return None, f"JSON Value: {_json_text(body)} Excepting 'instances' to be an list/array"
        if not rows:
            return None, f"JSON Value: {_json_text(body)} No values in 'instances' array"
        objects = isinstance(rows[0], dict) and not _is_b64(rows[0])
        if not isinstance(rows[0], dict) and len(specs) > 1:
            return None, ("instances is a plain list, but expecting list of objects as multiple "
                          "input tensors required as per tensorinfo_map")
        columns = {k: [] for k in specs}
        shapes = {}

        def add(i, key, item, where):
            shape = _dense_shape(item)
            error = _check_tensor(item, specs[key].dtype, shape)
            if error is None and key in shapes and shapes[key] != shape:
                size, first = int(np.prod(shape)), int(np.prod(shapes[key]))
                error = (f"Expecting tensor size: {first} but got: {size}" if size != first else
                         f"Expecting shape {_shape_text(shapes[key])} but got: {_shape_text(shape)}")
            if error is not None:
                return (f"Failed to process element: {i}{where} of 'instances' list. Error: "
                        f"INVALID_ARGUMENT: {error}")
            shapes.setdefault(key, shape)
            columns[key].append(item)
            return None

        for i, row in enumerate(rows):
            is_object = isinstance(row, dict) and not _is_b64(row)
            if objects and not is_object:
                return None, f"Expecting object but got list at item {i} of input list"
            if not objects and is_object:
                return None, f"Expecting value/list but got object at item {i} of input list"
            if not objects:
                error = add(i, next(iter(specs)), row, "")
                if error:
                    return None, error
                continue
            for key, item in row.items():
                if key not in specs:
                    return None, (f"Failed to process element: {i} key: {key} of 'instances' list. "
                                  f"Error: INVALID_ARGUMENT: JSON object: does not have named "
                                  f"input: {key}")
                error = add(i, key, item, f" key: {key}")
                if error:
                    return None, error
            if set(row) != set(specs):
                return None, (f"Failed to process element: {i} of 'instances' list. JSON object: "
                              f"{_json_text(row)} keys must be equal to: {','.join(sorted(specs))}")
        return columns, None
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or _is_b64(inputs):
            if len(specs) > 1:
                return None, ("inputs is a plain value/list, but expecting an object as multiple "
                              "input tensors required as per tensorinfo_map")
            inputs = {next(iter(specs)): inputs}
        for key in sorted(specs):
            if key not in inputs:
                return None, f"Missing named input: {key} in 'inputs' object."
            error = _check_tensor(inputs[key], specs[key].dtype, _dense_shape(inputs[key]))
            if error:
                return None, error
        return {k: inputs[k] for k in specs}, None
    return None, "Missing 'inputs' or 'instances' key"


def _parsed_body(request):
    """A request body as TF Serving receives it (JSON text, str or bytes) or already parsed
    (a dict); `(value, None)` or `(None, TF Serving's parse error)`."""
    if not isinstance(request, (str, bytes, bytearray)):
        return request, None
    try:
        return json.loads(request), None
    except json.JSONDecodeError as err:
        return None, f"JSON Parse error: {err.msg} at offset: {err.pos}"
    except UnicodeDecodeError as err:
        return None, f"JSON Parse error: Invalid encoding in string. at offset: {err.start}"


def rest_predict(model, request) -> dict:
    """Answer a TF Serving REST predict request body (`{"instances": [...]}` row format or
    `{"inputs": {...}}` columnar, optional `signature_name`) with the body TF Serving would
    return (`predictions` / `outputs`; outputs named `..._bytes` as `{"b64": ...}`), by calling
    the loaded SavedModel's signature: to try a client, or a README example, without a server.
    `request` is the body as sent (JSON text, `str` or `bytes`, e.g. what curl posts) or
    already parsed (a dict). A malformed request is answered, never raised: `{"error": "..."}`
    with TF Serving's message for it (JSON that does not parse, a missing or doubled
    `instances`/`inputs` key, an unknown signature, a missing or unknown input, values of the
    wrong type or shape)."""
    request, error = _parsed_body(request)
    if error is not None:
        return {"error": error}
    if not isinstance(request, dict):
        return {"error": f"JSON Value: {_json_text(request)} Is not object"}
    name = request.get("signature_name", "")
    if not isinstance(name, str):
        return {"error": f"JSON Value: {_json_text(request)} not formatted correctly. "
                         f"'signature_name' key must be a string value."}
    name = name or "serving_default"
    if name not in model.signatures:
        return {"error": f'Serving signature name: "{name}" not found in signature def'}
    signature = model.signatures[name]
    specs = signature.structured_input_signature[1]
    if not specs:
        return {"error": f"Failed to get input map for signature: {name}"}
    columns, error = _request_columns(request, specs)
    if error is not None:
        return {"error": error}
    try:
        outputs = signature(**{k: tf.constant(np.asarray(columns[k]), spec.dtype)
                               for k, spec in specs.items()})
    except tf.errors.InvalidArgumentError as err:
        return {"error": assertion_message(err).strip()}
    except (TypeError, ValueError, tf.errors.OpError) as err:  # e.g. a shape the signature refuses
        return {"error": " ".join(str(err).split("\n")[0].split())}
    outputs = {k: _json_value(k, v.numpy()) for k, v in sorted(outputs.items())}
    if "instances" in request:
        predictions = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
        return {"predictions": [next(iter(p.values())) for p in predictions] if len(outputs) == 1 else predictions}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

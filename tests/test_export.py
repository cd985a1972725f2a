"""Export and serving on real TensorFlow: layout, signatures, lean G graph, deterministic and
standing batch norm, seeds, TFLite, saved_model_cli, REST JSON, atomic versions, bad inputs,
training-time export and the export/generate commands."""
import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import prediction_log_pb2

from conftest import REPO_ROOT, array_input_fn, tiny_config, tiny_images
from estimator_gan import cli, sampling
from estimator_gan import config as config_lib
from estimator_gan.errors import ExportError
from estimator_gan.gan import GAN
from estimator_gan.model import gan as gan_lib
from estimator_gan.serving import export as export_lib
from estimator_gan.model import signatures
from estimator_gan.serving import saved_model
from estimator_gan.serving import tflite as tflite_lib

v1 = tf.compat.v1
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
FAST_STANDING = ("export.standing_batches=4", "export.standing_batch_size=64")


def _train(model_dir, *overrides, labels=None):
    gan = GAN(tiny_config(*FAST_STANDING, *overrides), model_dir=str(model_dir))
    gan.train(input_fn=array_input_fn(tiny_images(), labels), progress=False)
    return gan


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DCGAN trained 4 steps (BN moving averages far from the weights' statistics),
    exported once with TFLite."""
    root = tmp_path_factory.mktemp("export")
    gan = _train(root / "model")
    result = gan.export(str(root / "exports"), tflite=True)
    return gan, result, root


def test_layout_signatures_and_assets(trained):
    gan, result, root = trained
    exports = root / "exports"
    assert result.version == 1 and result.global_step == 4 and result.standing_statistics == 1
    assert result.generator == str(exports / "generator" / "1")
    assert result.discriminator == str(exports / "discriminator" / "1")
    assert result.tflite == str(exports / "tflite" / "1" / "generator.tflite")
    for part in ("generator", "discriminator"):
        assert sorted(os.listdir(exports / part)) == ["1"]
        assert {"saved_model.pb", "variables", "assets.extra"} <= set(os.listdir(exports / part / "1"))
    info = json.load(open(exports / "generator" / "1" / "assets.extra" / "export_info.json"))
    assert info["global_step"] == 4 and info["standing_statistics"]["batches"] == 4

    signatures = saved_model.signature_defs(result.generator)
    assert set(signatures) == {"serving_default", "noise", "seed", "seed_truncated"}
    assert set(signatures["serving_default"].inputs) == {"noise"}
    assert set(signatures["seed"].inputs) == {"seed", "count"}
    assert set(signatures["seed_truncated"].inputs) == {"seed", "count", "truncation"}
    assert set(signatures["noise"].outputs) == {"samples", "images", "png_bytes"}
    d_signature = saved_model.signature_defs(result.discriminator)["serving_default"]
    assert set(d_signature.inputs) == {"samples"} and set(d_signature.outputs) == {"logits", "probabilities"}


def _replay_warmup(saved_model_dir):
    """Read `assets.extra/tf_serving_warmup_requests` back as PredictionLog records and run each
    request against the SavedModel loaded as TF Serving loads it (TF1 loader, one Session).
    Returns {signature name: {output name: array}}, checking each output against its signature."""
    path = os.path.join(saved_model_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(record)
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    defs = saved_model.signature_defs(saved_model_dir)
    requests = [log.predict_log.request for log in logs]
    assert sorted(r.model_spec.signature_name for r in requests) == sorted(defs)
    results = {}
    with v1.Session(graph=tf.Graph()) as session:
        v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        for request in requests:
            name = request.model_spec.signature_name
            signature = defs[name]
            assert set(request.inputs) == set(signature.inputs), name
            feeds = {signature.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = session.run({k: v.name for k, v in signature.outputs.items()}, feeds)
            for key, value in out.items():
                expected = tf.TensorShape(signature.outputs[key].tensor_shape)
                assert expected.is_compatible_with(value.shape), (name, key, value.shape, expected)
                assert value.shape[0] == signatures.EXAMPLE_BATCH, (name, key, value.shape)
                assert value.dtype == tf.dtypes.as_dtype(signature.outputs[key].dtype).as_numpy_dtype
            results[name] = out
    return results


def test_every_export_carries_warmup_requests_that_replay_against_it(trained):
    _, result, _ = trained
    generated = _replay_warmup(result.generator)
    assert set(generated) == {"serving_default", "noise", "seed", "seed_truncated"}
    for name, out in generated.items():
        assert out["samples"].shape == (2, 8, 8, 1) and np.all(np.isfinite(out["samples"])), name
        assert out["images"].shape == (2, 8, 8, 1) and out["png_bytes"].shape == (2,), name
        assert out["png_bytes"][0].startswith(b"\x89PNG"), name
    judged = _replay_warmup(result.discriminator)
    assert set(judged) == {"serving_default"}
    probabilities = judged["serving_default"]["probabilities"]
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_warmup_examples_fit_export_max_count_and_unknown_inputs_are_named():
    small = signatures.example_inputs(tiny_config("export.max_count=1", "model.conditional=true",
                                                  "model.num_classes=3"),
                                      ["noise", "seed", "count", "labels", "samples"])
    assert small["count"] == 1 and small["noise"].shape == (1, 8) and small["labels"].shape == (1,)
    assert small["samples"].shape == (1, 8, 8, 1) and small["seed"].dtype == np.int64
    with pytest.raises(ExportError, match="signature input 'image' has no example value"):
        signatures.example_inputs(tiny_config(), ["noise", "image"])


def test_generator_export_holds_only_generator_variables(trained):
    _, result, _ = trained
    g_names = [n for n, _ in tf.train.list_variables(os.path.join(result.generator, "variables", "variables"))]
    assert any("moving_mean" in n for n in g_names)
    assert all(n.startswith("generator/") or n == "global_step" for n in g_names), g_names
    assert not any("Adam" in n or "_train" in n or "_step" in n.replace("global_step", "") for n in g_names)
    d_names = [n for n, _ in tf.train.list_variables(os.path.join(result.discriminator, "variables", "variables"))]
    assert all(n.startswith("discriminator/") or n == "global_step" for n in d_names), d_names


def test_seed_signature_is_reproducible_across_loads_and_outputs_agree(trained):
    _, result, _ = trained
    first, second = saved_model.load_generator(result.generator), saved_model.load_generator(result.generator)
    a, b = first.from_seed(7, 5), second.from_seed(7, 5)
    assert a["samples"].shape == (5, 8, 8, 1) and a["samples"].dtype == np.float32
    assert np.array_equal(a["samples"], b["samples"])
    assert not np.allclose(a["samples"], first.from_seed(8, 5)["samples"])
    assert np.array_equal(first.from_seed(7, 5, truncation=0.0)["samples"], a["samples"])
    assert np.abs(a["samples"]).max() <= 1.0
    expected = np.clip(np.rint((a["samples"] + 1) * 127.5), 0, 255).astype(np.uint8)
    assert a["images"].dtype == np.uint8 and np.array_equal(a["images"], expected)
    decoded = np.array(Image.open(io.BytesIO(a["png_bytes"][2])))
    assert np.array_equal(decoded, a["images"][2, :, :, 0])


def test_batch_norm_is_deterministic_and_rows_equal_batch(trained):
    _, result, _ = trained
    served = saved_model.load_generator(result.generator)
    noise = np.random.RandomState(3).standard_normal((6, 8)).astype(np.float32)
    once, twice = served.from_noise(noise)["samples"], served.from_noise(noise)["samples"]
    assert np.array_equal(once, twice)
    reloaded = saved_model.load_generator(result.generator).from_noise(noise)["samples"]
    assert np.array_equal(once, reloaded)
    rows = np.concatenate([served.from_noise(noise[i:i + 1])["samples"] for i in range(6)])
    np.testing.assert_allclose(rows, once, atol=1e-6)


def test_stateless_noise_truncation():
    noise = signatures.stateless_noise(tf.constant(5, tf.int64), 4000, 8, 0.0).numpy()
    assert noise.shape == (4000, 8) and abs(noise.mean()) < 0.03 and abs(noise.std() - 1) < 0.03
    again = signatures.stateless_noise(tf.constant(5, tf.int64), 4000, 8, 0.0).numpy()
    assert np.array_equal(noise, again)
    truncated = signatures.stateless_noise(tf.constant(5, tf.int64), 4000, 8, 0.5).numpy()
    assert np.abs(truncated).max() <= 0.5 and truncated.std() > 0.25  # resampled, not clipped
    assert np.mean(np.abs(truncated) > 0.499) < 0.005  # clipping would pile mass up at 0.5


def _training_mode_samples(gan, noise):
    """G with batch statistics (as during training), the checkpoint's weights."""
    graph = tf.Graph()
    with graph.as_default():
        parts = gan_lib.GANParts.from_params(gan.params)
        samples = parts.generator(tf.constant(noise), None, tf.estimator.ModeKeys.TRAIN,
                                  use_ema=parts.uses_ema(tf.estimator.ModeKeys.PREDICT)).outputs
        with v1.Session() as session:
            v1.train.Saver(v1.global_variables()).restore(session, tf.train.latest_checkpoint(gan.model_dir))
            return session.run(samples)


def _served(gan, export_dir, noise, *overrides):
    other = GAN(tiny_config(*FAST_STANDING, *overrides), model_dir=gan.model_dir)
    path = other.export(export_dir, generator_only=True).generator
    return path, other, saved_model.load_generator(path).from_noise(noise)["samples"]


def test_standing_statistics_make_served_samples_match_training_mode(trained, tmp_path):
    gan, result, _ = trained
    noise = np.random.RandomState(0).standard_normal((512, 8)).astype(np.float32)
    # Raw weights: their moving statistics lag 4 steps of training; standing ones do not.
    _, raw_gan, standing = _served(gan, str(tmp_path / "a"), noise, "model.generator.inference_weights=raw")
    reference = _training_mode_samples(raw_gan, noise)
    raw_path, _, lagging = _served(gan, str(tmp_path / "b"), noise, "model.generator.inference_weights=raw",
                                   "export.standing_statistics=false")
    standing_error = np.abs(standing - reference).mean()
    lagging_error = np.abs(lagging - reference).mean()
    assert standing_error < 0.01 and standing_error < lagging_error / 5, (standing_error, lagging_error)
    # EMA weights (the default): the checkpoint's statistics were recomputed when it was saved,
    # so even an export without standing statistics matches training mode.
    ema_reference = _training_mode_samples(gan, noise)
    ema_standing = saved_model.load_generator(result.generator).from_noise(noise)["samples"]
    _, _, ema_saved = _served(gan, str(tmp_path / "c"), noise, "export.standing_statistics=false")
    assert np.abs(ema_standing - ema_reference).mean() < 0.01
    assert np.abs(ema_saved - ema_reference).mean() < 0.01
    # the training checkpoint is untouched
    ckpt = tf.train.latest_checkpoint(gan.model_dir)
    raw_variables = os.path.join(raw_path, "variables", "variables")
    for name, _ in tf.train.list_variables(raw_variables):
        if "moving_variance" in name:
            assert np.array_equal(tf.train.load_variable(ckpt, name), tf.train.load_variable(raw_variables, name))


def test_keras_batch_norm_gets_standing_statistics_and_other_batch_norm_a_warning(tmp_path, caplog):
    """A `keras_network` generator's BatchNormalization is recomputed at export like the built-in
    batch norm, so served samples match training mode; batch norm the export cannot see into
    (tf.compat.v1.layers in a plain network function) keeps its statistics, and says so."""
    import custom_nets

    noise = np.random.RandomState(0).standard_normal((512, 8)).astype(np.float32)
    keras = GAN(tiny_config(*FAST_STANDING, "model.generator.ema_decay=null"), model_dir=str(tmp_path / "keras"),
                generator_fn=custom_nets.keras_generator, discriminator_fn=custom_nets.keras_discriminator)
    keras.train(input_fn=array_input_fn(tiny_images()), progress=False)
    result = keras.export(str(tmp_path / "keras_exports"), generator_only=True)
    assert result.standing_statistics == 1 and result.info["standing_statistics"]["kept"] == []
    served = saved_model.load_generator(result.generator).from_noise(noise)["samples"]
    lagging = GAN(config_lib.config_from_dict(keras.config.to_dict(), ["export.standing_statistics=false"]),
                  model_dir=keras.model_dir).export(str(tmp_path / "lagging"), generator_only=True)
    lagging = saved_model.load_generator(lagging.generator).from_noise(noise)["samples"]
    reference = _training_mode_samples(keras, noise)
    # 0.03 against 0.18 here; what is left is the sampling error of 512 and 256 samples' moments
    error, lagging_error = np.abs(served - reference).mean(), np.abs(lagging - reference).mean()
    assert error < lagging_error / 4, (error, lagging_error)

    plain = GAN(tiny_config(*FAST_STANDING, "model.generator.ema_decay=null"), model_dir=str(tmp_path / "v1"),
                generator_fn=custom_nets.v1_generator, discriminator_fn=custom_nets.v1_discriminator)
    plain.train(input_fn=array_input_fn(tiny_images()), progress=False)
    with caplog.at_level("WARNING", logger="estimator_gan.serving.export"):
        result = plain.export(str(tmp_path / "v1_exports"), generator_only=True)
    kept = ["generator/batch_normalization/moving_mean", "generator/batch_normalization/moving_variance"]
    assert result.standing_statistics == 0 and result.info["standing_statistics"]["kept"] == kept
    assert "2 moving statistics not made by layers.batch_norm" in caplog.text


def test_tflite_matches_saved_model(trained):
    _, result, _ = trained
    interpreter = tf.lite.Interpreter(model_path=result.tflite)
    runner = interpreter.get_signature_runner("serving_default")
    noise = np.random.RandomState(1).standard_normal((4, 8)).astype(np.float32)
    lite = runner(noise=noise)
    served = saved_model.load_generator(result.generator).from_noise(noise)
    np.testing.assert_allclose(lite["samples"], served["samples"], atol=1e-5)
    assert np.abs(lite["images"].astype(int) - served["images"].astype(int)).max() <= 1


def test_saved_model_cli_show_and_run(trained, tmp_path):
    _, result, _ = trained
    assert os.path.isfile(SAVED_MODEL_CLI), "saved_model_cli missing from the venv"
    shown = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", result.generator, "--all"],
                           capture_output=True, text=True, timeout=180)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("signature_def['serving_default']", "signature_def['seed']", "inputs['truncation']",
                 "outputs['png_bytes']", "shape: (-1, 8, 8, 1)"):
        assert name in shown.stdout
    run = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", result.generator, "--tag_set", "serve",
                          "--signature_def", "seed", "--input_exprs", "seed=7;count=3",
                          "--outdir", str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    expected = saved_model.load_generator(result.generator).from_seed(7, 3)["samples"]
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npy"), expected)


def test_rest_json_the_readme_promises(trained):
    _, result, _ = trained
    model = tf.saved_model.load(result.generator)
    noise = np.random.RandomState(2).standard_normal((2, 8)).round(3).tolist()
    rows = json.loads(json.dumps(saved_model.rest_predict(model, {"instances": [{"noise": z} for z in noise]})))
    assert len(rows["predictions"]) == 2
    first = rows["predictions"][0]
    assert set(first) == {"samples", "images", "png_bytes"}
    assert np.asarray(first["samples"]).shape == (8, 8, 1) and np.asarray(first["images"]).shape == (8, 8, 1)
    png = Image.open(io.BytesIO(base64.b64decode(first["png_bytes"]["b64"])))
    assert png.size == (8, 8) and np.array_equal(np.array(png), np.asarray(first["images"])[:, :, 0])
    bare = saved_model.rest_predict(model, {"instances": noise})
    assert bare["predictions"][1]["samples"] == rows["predictions"][1]["samples"]

    columns = saved_model.rest_predict(model, {"signature_name": "seed", "inputs": {"seed": 7, "count": 3}})
    assert np.asarray(columns["outputs"]["samples"]).shape == (3, 8, 8, 1)
    assert len(columns["outputs"]["png_bytes"]) == 3 and "b64" in columns["outputs"]["png_bytes"][0]
    direct = saved_model.load_generator(result.generator).from_seed(7, 3)["samples"]
    np.testing.assert_array_equal(np.asarray(columns["outputs"]["samples"], np.float32), direct)


def test_rest_predict_takes_the_body_as_json_text(trained):
    """curl posts the body as text: `rest_predict` takes it as str or bytes as well as a dict,
    and answers text that is not JSON with TF Serving's parse error."""
    _, result, _ = trained
    model = tf.saved_model.load(result.generator)
    body = {"signature_name": "seed", "inputs": {"seed": 7, "count": 2}}
    expected = saved_model.rest_predict(model, body)
    assert np.asarray(expected["outputs"]["samples"]).shape == (2, 8, 8, 1)
    assert saved_model.rest_predict(model, json.dumps(body)) == expected
    assert saved_model.rest_predict(model, json.dumps(body).encode()) == expected
    assert saved_model.rest_predict(model, '{"instances": [1, 2') == {
        "error": "JSON Parse error: Expecting ',' delimiter at offset: 19"}
    assert saved_model.rest_predict(model, "[1, 2]") == {"error": "JSON Value: [\n    1,\n    2\n] Is not object"}


@pytest.mark.parametrize("signature, body, expected", [
    ("noise", {"signature_name": "noise"}, "Missing 'inputs' or 'instances' key"),
    ("noise", {"instances": [[0.0] * 8], "inputs": {"noise": [[0.0] * 8]}},
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ("noise", {"signature_name": "sample", "inputs": [[0.0] * 8]},
     'Serving signature name: "sample" not found in signature def'),
    ("seed", {"signature_name": "seed", "inputs": {"seed": 7}},
     "Missing named input: count in 'inputs' object."),
    ("seed", {"signature_name": "seed", "instances": [{"seed": 7}]},
     "keys must be equal to: count,seed"),
    ("seed", {"signature_name": "seed", "instances": [{"seed": 7, "count": 2, "labels": 1}]},
     "Failed to process element: 0 key: labels of 'instances' list. Error: INVALID_ARGUMENT: JSON "
     "object: does not have named input: labels"),
    ("seed", {"signature_name": "seed", "instances": [7, 2]},
     "instances is a plain list, but expecting list of objects as multiple input tensors"),
    ("noise", {"instances": {"noise": [0.0] * 8}}, "Excepting 'instances' to be an list/array"),
    ("noise", {"instances": []}, "No values in 'instances' array"),
    ("noise", {"signature_name": ["noise"], "instances": [[0.0] * 8]},
     "'signature_name' key must be a string value"),
    ("noise", [[0.0] * 8], "Is not object"),
    ("noise", {"instances": [[0.0] * 5]}, "noise must have shape (batch, 8)"),
    ("noise", {"instances": [[0.0] * 8, [0.0] * 7]},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor "
     "size: 8 but got: 7"),
    ("noise", {"inputs": [[0.0] * 8, [0.0] * 7]},
     "Encountered list at unexpected size: 7 at level: 1 expected size: 8"),
    ("noise", {"inputs": {"noise": "abc"}}, 'JSON Value: "abc" Type: String is not of expected type: float'),
    ("seed", {"signature_name": "seed", "inputs": {"seed": 7.5, "count": 2}},
     "JSON Value: 7.5 Type: Number is not of expected type: int64"),
    ("seed", {"signature_name": "seed", "inputs": {"seed": 2 ** 70, "count": 2}},
     f"JSON Value: {2 ** 70} Type: Number is not of expected type: int64"),
    ("seed", {"signature_name": "seed", "inputs": {"seed": 7, "count": 2 ** 40}},
     f"JSON Value: {2 ** 40} Type: Number is not of expected type: int32"),
    ("seed", {"signature_name": "seed", "inputs": {"seed": 7, "count": 0}}, "count must be at least 1"),
], ids=["no-inputs-or-instances", "both", "unknown-signature", "missing-input-key",
        "missing-instance-key", "unknown-instance-key", "plain-list-for-two-inputs",
        "instances-not-a-list", "empty-instances", "signature-name-not-a-string", "not-an-object",
        "wrong-shape", "ragged-instances", "ragged-inputs", "string-for-float", "float-for-int",
        "int64-overflow", "int32-overflow", "count-zero"])
def test_rest_predict_answers_a_malformed_body_with_an_error(trained, signature, body, expected):
    """TF Serving answers a bad request body with `{"error": ...}` (HTTP 400), never a crash;
    `rest_predict` does the same, with TF Serving's message."""
    _, result, _ = trained
    model = tf.saved_model.load(result.generator)
    answer = saved_model.rest_predict(model, body)
    assert list(answer) == ["error"], answer
    assert isinstance(answer["error"], str) and expected in answer["error"], answer["error"]
    assert answer["error"].strip()


def test_non_finite_noise_is_refused_naming_the_row_and_column(trained, tmp_path, capsys):
    _, result, root = trained
    noise = np.zeros((4, 8), np.float32)
    noise[2, 5] = np.nan
    with pytest.raises(ExportError, match=r"^noise must be finite; row 2, column 5 is nan$"):
        saved_model.load_generator(result.generator).from_noise(noise)
    noise[2, 5], noise[3, 0] = 0.0, -np.inf
    with pytest.raises(ExportError, match=r"row 3, column 0 is -inf"):
        saved_model.load_generator(result.generator).from_noise(noise)

    np.save(tmp_path / "noise.npy", np.where(np.eye(4, 8) > 0, np.nan, 0.0))
    out = tmp_path / "samples.npy"
    assert cli.main(["generate", "--export", str(root / "exports"), "--noise", str(tmp_path / "noise.npy"),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: noise must be finite; row 0, column 0 is nan"], err
    assert not out.exists()


def _run_callable(saved_model_dir, signature_name, feeds):
    """Feed a signature through the C++ session API without Python-side shape checks, as
    TensorFlow Serving's model server does."""
    signature = saved_model.signature_defs(saved_model_dir)[signature_name]
    graph = tf.Graph()
    with v1.Session(graph=graph) as session:
        v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        options = config_pb2.CallableOptions(
            feed=[signature.inputs[k].name for k in feeds],
            fetch=[signature.outputs[k].name for k in sorted(signature.outputs)])
        run = session._make_callable_from_options(options)
        return run(*feeds.values())


def test_signatures_reject_bad_inputs_readably(trained):
    gan, result, _ = trained
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"noise must have shape \(batch, 8\)"):
        _run_callable(result.generator, "noise", {"noise": np.ones((2, 5), np.float32)})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"samples must have shape \(batch, 8, 8, 1\)"):
        _run_callable(result.discriminator, "serving_default", {"samples": np.ones((2, 4, 4, 1), np.float32)})
    served = saved_model.load_generator(result.generator)
    with pytest.raises(tf.errors.InvalidArgumentError, match="count must be at least 1"):
        served.model.signatures["seed"](seed=tf.constant(1, tf.int64), count=tf.constant(0))
    with pytest.raises(ExportError, match="count must be at most 4096"):
        served.from_seed(1, 5000)
    with pytest.raises(ExportError, match="truncation must be >= 0"):
        served.from_seed(1, 2, truncation=-1.0)
    with pytest.raises(ExportError, match=r"noise must have shape \[N, 8\], got \[3\]"):
        served.from_noise(np.ones(3, np.float32))
    with pytest.raises(ExportError, match="noise must be floating point"):
        served.from_noise(np.ones((3, 8), np.int64))
    with pytest.raises(ExportError, match="not conditional"):
        served.from_seed(1, 2, labels=[0, 1])
    with pytest.raises(ExportError, match="export not found"):
        saved_model.load_generator(os.path.join(str(result.generator), "nope"))


def test_served_noise_of_another_rank_or_not_finite_fails_in_graph(trained):
    """TF Serving feeds a request to the graph unchecked: noise of another rank gets the
    readable shape message (not a matmul error), and NaN/inf noise an error naming the value
    (not NaN samples and black images)."""
    _, result, _ = trained
    for bad in (np.ones(8, np.float32), np.ones((2, 8, 1), np.float32), np.ones((2, 8, 8), np.float32)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"noise must have shape \(batch, 8\); got shape"):
            _run_callable(result.generator, "noise", {"noise": bad})
    noise = np.zeros((3, 8), np.float32)
    noise[1, 4] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"noise must be finite; row 1, column 4 is nan"):
        _run_callable(result.generator, "noise", {"noise": noise})
    noise[1, 4], noise[2, 7] = 0.0, -np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"noise must be finite; row 2, column 7 is -inf"):
        _run_callable(result.generator, "noise", {"noise": noise})
    model = tf.saved_model.load(result.generator)
    assert saved_model.rest_predict(model, {"instances": noise.tolist()}) == {
        "error": "noise must be finite; row 2, column 7 is -inf"}
    finite = _run_callable(result.generator, "noise", {"noise": np.zeros((3, 8), np.float32)})
    assert all(np.isfinite(out.astype(np.float64)).all() for out in finite if out.dtype != object)


def test_interrupted_export_leaves_no_visible_version(trained, tmp_path, monkeypatch):
    gan, _, _ = trained
    target = str(tmp_path / "exports")
    first = gan.export(target, generator_only=True)
    assert first.version == 1

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C after the SavedModels were written

    monkeypatch.setattr(tflite_lib, "to_tflite", crash)
    with pytest.raises(KeyboardInterrupt):
        gan.export(target, tflite=True)
    monkeypatch.undo()
    assert saved_model.versions(os.path.join(target, "generator")) == [1]
    assert sorted(os.listdir(target)) == ["generator"]  # no temporary left behind
    # a killed process's leftover is never taken for a version
    os.makedirs(os.path.join(target, "generator", ".tmp-killed", "2", "variables"))
    assert saved_model.find_saved_model(target) == os.path.join(target, "generator", "1")
    second = gan.export(target, generator_only=True)
    assert second.version == 2 and saved_model.versions(os.path.join(target, "generator")) == [1, 2]
    assert export_lib.prune_versions(target, keep=1) == [1]
    assert saved_model.versions(os.path.join(target, "generator")) == [2]


def test_conditional_model_signatures_take_labels(tmp_path):
    labels = np.arange(64, dtype=np.int32) % 3
    gan = _train(tmp_path / "model", "model.conditional=true", "model.num_classes=3", labels=labels)
    result = gan.export(str(tmp_path / "exports"))
    signatures = saved_model.signature_defs(result.generator)
    assert set(signatures["noise"].inputs) == {"noise", "labels"}
    assert set(signatures["seed"].inputs) == {"seed", "count", "labels"}
    assert set(saved_model.signature_defs(result.discriminator)["serving_default"].inputs) == {"samples", "labels"}
    warm = _replay_warmup(result.generator)
    assert set(warm) == {"serving_default", "noise", "seed", "seed_truncated"}
    assert _replay_warmup(result.discriminator)["serving_default"]["logits"].shape[0] == 2
    served = saved_model.load_generator(result.generator)
    assert served.conditional and list(served.default_labels(4)) == [0, 1, 2, 0]
    assert served.from_seed(3, 4, labels=2)["samples"].shape == (4, 8, 8, 1)
    with pytest.raises(ExportError, match="2 labels for 4 samples"):
        served.from_seed(3, 4, labels=[0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one class id per sample"):
        served.model.signatures["seed"](seed=tf.constant(3, tf.int64), count=tf.constant(4),
                                        labels=tf.constant([0, 1]))


def test_export_during_training_keeps_last_versions_and_best(tmp_path, capsys):
    gan = _train(tmp_path / "model", "export.during_training=checkpoint", "export.keep=1",
                 "train.max_steps=4", "train.save_checkpoints_steps=2")
    export_dir = os.path.join(gan.model_dir, "export")
    assert saved_model.versions(os.path.join(export_dir, "generator")) == [2]
    assert saved_model.versions(os.path.join(export_dir, "discriminator")) == [2]
    assert json.load(open(os.path.join(export_dir, "generator", "2", "assets.extra", "export_info.json")))[
        "global_step"] == 4

    best = export_lib.GANExporter(gan.generator_estimator, gan.discriminator_estimator, policy="best")
    ckpt = tf.train.latest_checkpoint(gan.model_dir)
    assert best.export(None, None, ckpt, {"loss/generator": 1.0}, False).endswith("/3")
    assert best.export(None, None, ckpt, {"loss/generator": 2.0}, False) is None
    assert best.export(None, None, ckpt, {"loss/generator": 0.5}, False).endswith("/4")
    with pytest.raises(ExportError, match="not among the EVAL metrics"):
        best.export(None, None, ckpt, {"loss/discriminator": 0.5}, False)


def test_info_model_export_generates_chosen_codes(tmp_path, capsys):
    gan = _train(tmp_path / "model", "model.latent_codes=[3,2]")
    result = gan.export(str(tmp_path / "exports"), generator_only=True)
    served = saved_model.load_generator(result.generator)
    assert served.latent_codes == [3, 2] and served.z_dim == 8
    chosen = served.from_codes(5, 4, [2, None])["samples"]
    noise = sampling.with_codes(sampling.noise(4, 8, 5), [3, 2], [2, None])
    np.testing.assert_array_equal(chosen, served.from_noise(noise)["samples"])
    from_checkpoint = gan.generate(4, seed=5, codes=[2, None])
    assert from_checkpoint.shape == (4, 8, 8, 1)
    assert not np.allclose(from_checkpoint, gan.generate(4, seed=5, codes=[1, None]))
    assert not np.allclose(chosen, served.from_codes(5, 4, [0, None])["samples"])
    npy = str(tmp_path / "coded.npy")
    assert cli.main(["generate", "--export", result.generator, "--count", "4", "--seed", "5",
                     "--codes", "2,", "--out", npy]) == 0
    np.testing.assert_array_equal(np.load(npy), chosen)
    capsys.readouterr()
    for codes, fragment in [("2,x", "--codes must be integers separated by commas"),
                            ("3,0", "code value 3 is out of range: this code has values 0..2"),
                            ("1", "1 code values for a model with 2 latent codes [3, 2]")]:
        assert cli.main(["generate", "--export", result.generator, "--codes", codes, "--out", npy]) == 2
        assert fragment in capsys.readouterr().err


def test_export_and_generate_commands(trained, tmp_path, capsys):
    gan, _, _ = trained
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    exports = str(tmp_path / "exports")
    command = [sys.executable, "-c", "import sys; from estimator_gan.cli import main; sys.exit(main())"]
    done = subprocess.run(command + ["export", "--model-dir", gan.model_dir, "--export-dir", exports,
                                     "--set", "export.standing_batches=2"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exported step 4 as version 1" in done.stdout and "generator/1" in done.stdout

    grid = str(tmp_path / "grid.png")
    assert cli.main(["generate", "--export", exports, "--count", "9", "--seed", "7", "--out", grid]) == 0
    assert Image.open(grid).size[0] >= 8 * 3
    npy = str(tmp_path / "samples.npy")
    assert cli.main(["generate", "--export", exports, "--count", "9", "--seed", "7", "--out", npy]) == 0
    served = saved_model.load_generator(exports).from_seed(7, 9)["samples"]
    np.testing.assert_array_equal(np.load(npy), served)
    pngs = str(tmp_path / "pngs")
    assert cli.main(["generate", "--export", exports, "--count", "3", "--out", pngs]) == 0
    assert sorted(os.listdir(pngs)) == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    noise_file = str(tmp_path / "noise.npy")
    np.save(noise_file, np.zeros((2, 8)))
    assert cli.main(["generate", "--export", exports, "--noise", noise_file, "--out", npy]) == 0
    assert np.load(npy).shape == (2, 8, 8, 1)
    capsys.readouterr()

    np.save(noise_file, np.zeros((2, 5), np.float32))
    np.save(str(tmp_path / "ints.npy"), np.zeros((2, 8), np.int32))
    for args, fragment in [
        (["--export", str(tmp_path / "missing"), "--out", npy], "export not found"),
        (["--export", exports, "--count", "0", "--out", npy], "--count must be at least 1"),
        (["--export", exports, "--noise", noise_file, "--out", npy], "noise must have shape [N, 8], got [2, 5]"),
        (["--export", exports, "--noise", str(tmp_path / "ints.npy"), "--out", npy], "noise must be floating point"),
        (["--export", exports, "--out", str(tmp_path / "x.jpg")], "--out must end in .png or .npy"),
    ]:
        assert cli.main(["generate", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.strip().count("\n") == 0 and fragment in err, err
    assert cli.main(["export", "--model-dir", gan.model_dir, "--export-dir", exports,
                     "--set", "model.z_dim=9"]) == 2
    assert "export cannot change the architecture (model.z_dim" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    assert cli.main(["export", "--model-dir", gan.model_dir, "--export-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "a_file" in err and "not a directory" in err and a_file.read_text() == "not a directory"

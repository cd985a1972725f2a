"""The public Python API: custom networks (Keras and tf.compat.v1.layers, both with batch norm)
and custom losses end to end, import-path resolution and its errors, the input builders, and the
public surface the README documents."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

import custom_nets
import estimator_gan as eg
from conftest import REPO_ROOT, SHARED_MNIST, array_input_fn, tiny_config, tiny_images
from estimator_gan import cli
from estimator_gan.model import gan as gan_lib
from estimator_gan.model import model_fns
from test_cli import run_train

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys
pytestmark = pytest.mark.filterwarnings("ignore:`tf.layers.*is deprecated:UserWarning")

PAIRS = {
    # Keras models wrapped here, so not importable: they reach the model_fns through `params`.
    # The tf.compat.v1.layers functions are given as import paths, recorded in the config.
    "keras": dict(generator_fn=eg.keras_network(custom_nets._keras_generator),
                  discriminator_fn=eg.keras_network(custom_nets._keras_discriminator)),
    "v1_layers": dict(generator_fn="custom_nets:v1_generator",
                      discriminator_fn="custom_nets:v1_discriminator"),
}


def _params(tmp_path, **kwargs):
    return eg.GAN(tiny_config(), model_dir=str(tmp_path), **kwargs).params


def _build(model_fn, mode, features, params):
    graph = tf.Graph()
    with graph.as_default():
        v1.train.create_global_step()
        spec = model_fn(tf.constant(features), None, mode, params)
    return graph, spec


def _names(graph, scope):
    return sorted(v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope=scope + "/"))


# ---------------------------------------------------------------- public surface


def _readme_api_names():
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("### Public API", 1)[1].split("\n## ", 1)[0]
    return sorted(set(re.findall(r"^\| `([A-Za-z_]+)", section, flags=re.M)))


def test_dir_is_exactly_the_documented_public_api():
    documented = _readme_api_names()
    assert documented, "README has no Public API table"
    assert sorted(set(dir(eg)) - {"__version__"}) == documented
    for name in documented:
        obj = getattr(eg, name)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_importing_the_package_does_not_import_tensorflow():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, estimator_gan; print('tensorflow' in sys.modules)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eg.nope  # noqa: B018


# ---------------------------------------------------------------- custom networks in the graph


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_custom_pair_shares_weights_between_calls_and_graphs(pair, tmp_path):
    params = _params(tmp_path, loss="wasserstein", **PAIRS[pair])  # GP: a 4th D call per update
    once, _ = _build(model_fns.discriminator_model_fn, ModeKeys.PREDICT, tiny_images(4), params)
    g_once, _ = _build(model_fns.generator_model_fn, ModeKeys.PREDICT, np.zeros((4, 8), np.float32), params)
    train, _ = _build(model_fns.gan_model_fn, ModeKeys.TRAIN, tiny_images(8)[None, None], params)
    d_vars, g_vars = _names(once, "discriminator"), _names(g_once, "generator")
    assert any("moving_mean" in n for n in d_vars) and any("moving_mean" in n for n in g_vars)
    train_d = [n for n in _names(train, "discriminator") if "D_Adam" not in n]
    train_g = [n for n in _names(train, "generator") if "G_Adam" not in n]
    # Same variables whether D is called once (PREDICT) or four times (TRAIN), and the same
    # names in every graph, so checkpoints restore across the three Estimators (PREDICT reads
    # G's EMA shadows where the generator keeps them).
    assert train_d == d_vars and set(g_vars) <= set(train_g)


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_custom_pair_update_changes_only_its_own_network_and_bn_stats(pair, role, tmp_path):
    params = _params(tmp_path, **PAIRS[pair])
    model_fn = model_fns.generator_model_fn if role == "generator" else model_fns.discriminator_model_fn
    graph, spec = _build(model_fn, ModeKeys.TRAIN, tiny_images(8), params)
    other = "discriminator" if role == "generator" else "generator"
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        variables = {s: [v for v in v1.global_variables() if v.op.name.startswith(s + "/")
                         and "Adam" not in v.op.name] for s in (role, other)}
        before = {s: sess.run(vs) for s, vs in variables.items()}
        sess.run(spec.train_op)
        after = {s: sess.run(vs) for s, vs in variables.items()}
    changed = {s: {v.op.name for v, a, b in zip(variables[s], before[s], after[s]) if not np.array_equal(a, b)}
               for s in variables}
    assert not changed[other], f"{role} update changed {other} variables {changed[other]}"
    own_stats = {v.op.name for v in variables[role] if "moving_" in v.op.name}
    assert own_stats and own_stats <= changed[role], "own batch-norm statistics were not updated"
    assert any("kernel" in n for n in changed[role])


def test_conditional_keras_generator_gets_the_labels(tmp_path):
    params = eg.GAN(tiny_config("model.conditional=true"), model_dir=str(tmp_path),
                    generator_fn=custom_nets.conditional_keras_generator).params
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        noise = tf.constant(np.zeros((2, 8), np.float32))
        spec = model_fns.generator_model_fn({"noise": noise, "labels": tf.constant([3, 7])}, None,
                                            ModeKeys.PREDICT, params)
        sess.run(v1.global_variables_initializer())
        samples = sess.run(spec.predictions["samples"])
    assert samples.shape == (2, 8, 8, 1)
    assert not np.allclose(samples[0], samples[1])  # same noise, different labels
    with pytest.raises(ValueError, match="model.conditional is .* no labels"):
        _build(model_fns.generator_model_fn, ModeKeys.PREDICT, np.zeros((2, 8), np.float32), params)


def test_raw_keras_layers_are_refused_with_a_clear_error(tmp_path):
    params = _params(tmp_path, discriminator_fn=custom_nets.raw_keras_discriminator)
    with pytest.raises(eg.NetworkError, match=r"discriminator made (variables outside|new variables).*keras_network"):
        _build(model_fns.gan_model_fn, ModeKeys.TRAIN, tiny_images(8)[None, None], params)


def test_generator_of_the_wrong_shape_is_refused(tmp_path):
    params = _params(tmp_path, generator_fn=custom_nets.wrong_shape_generator)
    with pytest.raises(eg.NetworkError, match=r"shape \[2, 4, 4, 1\]; expected \[batch, 8, 8, 1\]"):
        _build(model_fns.generator_model_fn, ModeKeys.PREDICT, np.zeros((2, 8), np.float32), params)


def test_input_of_another_shape_than_the_model_is_refused(tmp_path):
    gan = eg.GAN(tiny_config(), model_dir=str(tmp_path))
    odd = np.zeros((16, 16, 16, 1), np.float32)
    with pytest.raises(eg.ConfigError, match=r"shape \[16, 16, 1\] but model.sample_shape is \[8, 8, 1\]"):
        gan.train(input_fn=array_input_fn(odd), max_steps=1, progress=False)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_custom_pair_trains_predicts_exports_and_reloads(pair, tmp_path):
    model_dir = str(tmp_path / "run")
    gan = eg.GAN(tiny_config(), model_dir=model_dir, loss="hinge", **PAIRS[pair])
    assert gan.train(input_fn=array_input_fn(tiny_images()), max_steps=2, progress=False) == 2
    samples = gan.generate(5, seed=3)
    assert samples.shape == (5, 8, 8, 1) and np.abs(samples).max() <= 1.0
    np.testing.assert_allclose(gan.generate(5, seed=3), samples, atol=1e-6)

    saved = yaml.safe_load(open(os.path.join(model_dir, "config.yaml")))
    assert saved["loss"]["name"] == "hinge"
    if pair == "v1_layers":  # import paths are recorded, so the model_dir alone rebuilds the run
        assert saved["model"]["generator_fn"] == "custom_nets:v1_generator"
        resumed = eg.GAN(eg.load_config(os.path.join(model_dir, "config.yaml")), model_dir=model_dir)
        np.testing.assert_allclose(resumed.generate(5, seed=3), samples, atol=1e-6)

    def receiver():
        noise = v1.placeholder(tf.float32, [None, 8], name="noise")
        return tf.estimator.export.ServingInputReceiver({"noise": noise}, {"noise": noise})

    export_dir = gan.generator_estimator.export_saved_model(str(tmp_path / "export"), receiver)
    names = [n for n, _ in tf.train.list_variables(os.path.join(export_dir.decode(), "variables", "variables"))]
    assert names and all(n.startswith("generator/") or n == "global_step" for n in names)
    serve = tf.saved_model.load(export_dir.decode()).signatures["serving_default"]
    noise = np.random.RandomState(3).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(serve(noise=tf.constant(noise))["samples"].numpy(), samples, atol=1e-5)


def test_custom_loss_drives_training(tmp_path):
    """A pair of callables whose D loss has zero gradient: G learns, D does not move."""
    model_dir = str(tmp_path)
    loss = (custom_nets.frozen_discriminator_loss, custom_nets.plain_generator_loss)
    gan = eg.GAN(tiny_config(), model_dir=model_dir, loss=loss)
    gan.train(input_fn=array_input_fn(tiny_images()), max_steps=1, progress=False)
    first = tf.train.latest_checkpoint(model_dir)
    d_before = {n: tf.train.load_variable(first, n) for n, _ in tf.train.list_variables(first)
                if n.startswith("discriminator/") and "Adam" not in n
                and not n.endswith("/sn_u")}  # power iteration advances on every D update
    g_before = tf.train.load_variable(first, "generator/project/kernel")
    gan.train(input_fn=array_input_fn(tiny_images()), max_steps=3, progress=False)
    last = tf.train.latest_checkpoint(model_dir)
    for name, value in d_before.items():
        np.testing.assert_array_equal(tf.train.load_variable(last, name), value)
    assert not np.array_equal(tf.train.load_variable(last, "generator/project/kernel"), g_before)


def test_importable_networks_are_recorded_in_the_config_and_others_passed_as_params(tmp_path):
    gan = eg.GAN(tiny_config(), model_dir=str(tmp_path), generator_fn=custom_nets.keras_generator,
                 discriminator_fn=PAIRS["keras"]["discriminator_fn"])
    assert gan.config.model.generator_fn == "custom_nets:keras_generator"
    assert gan.config.model.discriminator_fn == "in-script:_keras_discriminator"  # not importable
    assert "generator_fn" not in gan.params and gan.params["discriminator_fn"] is PAIRS["keras"]["discriminator_fn"]


def test_registered_and_import_path_losses_are_recorded_in_the_config(tmp_path):
    if "test_api_loss" not in eg.registered_losses():
        eg.register_loss("test_api_loss", custom_nets.frozen_discriminator_loss, custom_nets.plain_generator_loss)
    assert eg.GAN(tiny_config(), model_dir=str(tmp_path), loss="test_api_loss").config.loss.name == "test_api_loss"
    assert eg.get_loss("test_api_loss").generator_loss is custom_nets.plain_generator_loss
    by_path = eg.GAN(tiny_config("loss.name=custom_nets:frozen_d_loss"), model_dir=str(tmp_path))
    assert by_path.config.loss.name == "custom_nets:frozen_d_loss"
    assert gan_lib.GANParts.from_params(by_path.params).loss == custom_nets.frozen_d_loss


def test_loss_with_a_wrong_signature_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"generator_loss: <lambda>\(logits\) has the wrong signature"):
        eg.GAN(tiny_config(), model_dir=str(tmp_path),
               loss=(custom_nets.frozen_discriminator_loss, lambda logits: logits))
    with pytest.raises(TypeError, match="registered name, a GANLoss or a pair"):
        eg.GAN(tiny_config(), model_dir=str(tmp_path), loss=42)


SCRIPT = """
import sys
import tensorflow as tf
import estimator_gan as eg
{imports}
config = eg.load_config("digits_dcgan", ["data.image_size=8", "data.batch_size=8", "model.z_dim=8",
                                         "train.save_checkpoints_steps=2", "train.log_every_steps=2"])
gan = eg.GAN(config, model_dir=sys.argv[1], generator_fn=my_generator, discriminator_fn=my_discriminator)
gan.train(max_steps=2, progress=False)
{after}
"""
IN_SCRIPT = """
v1 = tf.compat.v1

def my_generator(noise, labels, mode, params):
    x = tf.reshape(v1.layers.dense(noise, 4 * 4 * 8), [-1, 4, 4, 8])
    return tf.tanh(v1.layers.conv2d_transpose(x, 1, 4, strides=2, padding="same"))

my_discriminator = lambda samples, labels, mode, params: v1.layers.dense(v1.layers.flatten(samples), 1)
"""


def _script_run(tmp_path, imports, after=""):
    """Train 2 steps through `eg.GAN` in a script of its own (networks in `__main__` or imported)."""
    script, model_dir = tmp_path / "train_gan.py", str(tmp_path / "run")
    script.write_text(SCRIPT.format(imports=imports, after=after))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests")]))
    result = subprocess.run([sys.executable, str(script), model_dir], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, yaml.safe_load(open(os.path.join(model_dir, "config.yaml")))["model"]


def test_a_run_with_in_script_networks_is_refused_by_the_cli_in_one_line(tmp_path, capsys):
    """Networks defined in the training script cannot be rebuilt by the command line: the saved
    config says so, and every command that would rebuild them refuses in one line naming what
    works (GAN.export from that script) instead of failing on the built-in networks' names."""
    exports = str(tmp_path / "script_exports")
    model_dir, saved = _script_run(tmp_path, IN_SCRIPT, after=f"gan.export({exports!r})")
    assert saved["generator_fn"] == "in-script:my_generator"
    assert saved["discriminator_fn"] == "in-script:<lambda>"
    for command in (["export", "--model-dir", model_dir, "--export-dir", str(tmp_path / "exports")],
                    ["generate", "--model-dir", model_dir, "--out", str(tmp_path / "x.npy")],
                    ["evaluate", "--model-dir", model_dir],
                    ["train", "--model-dir", model_dir, "--config", os.path.join(model_dir, "config.yaml")]):
        assert cli.main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error: model.generator_fn: ") and err.count("\n") == 1, err
        assert "my_generator" in err and "defined in the training script" in err and "GAN.export" in err, err
    assert not os.path.exists(tmp_path / "exports") and not os.path.exists(tmp_path / "x.npy")
    # What the script exported is served and evaluated without rebuilding the networks.
    assert cli.main(["generate", "--export", exports, "--count", "3", "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (3, 8, 8, 1)
    assert cli.main(["evaluate", "--model-dir", model_dir, "--export", exports, "--num-samples", "64",
                     "--set", "eval.classifier_epochs=1", "--set", "eval.kid_subset_size=32"]) == 0


def test_a_run_with_imported_networks_is_exported_by_the_cli(tmp_path, capsys):
    model_dir, saved = _script_run(tmp_path, "from custom_nets import v1_generator as my_generator, "
                                             "v1_discriminator as my_discriminator")
    assert saved["generator_fn"] == "custom_nets:v1_generator"
    assert saved["discriminator_fn"] == "custom_nets:v1_discriminator"
    code = cli.main(["export", "--model-dir", model_dir, "--export-dir", str(tmp_path / "exports")])
    assert code == 0, capsys.readouterr().err
    assert os.path.exists(tmp_path / "exports" / "generator" / "1" / "saved_model.pb")


# ---------------------------------------------------------------- import paths


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:gen", r"model.generator_fn: cannot import 'no_such_module_xyz' for 'no_such_module_xyz:gen'"),
    ("custom_nets:nothing", r"model.generator_fn: 'custom_nets:nothing' does not resolve: module 'custom_nets' has no attribute 'nothing'"),
    ("custom_nets.v1_generator", r"model.generator_fn: 'custom_nets.v1_generator' is not an import path of the form 'package.module:name'"),
    ("custom_nets:wrong_signature", r"model.generator_fn 'custom_nets:wrong_signature': wrong_signature\(noise, mode\) has the wrong signature; expected fn\(noise, labels, mode, params\)"),
    ("custom_nets:TRAIN", r"model.generator_fn 'custom_nets:TRAIN' must be callable"),
])
def test_bad_network_import_paths_give_one_line_errors(path, message, tmp_path):
    with pytest.raises(eg.ConfigError, match=message) as info:
        eg.GAN(tiny_config(f"model.generator_fn={path}"), model_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_bad_loss_import_path_is_a_config_error(tmp_path):
    with pytest.raises(eg.ConfigError, match=r"loss.name: 'custom_nets:nothing' does not resolve"):
        eg.GAN(tiny_config("loss.name=custom_nets:nothing"), model_dir=str(tmp_path))
    with pytest.raises(eg.ConfigError, match="unknown loss 'nope'"):
        tiny_config("loss.name=nope")


def test_cli_reports_a_bad_network_path_in_one_line(tmp_path):
    out = run_train("--model-dir", str(tmp_path), "--set", "model.discriminator_fn=my_pkg.nets:my_discriminator",
                    timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: model.discriminator_fn: cannot import 'my_pkg.nets' for "
        "'my_pkg.nets:my_discriminator': No module named 'my_pkg'"]


# ---------------------------------------------------------------- input builders


def test_input_builders_yield_the_documented_batches():
    ds = eg.digits_input_fn(batch_size=4, seed=1)()
    features, labels = next(iter(ds))
    assert features.shape == (4, 16, 16, 1) and features.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    points, modes = next(iter(eg.mixture_input_fn(kind="grid", modes=4, batch_size=3, num_examples=12)()))
    assert points.shape == (3, 2) and int(tf.reduce_max(modes)) < 4
    with pytest.raises(eg.ConfigError, match="invalid digits_input_fn option: batch_size"):
        eg.digits_input_fn(batch_size=0)
    with pytest.raises(eg.DataError):
        eg.npy_input_fn("/nonexistent/x.npy")


# ---------------------------------------------------------------- examples and docs


def _run_example(name, *args, timeout=240):
    """As a user runs it after `pip install -e .`: this checkout's package is importable."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, os.path.join("examples", name), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_custom_loss_example_runs(tmp_path):
    out = _run_example("custom_loss.py", "--steps", "3", "--model-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done: step 3" in out.stdout
    assert yaml.safe_load(open(tmp_path / "config.yaml"))["loss"]["name"] == "r1_non_saturating"


def test_custom_network_example_runs_on_mnist(tmp_path):
    if not os.path.isdir(SHARED_MNIST):
        pytest.skip(f"MNIST files not found at {SHARED_MNIST}")
    out = _run_example("custom_network.py", "--steps", "3", "--model-dir", str(tmp_path),
                       "--data", SHARED_MNIST)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done: step 3" in out.stdout
    assert (tmp_path / "generated.png").is_file()


def test_generated_docs_are_up_to_date():
    from estimator_gan import docs

    for path, text in docs.generated_files().items():
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
            assert f.read() == text, f"{path} is stale: run `python -m estimator_gan.docs`"

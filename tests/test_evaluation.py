"""Evaluation end to end: the data split, 2D mode metrics in EVAL, the per-checkpoint listener,
and `estimator-gan evaluate` on tiny trained models (real TensorFlow, tiny sizes)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO_ROOT, tiny_config
from estimator_gan import cli
from estimator_gan import config as config_lib
from estimator_gan.data import pipeline
from estimator_gan.evaluation import evaluate as ev
from estimator_gan.evaluation import metrics, report
from estimator_gan.model import eval_metrics as metric_ops
from estimator_gan.gan import GAN

# Keras 2.15 seeds its initializers with random.randint(1, 1e9).
pytestmark = pytest.mark.filterwarnings("ignore:non-integer arguments to randrange")

TINY_EVAL = ["eval.num_samples=64", "eval.classifier_epochs=1", "eval.kid_subset_size=32",
             "eval.kid_num_subsets=3", "eval.eval_batches=2"]


def _digits_config(*overrides):
    return tiny_config("data.source=digits", "model.sample_shape=null", "data.image_size=8",
                       *TINY_EVAL, *overrides)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits GAN trained 4 steps (checkpoints at 0, 2, 4), evaluated every 2nd one."""
    model_dir = str(tmp_path_factory.mktemp("digits"))
    gan = GAN(_digits_config("eval.every_checkpoints=2", "data.split.fraction=0.5"),
                       model_dir=model_dir)
    gan.train(progress=False)
    return gan


def _events(model_dir):
    out = {}
    for name in os.listdir(model_dir):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(model_dir, name)):
                for value in event.summary.value:
                    out.setdefault(value.tag, []).append((event.step, value))
    return out


def test_data_split_parts_are_disjoint_complementary_and_seeded():
    cfg = tiny_config("data.source=digits", "data.split.fraction=0.3", "data.split.seed=5").data
    first, y_first = pipeline.load_examples(cfg)
    second, _ = pipeline.load_examples(cfg.model_copy(update={"split": cfg.split.complement()}))
    full, _ = pipeline.load_examples(cfg.model_copy(update={"split": None}))
    assert len(first) == round(0.3 * len(full)) and len(first) + len(second) == len(full)
    rows = {r.tobytes() for r in full}
    assert {r.tobytes() for r in first} | {r.tobytes() for r in second} == rows
    assert np.array_equal(pipeline.load_examples(cfg)[0], first)
    other_seed, _ = pipeline.load_examples(cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 6})}))
    assert not np.array_equal(other_seed, first)
    assert len(y_first) == len(first)


def test_mixture_metric_ops_match_numpy_on_true_mixture_and_one_mode():
    cfg = tiny_config(architecture="mlp").data.mixture
    centres, k = np.asarray(cfg.centres()), len(cfg.centres())
    rng = np.random.default_rng(0)
    true_mix = centres[rng.integers(k, size=800)] + rng.normal(0, cfg.std, (800, 2))
    one_mode = centres[[3] * 800] + rng.normal(0, cfg.std, (800, 2))
    far = np.full((40, 2), 100.0)
    for points, modes, kl in ((true_mix, k, None), (one_mode, 1, math.log(k)), (far, 0, None)):
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            batch = tf.compat.v1.placeholder(tf.float32, [None, 2])
            ops = metric_ops.mixture_metric_ops(batch, centres, cfg.std)
            sess.run(tf.compat.v1.local_variables_initializer())
            for chunk in np.array_split(points, 5):
                sess.run([u for _, u in ops.values()], {batch: chunk})
            got = sess.run({name: v for name, (v, _) in ops.items()})
        want = metrics.mixture_mode_metrics(points, centres, cfg.std)
        assert got["mixture/modes_covered"] == want["modes_covered"] == modes
        assert got["mixture/high_quality_share"] == pytest.approx(want["high_quality_share"], abs=1e-6)
        if modes:
            assert got["mixture/kl_to_uniform"] == pytest.approx(want["kl_to_uniform"], abs=1e-5)
        else:
            assert math.isnan(got["mixture/kl_to_uniform"])
        if kl is not None:
            assert got["mixture/kl_to_uniform"] == pytest.approx(kl, abs=1e-5)


def test_mixture_model_reports_mode_metrics_in_eval_and_against_real_reference(tmp_path):
    gan = GAN(tiny_config("train.max_steps=2", *TINY_EVAL, architecture="mlp"),
                       model_dir=str(tmp_path))
    gan.train(progress=False)
    result = gan.evaluate(steps=2)
    num_modes = gan.config.data.mixture.modes
    assert 0 <= result["mixture/modes_covered"] <= num_modes
    assert 0.0 <= result["mixture/high_quality_share"] <= 1.0
    assert "loss/generator" in result and "discriminator/accuracy_real" in result

    record = ev.evaluate_checkpoint(gan.generate, ev.SampleMetrics(gan.config, gan.model_dir),
                                    tf.train.latest_checkpoint(gan.model_dir),
                                    lambda path: gan.evaluate(steps=2, checkpoint_path=path))
    assert record["kind"] == "mixture" and record["step"] == 2
    assert record["reference"]["modes_covered"] == num_modes
    assert record["reference"]["high_quality_share"] > 0.95
    assert record["estimator"]["mixture/modes_covered"] == result["mixture/modes_covered"]
    paths = report.write_plots(gan.model_dir, gan.config, record)
    scatter = Image.open(paths[-1])
    assert paths[-1].endswith("samples_step_00000002.png") and scatter.size == (400, 400)


def test_listener_records_metrics_per_checkpoint_with_tensorboard_scalars_and_images(digits_run):
    model_dir = digits_run.model_dir
    history = ev.read_history(model_dir)
    assert [r["step"] for r in history] == [0, 4]
    for record in history:
        assert record["kind"] == "classifier" and record["num_samples"] == 64
        assert set(record["metrics"]) == set(record["reference"]) == {
            "frechet_distance", "kid", "kid_std", "classifier_score", "classifier_score_std",
            "min_class_share"}
        assert 0.0 <= record["metrics"]["min_class_share"] <= 0.1  # 10 classes: the rarest <= 1/10
        assert 0.0 <= record["reference"]["min_class_share"] <= 0.1
        assert record["metrics"]["frechet_distance"] > record["reference"]["frechet_distance"]
    events = _events(model_dir)
    assert [s for s, _ in events["eval/frechet_distance"]] == [0, 4]
    assert [s for s, _ in events["eval_reference/kid"]] == [0, 4]
    assert sorted(s for s, _ in events["images/generated"]) == [0, 2, 4]
    real_png = events["images/real"][0][1].image
    assert real_png.encoded_image_string.startswith(b"\x89PNG") and real_png.height > 8
    assert "loss/discriminator" in events and "steps/generator" in events
    classifiers = os.listdir(os.path.join(model_dir, ev.EVAL_DIR))
    assert sum(n.startswith("feature_classifier-") for n in classifiers) == 1


def test_evaluate_command_prints_table_and_writes_eval_json_and_plots(digits_run):
    model_dir = digits_run.model_dir
    result = subprocess.run(
        [sys.executable, "-m", "estimator_gan", "evaluate", "--model-dir", model_dir, "--plot"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "feature classifier: loading" in out  # trained once, by the listener
    assert "real reference" in out and "frechet_distance" in out and "discriminator/accuracy_real" in out
    saved = json.load(open(os.path.join(model_dir, "eval.json")))
    assert saved["step"] == 4 and saved["source"] == "checkpoint" and saved["num_samples"] == 64
    assert set(saved["metrics"]) >= {"frechet_distance", "kid", "classifier_score"}
    assert saved["reference"]["frechet_distance"] < saved["metrics"]["frechet_distance"]
    assert 1.0 <= saved["metrics"]["classifier_score"] <= 10.0
    assert set(saved["estimator"]) >= {"loss/discriminator", "loss/generator",
                                       "discriminator/accuracy_real", "discriminator/accuracy_fake",
                                       "discriminator/probability_real", "discriminator/probability_fake"}
    assert saved["feature_extractor"]["kind"] == "classifier"
    assert 0.0 <= saved["feature_extractor"]["classifier_accuracy_on_gan_part"] <= 1.0
    # The same checkpoint and seed give the same numbers as the in-training evaluation.
    listener_record = [r for r in ev.read_history(model_dir) if r["step"] == 4][0]
    assert saved["metrics"]["frechet_distance"] == pytest.approx(
        listener_record["metrics"]["frechet_distance"], rel=1e-4)
    curves = Image.open(os.path.join(model_dir, ev.EVAL_DIR, "metrics.png"))
    assert curves.width > 800 and len(set(curves.convert("L").getdata())) > 10
    assert os.path.isfile(os.path.join(model_dir, ev.EVAL_DIR, "samples_step_00000004.png"))


def test_evaluate_export_reads_the_projects_export_at_its_highest_version(digits_run, tmp_path, capsys):
    """`evaluate --export` takes what `generate --export` takes (an export dir, its generator/
    dir, one version), picks version 10 over 9, and draws the same samples as the checkpoint."""
    gan = digits_run
    exports = tmp_path / "exports"
    plain = GAN(config_lib.config_from_dict(gan.config.to_dict(), ["export.standing_statistics=false"]),
                model_dir=gan.model_dir)
    plain.export(str(exports), checkpoint_path=os.path.join(gan.model_dir, "model.ckpt-2"))
    plain.export(str(exports))  # version 2: step 4, the latest checkpoint
    for part in ("generator", "discriminator"):
        os.rename(exports / part / "1", exports / part / "9")
        os.rename(exports / part / "2", exports / part / "10")
    from_export = ev.export_samples(str(exports), gan.config)
    np.testing.assert_allclose(from_export, gan.generate(len(from_export), seed=gan.config.eval.seed),
                               atol=1e-5)
    for where in (exports, exports / "generator", exports / "generator" / "10"):
        output = str(tmp_path / "export_eval.json")
        assert cli.main(["evaluate", "--model-dir", gan.model_dir, "--export", str(where),
                         "--output", output]) == 0
        saved = json.load(open(output))
        assert saved["source"] == "export" and saved["step"] is None
        assert saved["export"] == str(exports / "generator" / "10") and "frechet_distance" in saved["metrics"]
        assert "real reference" in capsys.readouterr().out

    other = tmp_path / "other"
    other.mkdir()
    config_lib.save_config(config_lib.config_from_dict(gan.config.to_dict(), ["model.z_dim=9"]), str(other))
    assert cli.main(["evaluate", "--model-dir", str(other), "--export", str(exports)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "takes noise of 8 values" in err and "model.z_dim 9" in err


@pytest.mark.parametrize("args, fragment", [
    (["--export", "/nonexistent/export"], "export not found: /nonexistent/export"),
    (["--checkpoint", "/nonexistent/model.ckpt-3"], "checkpoint not found"),
    (["--set", "eval.num_samples=5000"], "eval.num_samples=5000 needs at least 5002"),
])
def test_evaluate_bad_input_is_one_line_error(digits_run, args, fragment, capsys):
    assert cli.main(["evaluate", "--model-dir", digits_run.model_dir, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and fragment in err, err


def test_evaluate_refuses_a_directory_that_is_not_a_model_dir(tmp_path, capsys):
    assert cli.main(["evaluate", "--model-dir", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


def test_unlabelled_images_use_the_pixel_features(tmp_path):
    digits, _ = pipeline.load_examples(tiny_config("data.source=digits", "data.image_size=8").data)
    path = str(tmp_path / "digits.npy")
    np.save(path, digits)
    config = tiny_config("data.source=npy", f"data.path={path}", "model.sample_shape=null",
                         "eval.num_samples=200", "eval.kid_subset_size=100")
    sample_metrics = ev.SampleMetrics(config_lib.resolve(config), str(tmp_path))
    noise = np.random.default_rng(0).uniform(-1, 1, (200, 8, 8, 1))
    model, reference = sample_metrics(noise)
    assert sample_metrics.kind == "pixels" and "classifier_score" not in model
    assert set(model) == set(reference) == {"frechet_distance", "kid", "kid_std"}
    assert model["frechet_distance"] > 10 * reference["frechet_distance"]
    assert model["kid"] > reference["kid"]

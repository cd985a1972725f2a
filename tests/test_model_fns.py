"""The three model_fns on real TensorFlow: per-mode specs, var_list separation, weight sharing,
batch norm, optimizer state naming and checkpoint interchange."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import array_input_fn, tiny_config, tiny_images
from estimator_gan.gan import GAN
from estimator_gan.model import gan as gan_lib
from estimator_gan.model import model_fns

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys


def _graph_spec(model_fn, mode, features, labels=None, config=None):
    graph = tf.Graph()
    with graph.as_default():
        v1.train.create_global_step()
        spec = model_fn(tf.constant(features), labels, mode, {"config": config or tiny_config()})
    return graph, spec


def _var_names(graph, key=v1.GraphKeys.GLOBAL_VARIABLES):
    return sorted(v.op.name for v in graph.get_collection(key))


def test_generator_predict_builds_only_generator():
    graph, spec = _graph_spec(model_fns.generator_model_fn, ModeKeys.PREDICT, np.zeros((3, 8), np.float32))
    assert spec.predictions["samples"].shape.as_list() == [3, 8, 8, 1]
    assert set(spec.export_outputs) == {"serving_default", "noise"}
    names = _var_names(graph)
    assert names and all(n.startswith("generator/") or n == "global_step" for n in names)
    assert not any("Adam" in n for n in names)


def test_discriminator_predict_builds_only_discriminator():
    graph, spec = _graph_spec(model_fns.discriminator_model_fn, ModeKeys.PREDICT, tiny_images(5))
    assert spec.predictions["logits"].shape.as_list() == [5]
    assert spec.predictions["probabilities"].shape.as_list() == [5]
    assert "serving_default" in spec.export_outputs
    names = _var_names(graph)
    assert names and all(n.startswith("discriminator/") or n == "global_step" for n in names)


@pytest.mark.parametrize("model_fn", [model_fns.generator_model_fn, model_fns.discriminator_model_fn])
def test_eval_spec_reports_losses_and_discriminator_metrics(model_fn):
    _, spec = _graph_spec(model_fn, ModeKeys.EVAL, tiny_images(8))
    assert set(spec.eval_metric_ops) == {
        "loss/discriminator", "loss/generator", "discriminator/accuracy_real",
        "discriminator/accuracy_fake", "discriminator/probability_real", "discriminator/probability_fake"}
    assert spec.loss.shape.rank == 0


@pytest.mark.parametrize("model_fn", [model_fns.generator_model_fn, model_fns.discriminator_model_fn])
def test_train_graphs_hold_both_networks_optimizers_and_counters(model_fn):
    graph, spec = _graph_spec(model_fn, ModeKeys.TRAIN, tiny_images(8))
    names = _var_names(graph)
    for expected in ("generator_step", "discriminator_step", "global_step", "G_train/beta1_power",
                     "D_train/beta1_power", "generator/project/kernel/G_Adam",
                     "discriminator/logit/kernel/D_Adam"):
        assert expected in names
    assert spec.train_op is not None


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        model_fns.generator_model_fn(None, None, "serve", {"config": tiny_config()})


def _values(session, variables):
    return {v.op.name: session.run(v) for v in variables}


@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_train_op_changes_only_its_own_network(role):
    model_fn = model_fns.generator_model_fn if role == "generator" else model_fns.discriminator_model_fn
    graph, spec = _graph_spec(model_fn, ModeKeys.TRAIN, tiny_images(8))
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        net_vars = v1.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope="generator/") + \
            v1.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope="discriminator/")
        before = _values(sess, net_vars)
        sess.run(spec.train_op)
        after = _values(sess, net_vars)
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed, "the train op changed nothing"
    assert all(n.startswith(role + "/") for n in changed), sorted(changed)
    if role == "generator":  # G's own batch-norm statistics move in its update
        assert any("moving_mean" in n for n in changed)


def test_orchestrated_step_updates_both_networks_and_counts_per_network():
    config = tiny_config("train.d_steps=2", "train.g_steps=1")
    graph, spec = _graph_spec(model_fns.gan_model_fn, ModeKeys.TRAIN,
                              np.stack([tiny_images(8), tiny_images(8, 1)])[None], config=config)
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for _ in range(3):
            sess.run(spec.train_op)
        counters = {name: sess.run(gan_lib.step_counter(name)) for name in
                    (gan_lib.GENERATOR_STEP, gan_lib.DISCRIMINATOR_STEP)}
        gstep = sess.run(v1.train.get_global_step())
        beta = {v.op.name: sess.run(v) for v in v1.global_variables() if "beta" in v.op.name}
    assert (gstep, counters["generator_step"], counters["discriminator_step"]) == (3, 3, 6)
    # Adam's bias correction: each optimizer's beta power is beta^(its own updates + 1).
    assert beta["G_train/beta1_power"] == pytest.approx(0.5 ** 4)
    assert beta["D_train/beta1_power"] == pytest.approx(0.5 ** 7)
    assert beta["D_train/beta2_power"] == pytest.approx(0.999 ** 7, rel=1e-5)


def test_discriminator_shares_weights_between_real_and_fake_branches(tmp_path):
    gan = GAN(tiny_config(), model_dir=str(tmp_path))
    real = tiny_images(8)
    gan.train(array_input_fn(tiny_images()), max_steps=2, progress=False)
    alone = np.array([p["logits"] for p in gan.discriminator_estimator.predict(
        lambda: tf.data.Dataset.from_tensor_slices(real).batch(8))])
    # The same D, built inside a TRAIN graph next to the fake branch, restored from the checkpoint.
    graph, spec = _graph_spec(model_fns.gan_model_fn, ModeKeys.TRAIN, real[None, None], config=gan.config)
    with graph.as_default():
        d_vars_train = v1.get_collection(v1.GraphKeys.TRAINABLE_VARIABLES, scope="discriminator/")
        parts = gan_lib.GANParts.from_params(gan.params)
        logits = parts.discriminator(tf.constant(real), None, ModeKeys.TRAIN).outputs
        assert len(v1.get_collection(v1.GraphKeys.TRAINABLE_VARIABLES, scope="discriminator/")) == len(d_vars_train)
        with v1.Session() as sess:
            v1.train.Saver().restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
            beside = sess.run(logits)
    np.testing.assert_allclose(alone, beside, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_train_and_predict_is_deterministic(tmp_path):
    gan = GAN(tiny_config(), model_dir=str(tmp_path))
    gan.train(array_input_fn(tiny_images()), max_steps=3, progress=False)
    ckpt = tf.train.latest_checkpoint(str(tmp_path))
    moving_mean = tf.train.load_variable(ckpt, "generator/project_bn/moving_mean")
    assert np.any(moving_mean != 0), "moving statistics never updated"
    first, second = gan.generate(6, seed=3), gan.generate(6, seed=3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, gan.generate(6, seed=4))
    # Inference does not depend on the batch: one row alone equals the same row in a batch.
    np.testing.assert_allclose(gan.generate(1, seed=3)[0], first[0], atol=1e-6)


def test_checkpoints_interchange_between_all_three_estimators(tmp_path):
    data = array_input_fn(tiny_images())
    d_dir, g_dir, gan_dir = (str(tmp_path / n) for n in ("d", "g", "gan"))
    GAN(tiny_config(), model_dir=d_dir).discriminator_estimator.train(data, max_steps=2)
    GAN(tiny_config(), model_dir=g_dir).generator_estimator.train(data, max_steps=2)
    GAN(tiny_config(), model_dir=gan_dir).train(data, max_steps=2, progress=False)
    keys = [sorted(name for name, _ in tf.train.list_variables(d)) for d in (d_dir, g_dir, gan_dir)]
    assert keys[0] == keys[1] == keys[2]
    assert {"generator_step", "discriminator_step", "global_step"} <= set(keys[0])

    # Train D, then G, then both, on one directory: each restores what the previous wrote.
    gan = GAN(tiny_config(), model_dir=d_dir)
    gan.generator_estimator.train(data, max_steps=4)
    gan.train(data, max_steps=6, progress=False)
    ckpt = tf.train.latest_checkpoint(d_dir)
    steps = {n: int(tf.train.load_variable(ckpt, n)) for n in ("global_step", "generator_step", "discriminator_step")}
    assert steps == {"global_step": 6, "generator_step": 4, "discriminator_step": 4}
    # D fine-tuned alone against the frozen G leaves G's weights untouched.
    g_before = tf.train.load_variable(ckpt, "generator/project/kernel")
    gan.discriminator_estimator.train(data, max_steps=8)
    ckpt = tf.train.latest_checkpoint(d_dir)
    np.testing.assert_array_equal(g_before, tf.train.load_variable(ckpt, "generator/project/kernel"))
    assert int(tf.train.load_variable(ckpt, "discriminator_step")) == 6
    assert np.all(np.isfinite(list(gan.evaluate(data, steps=2).values())))


def test_resume_continues_the_step_count(tmp_path):
    data = array_input_fn(tiny_images())
    assert GAN(tiny_config(), model_dir=str(tmp_path)).train(data, max_steps=3, progress=False) == 3
    gan = GAN(tiny_config(), model_dir=str(tmp_path))
    assert gan.global_step() == 3
    assert gan.train(data, max_steps=5, progress=False) == 5
    ckpt = tf.train.latest_checkpoint(str(tmp_path))
    assert int(tf.train.load_variable(ckpt, "generator_step")) == 5


def test_mlp_pair_on_points_with_every_loss(tmp_path):
    points = np.random.RandomState(0).normal(size=(64, 2)).astype(np.float32)
    for name in ("non_saturating", "minimax", "forward_kl", "wasserstein", "hinge", "least_squares"):
        gan = GAN(tiny_config(f"loss.name={name}", architecture="mlp"), model_dir=str(tmp_path / name))
        gan.train(array_input_fn(points), max_steps=2, progress=False)
        samples = gan.generate(5)
        assert samples.shape == (5, 2) and np.all(np.isfinite(samples))


@pytest.mark.parametrize("reuse_fakes", [False, True])
def test_generator_update_sees_the_discriminator_after_its_steps_update(reuse_fakes):
    """The G loss a step reports is G's loss through D *after* that step's D update (and,
    with `train.reuse_fakes`, on the fakes of that D update): recomputed here with D's
    updated weights it matches; with D's weights from before the step it does not."""
    config = tiny_config("model.generator.ema_decay=null", f"train.reuse_fakes={str(reuse_fakes).lower()}")
    graph = tf.Graph()
    with graph.as_default():
        v1.train.create_global_step()
        parts = gan_lib.GANParts.from_params({"config": config})
        ops = gan_lib.gan_train_ops(parts, tf.constant(tiny_images(8)[None, None]), None, 1, 1)
        # The noise of this step's G forward: the D update's (reused) or the G update's own.
        stream = (1, 0) if reuse_fakes else (2, 0)
        noise = gan_lib.stateless_normal([8, 8], gan_lib.fold(gan_lib.run_key(config), 0, *stream, 0))
        fake = parts.generator(noise, None, ModeKeys.TRAIN).outputs
        recomputed = parts.loss.generator_loss(parts.discriminator(fake, None, ModeKeys.TRAIN).outputs,
                                               config.loss)
        g_vars = v1.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope="generator/")
        d_vars = v1.get_collection(v1.GraphKeys.GLOBAL_VARIABLES, scope="discriminator/")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            g_before, d_before = sess.run(g_vars), sess.run(d_vars)
            reported = sess.run([ops.train_op, ops.losses.generator])[1]
            for var, value in zip(g_vars, g_before):
                var.load(value, sess)  # G as the step's G update saw it
            after_d_update = sess.run(recomputed)
            for var, value in zip(d_vars, d_before):
                var.load(value, sess)
            before_d_update = sess.run(recomputed)
    assert reported == pytest.approx(after_d_update, rel=1e-5, abs=1e-6)
    assert abs(reported - before_d_update) > 1e-5

"""Sample-quality features on real TensorFlow: conditional G/D, generator EMA, spectral norm,
packing, minibatch stddev, InfoGAN codes, augmentation, R1."""
import os

import numpy as np
import pytest
import tensorflow as tf

import custom_nets
from conftest import REPO_ROOT, array_input_fn, tiny_config, tiny_images
from estimator_gan import config as config_lib
from estimator_gan import sampling
from estimator_gan.errors import ExportError, NetworkError
from estimator_gan.evaluation import metrics as metrics_lib
from estimator_gan.gan import GAN
from estimator_gan.model import gan as gan_lib
from estimator_gan.model import info, layers, losses, model_fns, networks

v1 = tf.compat.v1
ModeKeys = tf.estimator.ModeKeys
EMA = gan_lib.EMA_SUFFIX
resolve_config = config_lib.resolve


def _conditional(*overrides, architecture="dcgan"):
    return tiny_config("model.conditional=true", "model.num_classes=3", *overrides,
                       architecture=architecture)


def _four_modes(*overrides):
    """A ring of four tight modes and an MLP pair that learns it in a few hundred steps."""
    return tiny_config(
        "data.mixture.modes=4", "data.mixture.std=0.05", "data.mixture.num_examples=4096",
        "data.batch_size=64", "model.generator.hidden_units=[32,32]",
        "model.discriminator.hidden_units=[32,32]", "train.generator_optimizer.learning_rate=0.002",
        "train.discriminator_optimizer.learning_rate=0.002", "train.save_checkpoints_steps=1000",
        *overrides, architecture="mlp")


def _variable(graph, name):
    (var,) = [v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES) if v.op.name == name]
    return var


def _run_network(config, role, inputs, labels, mode=ModeKeys.PREDICT):
    with tf.Graph().as_default():
        tf.random.set_seed(0)
        parts = gan_lib.GANParts.from_params({"config": config})
        label_t = None if labels is None else tf.constant(labels, tf.int32)
        out = getattr(parts, role)(tf.constant(inputs), label_t, mode).outputs
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return sess.run(out)


# ------------------------------------------------------------------------- conditional


@pytest.mark.parametrize("architecture", ["dcgan", "mlp"])
def test_labels_change_generator_and_discriminator_outputs(architecture):
    config = _conditional(architecture=architecture)
    noise = np.repeat(np.random.RandomState(0).standard_normal((1, 8)).astype(np.float32), 3, axis=0)
    samples = _run_network(config, "generator", noise, [0, 1, 2])
    assert not np.allclose(samples[0], samples[1]) and not np.allclose(samples[1], samples[2])
    same = np.repeat(samples[:1], 3, axis=0)
    logits = _run_network(config, "discriminator", same, [0, 1, 2])
    assert len(set(np.round(logits, 6))) == 3


def test_out_of_range_labels_fail_in_graph_with_a_readable_message():
    noise = np.zeros((2, 8), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be class ids in \[0, 3\)"):
        _run_network(_conditional(), "generator", noise, [1, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, 3\)"):
        _run_network(_conditional(), "discriminator", tiny_images(2), [-1, 0])
    with pytest.raises(ValueError, match="model.conditional is true but no labels"):
        _run_network(_conditional(), "generator", noise, None)


def test_conditional_config_takes_the_class_count_from_the_data():
    cfg = resolve_config(config_lib.load_config(None, ["model.conditional=true"]))
    assert cfg.model.num_classes == 10  # digits
    with pytest.raises(config_lib.ConfigError, match="model.conditional needs class labels.*images"):
        resolve_config(config_lib.load_config(None, [
            "model.conditional=true", "data.source=images", "data.path=/nonexistent"]))


@pytest.mark.slow
def test_conditional_generator_draws_the_requested_mode(tmp_path):
    """Each ring mode is a class: after brief training, label k puts samples near centre k."""
    config = _four_modes("model.conditional=true")
    gan = GAN(config, model_dir=str(tmp_path))
    assert gan.config.model.num_classes == 4
    gan.train(max_steps=600, progress=False)
    centres = np.asarray(config.data.mixture.centres())
    for label in range(4):
        points = gan.generate(200, seed=label, labels=label)
        nearest = np.argmin(np.linalg.norm(points[:, None] - centres[None], axis=-1), axis=1)
        assert np.mean(nearest == label) > 0.8, (label, np.bincount(nearest, minlength=4))
    with pytest.raises(ValueError, match="label 4 is out of range: this model has classes 0..3"):
        gan.generate(2, labels=4)
    with pytest.raises(ValueError, match="3 labels for 2 samples"):
        gan.generate(2, labels=[0, 1, 2])


# ------------------------------------------------------------------------- EMA


def test_ema_follows_the_decay_formula_after_each_generator_update():
    config = tiny_config("model.generator.ema_decay=0.5")
    graph = tf.Graph()
    with graph.as_default():
        v1.train.create_global_step()
        spec = model_fns.gan_model_fn(tf.constant(tiny_images(8)[None, None]), None, ModeKeys.TRAIN,
                                      {"config": config})
        weights = gan_lib.role_variables(gan_lib.GENERATOR)
        shadows = [_variable(graph, f"{w.op.name}/{EMA}") for w in weights]
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            shadow = sess.run(shadows)
            for w, s in zip(sess.run(weights), shadow):
                np.testing.assert_array_equal(w, s)  # starts at the initial weights
            for n in range(1, 13):
                sess.run(spec.train_op)
                w_now, s_now = sess.run(weights), sess.run(shadows)
                decay = min(0.5, (1.0 + n) / (10.0 + n))
                for w, s_prev, s in zip(w_now, shadow, s_now):
                    np.testing.assert_allclose(s, decay * s_prev + (1 - decay) * w, rtol=1e-5, atol=1e-7)
                shadow = s_now
    assert any(not np.allclose(w, s) for w, s in zip(w_now, s_now))


def test_inference_reads_ema_weights_unless_raw_is_chosen(tmp_path):
    gan = GAN(tiny_config(), model_dir=str(tmp_path))
    gan.train(array_input_fn(tiny_images()), max_steps=4, progress=False)
    raw_config = config_lib.config_from_dict(gan.config.to_dict(), ["model.generator.inference_weights=raw"])
    raw = GAN(raw_config, model_dir=str(tmp_path))
    ema_samples, raw_samples = gan.generate(4, seed=1), raw.generate(4, seed=1)
    assert not np.allclose(ema_samples, raw_samples, atol=1e-4)
    # The PREDICT graph holds the shadows in place of the raw weights (so does an export).
    for g, marker in ((gan, True), (raw, False)):
        graph = tf.Graph()
        with graph.as_default():
            g.generator_estimator.model_fn(np.zeros((2, 8), np.float32), None, ModeKeys.PREDICT, None)
        names = [v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES) if "kernel" in v.op.name]
        assert names and all(n.endswith(EMA) == marker for n in names), names
    # The EMA generator has its own batch-norm statistics, measured with the EMA weights.
    ckpt = tf.train.latest_checkpoint(str(tmp_path))
    raw_mean = tf.train.load_variable(ckpt, "generator/project_bn/moving_mean")
    ema_mean = tf.train.load_variable(ckpt, f"generator/project_bn/moving_mean/{EMA}")
    assert np.any(ema_mean != 0) and not np.allclose(raw_mean, ema_mean)


def test_no_ema_keeps_no_shadow_variables(tmp_path):
    gan = GAN(tiny_config("model.generator.ema_decay=null"), model_dir=str(tmp_path))
    gan.train(array_input_fn(tiny_images()), max_steps=2, progress=False)
    names = [n for n, _ in tf.train.list_variables(str(tmp_path))]
    assert not any(EMA in n for n in names)
    assert gan.generate(2).shape == (2, 8, 8, 1)


# ------------------------------------------------------------------------- spectral norm


def test_spectral_norm_power_iteration_converges_to_unit_largest_singular_value():
    kernel_value = np.random.RandomState(0).standard_normal((20, 12)).astype(np.float32) * 3.0
    with tf.Graph().as_default():
        with v1.variable_scope("layer"):
            kernel = v1.get_variable("kernel", initializer=kernel_value)
            normalized = layers.spectral_normalize(kernel, training=True)
        (u,), (u_new,) = (v1.get_collection(layers.SPECTRAL_NORM_VECTORS),
                          v1.get_collection(layers.SPECTRAL_NORM_UPDATES))
        step = v1.assign(u, u_new)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            first = np.linalg.svd(sess.run(normalized), compute_uv=False)[0]
            for _ in range(50):
                sess.run(step)
            top = np.linalg.svd(sess.run(normalized), compute_uv=False)[0]
    assert first > 1.0001  # one step from a random u underestimates sigma
    assert top == pytest.approx(1.0, abs=1e-3)


def _np_power_step(u, kernel):
    w = kernel.reshape(-1, kernel.shape[-1])
    v = u @ w.T
    v /= np.linalg.norm(v)
    u_new = v @ w
    return u_new / np.linalg.norm(u_new)


def _train_op_moves_u(model_fn, features, config):
    """(u before, W before, u after) of one run of `model_fn`'s train op from initial values."""
    graph = tf.Graph()
    with graph.as_default():
        v1.train.create_global_step()
        spec = model_fn(tf.constant(features), None, ModeKeys.TRAIN, {"config": config})
        u = _variable(graph, "discriminator/conv0/sn_u")
        kernel = _variable(graph, "discriminator/conv0/kernel")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            u0, w0 = sess.run([u, kernel])
            sess.run(spec.train_op)
            return u0, w0, sess.run(u)


def test_spectral_norm_vectors_advance_once_per_discriminator_update_only():
    config = tiny_config("model.discriminator.spectral_norm=true", "loss.name=wasserstein")
    u0, _, after_g = _train_op_moves_u(model_fns.generator_model_fn, tiny_images(8), config)
    np.testing.assert_array_equal(after_g, u0)  # a G update leaves u alone
    two_d_steps = config.model_copy(update={"train": config.train.model_copy(update={"d_steps": 2})})
    u0, w0, u2 = _train_op_moves_u(model_fns.gan_model_fn,
                                   np.stack([tiny_images(8), tiny_images(8, 1)])[None], two_d_steps)
    # two D updates: two power steps, each from that update's W
    u1 = _np_power_step(u0, w0)
    assert not np.allclose(u2, u1)
    assert np.linalg.norm(u2 - _np_power_step(u1, w0)) < 0.05  # W moved a little in between


def test_trained_spectral_norm_discriminator_has_unit_operator_norm_estimates(tmp_path):
    gan = GAN(tiny_config("model.discriminator.spectral_norm=true", architecture="mlp"),
              model_dir=str(tmp_path))
    gan.train(max_steps=60, progress=False)
    ckpt = tf.train.latest_checkpoint(str(tmp_path))
    for layer in ("hidden0", "logit"):
        w = tf.train.load_variable(ckpt, f"discriminator/{layer}/kernel")
        u = tf.train.load_variable(ckpt, f"discriminator/{layer}/sn_u")
        v = u @ w.T
        v /= np.linalg.norm(v)
        sigma = float(v @ w @ _np_power_step(u, w).T)
        assert np.linalg.svd(w / sigma, compute_uv=False)[0] == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------- checkpoints


def test_checkpoints_interchange_with_ema_spectral_norm_and_labels(tmp_path):
    config = _conditional("model.discriminator.spectral_norm=true")
    labels = np.arange(64, dtype=np.int32) % 3
    data = array_input_fn(tiny_images(), labels)
    dirs = [str(tmp_path / n) for n in ("d", "g", "gan")]
    GAN(config, model_dir=dirs[0]).discriminator_estimator.train(data, max_steps=2)
    GAN(config, model_dir=dirs[1]).generator_estimator.train(data, max_steps=2)
    gan = GAN(config, model_dir=dirs[2])
    gan.train(data, max_steps=2, progress=False)
    keys = [sorted(name for name, _ in tf.train.list_variables(d)) for d in dirs]
    assert keys[0] == keys[1] == keys[2]
    assert f"generator/project/kernel/{EMA}" in keys[0]
    assert "discriminator/conv0/sn_u" in keys[0] and "discriminator/projection/sn_u" in keys[0]
    # Each Estimator continues from another's checkpoint.
    GAN(config, model_dir=dirs[0]).generator_estimator.train(data, max_steps=3)
    assert gan.generate(3, labels=[0, 1, 2]).shape == (3, 8, 8, 1)
    metrics = gan.evaluate(array_input_fn(tiny_images(16), labels[:16], repeat=False))
    assert np.isfinite(metrics["loss/discriminator"])


# ------------------------------------------------------------------------- packing


def test_packing_groups_consecutive_samples_for_the_discriminator():
    x = np.arange(4 * 3 * 3 * 2, dtype=np.float32).reshape(4, 3, 3, 2)
    packed = networks.pack(tf.constant(x), 2).numpy()
    assert packed.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(packed[1, ..., 0::2], x[2])
    np.testing.assert_array_equal(packed[1, ..., 1::2], x[3])
    logits = _run_network(tiny_config("model.discriminator.packing=2"), "discriminator",
                          tiny_images(6), None)
    assert logits.shape == (3,)
    with pytest.raises(ValueError, match=r"multiple of model.discriminator.packing \(4\), got 6"):
        _run_network(tiny_config("model.discriminator.packing=4"), "discriminator",
                     tiny_images(6), None)
    with pytest.raises(config_lib.ConfigError, match=r"data.batch_size \(8\) must be a multiple"):
        tiny_config("model.discriminator.packing=3")


@pytest.mark.parametrize("architecture", ["dcgan", "mlp"])
def test_a_packed_conditional_discriminator_sees_every_packed_samples_label(architecture):
    config = _conditional("model.discriminator.packing=2", architecture=architecture)
    x = np.random.RandomState(0).uniform(-1, 1, (4,) + tuple(config.model.sample_shape)).astype(np.float32)
    logits = [_run_network(config, "discriminator", x, labels)
              for labels in ([0, 1, 2, 0], [0, 2, 2, 0], [1, 1, 2, 0])]
    assert logits[0].shape == (2,)
    # changing the second or the first label of a pair moves that pair's logit only
    assert logits[0][0] != logits[1][0] and logits[0][0] != logits[2][0]
    np.testing.assert_array_equal(logits[0][1], logits[1][1])
    with tf.Graph().as_default():
        parts = gan_lib.GANParts.from_params({"config": config})
        parts.discriminator(tf.constant(x), tf.constant([0, 1, 2, 0]), ModeKeys.TRAIN)
        tables = {v.name: v.shape.as_list() for v in v1.global_variables() if "projection" in v.name}
    assert [shape[0] for name, shape in tables.items() if "sn_u" not in name] == [2 * 3]


# ------------------------------------------------------------------------- minibatch stddev


@pytest.mark.parametrize("architecture", ["dcgan", "mlp"])
def test_minibatch_stddev_lets_the_discriminator_see_batch_diversity(architecture):
    config = tiny_config("model.discriminator.minibatch_stddev=true", architecture=architecture)
    shape = (4,) + tuple(config.model.sample_shape)
    varied = np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)
    alike = np.repeat(varied[:1], 4, axis=0)
    logits = _run_network(config, "discriminator", np.concatenate([varied, alike]), None)
    apart = np.concatenate([_run_network(config, "discriminator", varied, None),
                            _run_network(config, "discriminator", alike, None)])
    # a sample's logit depends on the batch it is judged in: the same first sample, three ways
    assert len({round(float(v), 5) for v in (logits[0], apart[0], apart[4])}) == 3
    plain = _run_network(tiny_config(architecture=architecture), "discriminator", varied, None)
    assert plain.shape == (4,)


# ------------------------------------------------------------------------- InfoGAN codes


def test_codes_are_read_from_the_noise_and_scored_by_cross_entropy():
    noise = np.array([[0.1, 2.0, -1.0, 0.5, 0.4, 9.0],
                      [3.0, 0.0, -1.0, -2.0, 1.0, 0.0]], np.float32)
    codes = info.codes(tf.constant(noise), [3, 2]).numpy()
    np.testing.assert_array_equal(codes, [[1, 0], [0, 1]])
    wide = info.with_codes(tf.constant(noise), [3, 2]).numpy()
    np.testing.assert_array_equal(wide[:, 6:], [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]])
    np.testing.assert_array_equal(wide[:, :6], noise)
    flat = info.code_loss(tf.zeros([2, 5]), tf.constant(noise), [3, 2]).numpy()
    np.testing.assert_allclose(flat, np.log(3) + np.log(2), rtol=1e-6)
    sure = 20.0 * (wide[:, 6:] - 0.5)
    assert info.code_loss(tf.constant(sure), tf.constant(noise), [3, 2]).numpy() < 1e-6


def test_chosen_codes_move_the_largest_noise_value_into_place():
    noise = sampling.noise(50, 8, seed=3)
    fixed = sampling.with_codes(noise, [3, 4], [2, None])
    assert (np.argmax(fixed[:, :3], axis=1) == 2).all()
    np.testing.assert_array_equal(fixed[:, 3:], noise[:, 3:])
    np.testing.assert_array_equal(np.sort(fixed[:, :3]), np.sort(noise[:, :3]))
    with pytest.raises(ExportError, match=r"code value 3 is out of range: this code has values 0..2"):
        sampling.with_codes(noise, [3, 4], [3, 0])
    with pytest.raises(ExportError, match=r"1 code values for a model with 2 latent codes"):
        sampling.with_codes(noise, [3, 4], [0])
    with pytest.raises(ExportError, match="model has no latent codes"):
        sampling.with_codes(noise, [], [0])


@pytest.mark.parametrize("architecture", ["dcgan", "mlp"])
def test_code_head_predicts_every_packed_sample_and_g_sees_the_codes(architecture):
    config = tiny_config("model.latent_codes=[3,2]", "model.discriminator.packing=2",
                         architecture=architecture)
    inputs = np.zeros((6,) + tuple(config.model.sample_shape), np.float32)
    with tf.Graph().as_default() as graph:
        parts = gan_lib.GANParts.from_params({"config": config})
        call = parts.discriminator(tf.constant(inputs), None, ModeKeys.TRAIN)
        assert call.outputs.shape.as_list() == [3] and call.code_logits.shape.as_list() == [6, 5]
        parts.generator(tf.zeros([4, 8]), None, ModeKeys.TRAIN)
        first = "generator/project/kernel" if architecture == "dcgan" else "generator/hidden0/kernel"
        assert _variable(graph, first).shape[0] == 8 + 5
        assert _variable(graph, "discriminator/code_logits/kernel").shape[1] == 2 * 5
    with pytest.raises(config_lib.ConfigError, match=r"read 9 noise dimensions but model.z_dim is 8"):
        tiny_config("model.latent_codes=[5,4]")
    with pytest.raises(config_lib.ConfigError, match="every code needs at least 2 values"):
        tiny_config("model.latent_codes=[1]")


def test_a_discriminator_without_a_code_head_is_refused_by_name():
    config = tiny_config("model.latent_codes=[4]")
    with tf.Graph().as_default():
        parts = gan_lib.GANParts.from_params(
            {"config": config, "discriminator_fn": custom_nets.v1_discriminator})
        with pytest.raises(NetworkError, match=r"with model.latent_codes \[4\] expected \[batch, 5\]"):
            parts.discriminator(tf.zeros([2, 8, 8, 1]), None, ModeKeys.TRAIN)


@pytest.mark.slow
def test_info_codes_take_the_modes_of_unlabelled_data(tmp_path):
    """Four ring modes, no labels, one 4-valued code: after brief training each code value
    puts its samples near one centre, a different one per value."""
    config = _four_modes("model.latent_codes=[4]")
    gan = GAN(config, model_dir=str(tmp_path))
    gan.train(max_steps=600, progress=False)
    centres = np.asarray(config.data.mixture.centres())
    taken = []
    for value in range(4):
        points = gan.generate(200, seed=value, codes=[value])
        nearest = np.argmin(np.linalg.norm(points[:, None] - centres[None], axis=-1), axis=1)
        counts = np.bincount(nearest, minlength=4)
        assert counts.max() > 0.8 * 200, (value, counts)
        taken.append(int(np.argmax(counts)))
    assert sorted(taken) == [0, 1, 2, 3], taken


# ------------------------------------------------------------------------- shipped 2D config


@pytest.mark.slow
def test_shipped_ring_config_covers_all_modes(tmp_path):
    """The shipped ring config as a user runs it (seed 0): every mode, most samples sharp."""
    config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", "mixture_ring.yaml"),
                                    ["train.save_checkpoints_steps=4000"])
    gan = GAN(config, model_dir=str(tmp_path))
    gan.train(progress=False)
    metrics = metrics_lib.mixture_mode_metrics(gan.generate(2000, seed=99),
                                              config.data.mixture.centres(), config.data.mixture.std)
    assert metrics["modes_covered"] == 8, metrics["counts"]
    assert metrics["high_quality_share"] > 0.6


# ------------------------------------------------------------------------- augmentation, R1, decay


def test_augmentations_do_what_they_say_keyed_and_differentiable():
    from estimator_gan.model import augment

    x = tf.constant(np.random.RandomState(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32))
    key = tf.constant([3, 4], tf.int64)
    shifted = augment.translation(x, key).numpy()
    for i in range(4):  # each image is the original moved by at most one pixel, zeros coming in
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if np.allclose(np.roll(np.pad(x[i].numpy(), ((1, 1), (1, 1), (0, 0))), (-dy, -dx), (0, 1))[1:-1, 1:-1],
                                  shifted[i])]
        assert matches, i
    cut = augment.cutout(tf.ones([4, 8, 8, 1]), key).numpy()
    assert all(0 < (cut[i] == 0).sum() <= 16 for i in range(4))  # a 4x4 square, clipped at borders
    colored = augment.color(x, key).numpy()
    assert not np.allclose(colored, x.numpy())
    both = augment.policy("color,translation,cutout")
    np.testing.assert_array_equal(augment.augment(x, both, key), augment.augment(x, both, key))
    assert not np.allclose(augment.augment(x, both, key), augment.augment(x, both, key + 1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(augment.augment(x, both, key))
    assert float(tf.reduce_sum(tf.abs(tape.gradient(out, x)))) > 0
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.policy("color,flip")
    with pytest.raises(config_lib.ConfigError, match="model.augment: unknown augmentation 'flip'"):
        tiny_config("model.augment=flip")
    with pytest.raises(config_lib.ConfigError, match="model.augment applies to images"):
        GAN(tiny_config("model.augment=color", architecture="mlp"), model_dir="/tmp/unused").train(max_steps=1)


def test_r1_penalty_is_the_squared_gradient_norm_on_real_data():
    w = tf.constant([[1.0], [2.0], [-2.0]])
    real = tf.constant(np.random.RandomState(0).normal(size=(5, 3)).astype(np.float32))

    with tf.Graph().as_default():
        real_t = tf.constant(real.numpy())
        logits = tf.squeeze(tf.matmul(real_t, tf.constant(w.numpy())), 1)
        inputs = losses.DiscriminatorLossInputs(logits, logits, real_t, real_t, None)
        with v1.Session() as sess:
            assert sess.run(losses.r1_penalty(inputs)) == pytest.approx(9.0)  # ||w||^2


def test_learning_rate_decays_linearly_from_its_start():
    train = tiny_config("train.max_steps=100", "train.lr_decay_start=0.5", "train.lr_decay_final=0.1").train
    rates = [float(gan_lib.learning_rate(1.0, train, tf.constant(s, tf.int64))) for s in (0, 50, 75, 100, 120)]
    assert rates == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])
    assert float(gan_lib.learning_rate(2.0, tiny_config().train, tf.constant(7))) == 2.0


def test_generator_losses_weight_each_fake_as_their_divergence_says():
    """Per-fake gradient of G's loss w.r.t. D's logit r: non-saturating sigmoid(-r) (mode-seeking),
    minimax sigmoid(r), forward_kl exp(r) capped at r = 5 (mass-covering)."""
    r = np.array([-3.0, 0.0, 2.0, 7.0], np.float32)
    expected = {"non_saturating": 1 / (1 + np.exp(r)), "minimax": 1 / (1 + np.exp(-r)),
                "forward_kl": np.where(r <= 5.0, np.exp(r), 0.0)}
    with tf.Graph().as_default():
        logits = tf.constant(r)
        grads = {name: tf.gradients(losses.get_loss(name).generator_loss(logits, tiny_config().loss),
                                    [logits])[0] for name in expected}
        with v1.Session() as sess:
            for name, g in sess.run(grads).items():
                np.testing.assert_allclose(-g * len(r), expected[name], rtol=1e-5, err_msg=name)


def test_top_k_keeps_the_fakes_d_scores_most_real_and_only_they_get_gradients():
    with tf.Graph().as_default():
        logits = tf.constant([3.0, -1.0, 5.0, 0.0, 1.0])
        half = losses.top_k_logits(logits, tf.constant(0.5))
        grads = tf.gradients(tf.reduce_mean(tf.nn.softplus(-half)), [logits])[0]
        with v1.Session() as sess:
            kept, g = sess.run([half, grads])
            assert sorted(kept) == [1.0, 3.0, 5.0]  # ceil(2.5)
            assert g[1] == 0 and g[3] == 0 and np.all(g[[0, 2, 4]] < 0)
            assert sess.run(losses.top_k_logits(logits, tf.constant(0.01))).tolist() == [5.0]
            assert len(sess.run(losses.top_k_logits(logits, tf.constant(1.0)))) == 5
    cfg = tiny_config("train.max_steps=100", "loss.top_k=0.5", "loss.top_k_anneal=0.4")
    shares = [float(gan_lib.top_k_share(cfg.loss, cfg.train, tf.constant(s, tf.int64))) for s in (0, 20, 40, 90)]
    assert shares == pytest.approx([1.0, 0.75, 0.5, 0.5])


@pytest.mark.slow
def test_training_with_augmentation_lazy_r1_top_k_and_decay(tmp_path):
    gan = GAN(tiny_config("model.augment=color,translation,cutout", "loss.r1_weight=10",
                          "loss.r1_every=2", "train.lr_decay_start=0.5", "train.steps_per_run=2",
                          "loss.top_k=0.5"),
              model_dir=str(tmp_path))
    assert gan.train(array_input_fn(tiny_images()), max_steps=4, progress=False) == 4
    samples = gan.generate(3)
    assert samples.shape == (3, 8, 8, 1) and np.all(np.isfinite(samples))

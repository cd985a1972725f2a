"""The residual SN-GAN networks (`model.architecture: resnet`) on real TensorFlow: the papers'
sizes, every image size, conditioning, self-attention, training, export with EMA and standing
statistics, packing, checkpoint variables and one-line errors. Widths are tiny except where the
papers' are the point."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import array_input_fn
from estimator_gan import config as config_lib
from estimator_gan.errors import ConfigError
from estimator_gan.gan import GAN
from estimator_gan.model import gan as gan_lib
from estimator_gan.model import layers
from estimator_gan.serving.saved_model import load_generator

v1 = tf.compat.v1
TRAIN = tf.estimator.ModeKeys.TRAIN
TINY = ("model.generator.filters=8", "model.discriminator.filters=8", "model.z_dim=16")


def resnet_config(size=32, *overrides, tiny=True):
    return config_lib.load_config(None, [
        "model.architecture=resnet", f"model.sample_shape=[{size},{size},3]", "loss.name=hinge",
        "data.batch_size=4", "train.max_steps=2", "train.save_checkpoints_steps=2",
        "train.log_every_steps=2", "train.sample_grid=2", "train.steps_per_run=1",
        "export.standing_batches=2", "export.standing_batch_size=8", *(TINY if tiny else ()),
        *overrides])


def images(n=16, size=32, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def build(config, batch=2):
    """G then D on its samples, in TRAIN mode, in a fresh graph: (graph, samples, logits,
    {role: {variable name in the role's scope: shape}})."""
    config = config_lib.resolve(config)
    parts = gan_lib.GANParts.from_params({"config": config})
    graph = tf.Graph()
    with graph.as_default():
        labels = tf.constant(np.arange(batch) % config.model.num_classes, tf.int32) \
            if config.model.conditional else None
        samples = parts.generator(tf.random.normal([batch, config.model.z_dim]), labels, TRAIN).outputs
        logits = parts.discriminator(samples, labels, TRAIN).outputs
        variables = {role: {v.op.name[len(role) + 1:]: v.shape.as_list()
                            for v in v1.global_variables(role + "/")} for role in gan_lib.ROLES}
    return graph, samples, logits, variables


def trainable_count(config) -> dict:
    """Trainable values per role of an unconditional model."""
    config = config_lib.resolve(config)
    parts = gan_lib.GANParts.from_params({"config": config})
    with tf.Graph().as_default():
        parts.discriminator(parts.generator(tf.zeros([2, config.model.z_dim]), None, TRAIN).outputs,
                            None, TRAIN)
        return {role: sum(int(np.prod(v.shape)) for v in v1.trainable_variables(role + "/"))
                for role in gan_lib.ROLES}


def test_cifar_networks_have_the_sn_gan_papers_size():
    """Miyato et al. 2018, CIFAR-10 ResNet: G about 4.3 M, D about 1.0 M parameters. By hand:
    G = linear 128->4x4x256 + 3 x (two 3x3 256->256 convs, a 1x1 shortcut, two BNs) + BN +
    3x3 conv 256->3; D = optimized block 3->128 + down block + 2 plain blocks of 128 + linear."""
    config = resnet_config(32, "model.z_dim=128", tiny=False)
    assert (config.model.generator.filters, config.model.discriminator.filters) == (None, None)
    conv = lambda k, i, o: k * k * i * o + o  # noqa: E731
    g = (conv(1, 128, 4 * 4 * 256) + 3 * (2 * conv(3, 256, 256) + conv(1, 256, 256) + 4 * 256)
         + 2 * 256 + conv(3, 256, 3))
    d = (conv(3, 3, 128) + conv(3, 128, 128) + conv(1, 3, 128) + 2 * conv(3, 128, 128)
         + conv(1, 128, 128) + 4 * conv(3, 128, 128) + conv(1, 128, 1))
    counts = trainable_count(config)
    assert counts == {"generator": g, "discriminator": d}
    assert abs(counts["generator"] / 4.3e6 - 1) < 0.02 and abs(counts["discriminator"] / 1.0e6 - 1) < 0.06
    resolved = config_lib.resolve(config)
    assert (resolved.model.generator.filters, resolved.model.discriminator.filters) == (256, 128)


@pytest.mark.parametrize("size, g_filters, d_filters", [(28, 64, 64), (48, 64, 64), (64, 64, 64),
                                                          (128, 64, 64)])
def test_sizes_but_32_default_to_width_64(size, g_filters, d_filters):
    resolved = config_lib.resolve(resnet_config(size, tiny=False))
    assert (resolved.model.generator.filters, resolved.model.discriminator.filters) == (g_filters, d_filters)
    # dcgan's default is unchanged
    dcgan = config_lib.resolve(config_lib.load_config(None, ["model.sample_shape=[32,32,3]"]))
    assert (dcgan.model.generator.filters, dcgan.model.discriminator.filters) == (64, 64)


@pytest.mark.parametrize("size, d_blocks, d_last", [(28, 4, 7), (32, 4, 8), (48, 5, 3), (64, 5, 2),
                                                     (128, 6, 4)])
def test_every_size_builds_and_runs(size, d_blocks, d_last):
    graph, samples, logits, variables = build(resnet_config(size))
    assert samples.shape.as_list() == [2, size, size, 3] and logits.shape.as_list() == [2]
    assert max(int(n.split("/")[0][len("block"):]) for n in variables["discriminator"]
               if n.startswith("block")) == d_blocks
    last = graph.get_tensor_by_name(f"discriminator/block{d_blocks}/add:0")
    assert last.shape.as_list()[1:3] == [d_last, d_last]
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        out, logit = session.run([samples, logits])
    assert out.shape == (2, size, size, 3) and np.all(np.abs(out) <= 1) and np.all(np.isfinite(logit))


def test_unsupported_sizes_and_attention_resolutions_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"square images of 28, 32, 48, 64, 128 px; model.sample_shape "
                                          r"is \[24, 24, 1\]") as err:
        config_lib.resolve(config_lib.load_config(None, [
            "model.architecture=resnet", "model.sample_shape=[24,24,1]"]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="square images"):
        GAN(resnet_config(32, "model.sample_shape=[32,64,3]"), model_dir="unused")
    with pytest.raises(ConfigError, match=r"model.self_attention=32 .* at 32 px; choose one of 8, 16 "):
        config_lib.resolve(resnet_config(32, "model.self_attention=32"))
    with pytest.raises(ConfigError, match="model.self_attention applies to architecture resnet, not dcgan"):
        config_lib.resolve(config_lib.load_config(None, ["model.sample_shape=[32,32,3]",
                                                        "model.self_attention=16"]))


def test_self_attention_sits_at_the_chosen_resolution_in_both_networks():
    graph, _, _, variables = build(resnet_config(32, "model.self_attention=16",
                                                 "model.generator.filters=16",
                                                 "model.discriminator.filters=16"), batch=2)
    for role in gan_lib.ROLES:
        attention = {n: s for n, s in variables[role].items() if n.startswith("attention/")}
        assert attention["attention/query/kernel"] == [1, 1, 16, 2]
        assert attention["attention/value/kernel"] == [1, 1, 16, 8]
        assert attention["attention/output/kernel"] == [1, 1, 8, 16]
        assert attention["attention/gamma"] == []
        # every one of the 16 x 16 positions attends to the 8 x 8 pooled ones
        weights = graph.get_tensor_by_name(f"{role}/attention/Softmax:0")
        assert weights.shape.as_list() == [2, 256, 64]
    assert "attention/query/sn_u" in variables["discriminator"]
    _, _, _, without = build(resnet_config(32))
    assert not any(n.startswith("attention") for role in gan_lib.ROLES for n in without[role])


def test_conditional_networks_use_class_batch_norm_and_projection_and_train(tmp_path):
    config = resnet_config(32, "model.conditional=true", "model.num_classes=3")
    _, _, _, variables = build(config)
    g, d = variables["generator"], variables["discriminator"]
    assert g["block1/bn1/gamma"] == [3, 8] and g["block3/bn2/beta"] == [3, 8]
    assert g["final_bn/gamma"] == [8]  # the last batch norm is shared by all classes
    assert d["projection/kernel"] == [3, 8] and "projection/sn_u" in d

    gan = GAN(config, model_dir=str(tmp_path))
    gan.train(array_input_fn(images(), np.arange(16) % 3, batch_size=4), max_steps=1, progress=False)
    ckpt = tf.train.latest_checkpoint(gan.model_dir)
    # One update on a batch of classes 0, 1, 2, 0 moved every class's row.
    gamma = tf.train.load_variable(ckpt, "generator/block1/bn1/gamma")
    assert gamma.shape == (3, 8) and np.all(np.abs(gamma - 1).max(axis=1) > 0)
    moment = tf.train.load_variable(ckpt, "discriminator/projection/kernel/D_Adam")
    assert moment.shape == (3, 8) and np.all(np.abs(moment).max(axis=1) > 0)
    samples = gan.generate(3, labels=[0, 1, 2])
    assert samples.shape == (3, 32, 32, 3) and np.all(np.isfinite(samples))


def test_mnist_shaped_grey_images_train_and_generate(tmp_path):
    """28 px, one channel: what `--set model.architecture=resnet` gives the MNIST configs."""
    config = resnet_config(28, "model.sample_shape=[28,28,1]")
    gan = GAN(config, model_dir=str(tmp_path))
    grey = np.random.RandomState(0).uniform(-1, 1, (16, 28, 28, 1)).astype(np.float32)
    gan.train(array_input_fn(grey, batch_size=4), max_steps=1, progress=False)
    ckpt = tf.train.latest_checkpoint(gan.model_dir)
    assert tf.train.load_variable(ckpt, "generator/linear/kernel").shape == (16, 7 * 7 * 8)
    assert tf.train.load_variable(ckpt, "generator/to_image/kernel").shape == (3, 3, 8, 1)
    samples = gan.generate(3)
    assert samples.shape == (3, 28, 28, 1) and np.all(np.abs(samples) <= 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 32 px residual SN-GAN (hinge, 2 D steps per G step, EMA) trained 2 steps and
    exported with standing statistics."""
    root = tmp_path_factory.mktemp("resnet")
    gan = GAN(resnet_config(32, "train.d_steps=2"), model_dir=str(root / "model"))
    gan.train(array_input_fn(images(), batch_size=4), progress=False)
    return gan, gan.export(str(root / "exports")), root


def _conv(name, k, cin, cout, sn=False):
    out = {f"{name}/kernel": [k, k, cin, cout], f"{name}/bias": [cout]}
    return {**out, f"{name}/sn_u": [1, cout]} if sn else out


def _bn(name, width=8):
    return {f"{name}/{v}": [width] for v in ("gamma", "beta", "moving_mean", "moving_variance")}


# The tiny 32 px networks (filters 8, z_dim 16), without optimizer slots and EMA shadows.
EXPECTED_GENERATOR = {"linear/kernel": [16, 4 * 4 * 8], "linear/bias": [4 * 4 * 8],
                      **_bn("final_bn"), **_conv("to_image", 3, 8, 3)}
for _block in ("block1", "block2", "block3"):
    EXPECTED_GENERATOR.update({**_bn(f"{_block}/bn1"), **_bn(f"{_block}/bn2"),
                               **_conv(f"{_block}/conv1", 3, 8, 8), **_conv(f"{_block}/conv2", 3, 8, 8),
                               **_conv(f"{_block}/shortcut", 1, 8, 8)})
EXPECTED_DISCRIMINATOR = {
    **_conv("block1/conv1", 3, 3, 8, sn=True), **_conv("block1/conv2", 3, 8, 8, sn=True),
    **_conv("block1/shortcut", 1, 3, 8, sn=True),
    **_conv("block2/conv1", 3, 8, 8, sn=True), **_conv("block2/conv2", 3, 8, 8, sn=True),
    **_conv("block2/shortcut", 1, 8, 8, sn=True),
    **_conv("block3/conv1", 3, 8, 8, sn=True), **_conv("block3/conv2", 3, 8, 8, sn=True),
    **_conv("block4/conv1", 3, 8, 8, sn=True), **_conv("block4/conv2", 3, 8, 8, sn=True),
    "logit/kernel": [8, 1], "logit/bias": [1], "logit/sn_u": [1, 1]}


def test_checkpoint_holds_each_roles_variables_with_ema_and_optimizer_slots(trained):
    gan, _, _ = trained
    listed = dict(tf.train.list_variables(tf.train.latest_checkpoint(gan.model_dir)))
    generator = {n[len("generator/"):]: s for n, s in listed.items()
                 if n.startswith("generator/") and not n.endswith(("Adam", "Adam_1", "ExponentialMovingAverage"))}
    discriminator = {n[len("discriminator/"):]: s for n, s in listed.items()
                     if n.startswith("discriminator/") and not n.endswith(("Adam", "Adam_1"))}
    assert generator == EXPECTED_GENERATOR
    assert discriminator == EXPECTED_DISCRIMINATOR
    for name in ("block2/conv1/kernel", "block2/bn1/moving_mean", "to_image/bias"):
        assert f"generator/{name}/ExponentialMovingAverage" in listed
        assert (f"generator/{name}/G_Adam" in listed) == ("moving" not in name)
    assert "discriminator/block4/conv2/kernel/D_Adam" in listed
    assert {n: int(tf.train.load_variable(tf.train.latest_checkpoint(gan.model_dir), n))
            for n in ("global_step", "generator_step", "discriminator_step")} == \
        {"global_step": 2, "generator_step": 2, "discriminator_step": 4}


def test_export_with_standing_statistics_serves_samples_of_the_right_shape(trained):
    gan, result, root = trained
    assert result.standing_statistics == 7  # 3 blocks x 2 batch norms + the final one
    served = load_generator(str(root / "exports"))
    assert served.sample_shape == (32, 32, 3) and served.z_dim == 16
    out = served.from_seed(seed=5, count=3)
    assert out["samples"].shape == (3, 32, 32, 3) and np.all(np.abs(out["samples"]) <= 1)
    assert out["images"].shape == (3, 32, 32, 3) and out["images"].dtype == np.uint8
    np.testing.assert_array_equal(served.from_seed(seed=5, count=3)["samples"], out["samples"])
    # The exported statistics are recomputed for the EMA weights, not the training averages.
    exported = tf.train.load_variable(f"{result.generator}/variables/variables",
                                      "generator/block3/bn2/moving_mean/ExponentialMovingAverage")
    trained_stat = tf.train.load_variable(tf.train.latest_checkpoint(gan.model_dir),
                                          "generator/block3/bn2/moving_mean/ExponentialMovingAverage")
    assert exported.shape == (8,) and not np.allclose(exported, trained_stat)


def test_packing_feeds_discriminator_groups_of_samples(tmp_path):
    gan = GAN(resnet_config(32, "model.discriminator.packing=2", "model.generator.ema_decay=null"),
              model_dir=str(tmp_path))
    gan.train(array_input_fn(images(), batch_size=4), max_steps=1, progress=False)
    ckpt = tf.train.latest_checkpoint(str(tmp_path))
    assert tf.train.load_variable(ckpt, "discriminator/block1/conv1/kernel").shape == (3, 3, 6, 8)
    assert tf.train.load_variable(ckpt, "discriminator/block1/shortcut/kernel").shape == (1, 1, 6, 8)
    assert int(tf.train.load_variable(ckpt, "global_step")) == 1
    assert gan.generate(2).shape == (2, 32, 32, 3)


def _normalising_generator(noise, labels, mode, params):
    """Batch norm of the noise itself: its refreshed statistics are the noise's moments."""
    return layers.batch_norm(noise, mode == TRAIN, "bn")


def test_large_generators_refresh_their_ema_statistics_in_chunks(monkeypatch):
    config = config_lib.load_config(None, [
        "data.source=mixture2d", "model.architecture=mlp", "model.sample_shape=[4]", "model.z_dim=4",
        "model.conditional=true", "model.num_classes=3"])
    parts = gan_lib.GANParts.from_params({"config": config, "generator_fn": _normalising_generator})
    monkeypatch.setattr(gan_lib, "REFRESH_CHUNK_BYTES", 256 * gan_lib.activation_bytes(parts))
    assert gan_lib.refresh_chunk(parts) == 256
    with tf.Graph().as_default():
        key = gan_lib.run_key(config)
        refresh = gan_lib.refresh_statistics(parts, key)
        noise = tf.concat([gan_lib.stateless_normal([256, 4], gan_lib.fold(key, -1, i))
                           for i in range(4)], axis=0)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(refresh)
            mean, variance = session.run([v1.global_variables(f"generator/bn/moving_{s}/") [0]
                                          for s in ("mean", "variance")])
            expected = session.run(noise)
    # The 1,024 samples' mean and population variance, from four calls of 256.
    np.testing.assert_allclose(mean, expected.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(variance, expected.var(axis=0), rtol=1e-4)


@pytest.mark.parametrize("resample", ["up", "down"])
def test_resampling_convolutions_equal_the_papers_composition(resample):
    """One stride-2 4x4 (transposed) convolution computes nearest up-sampling then a 3x3 conv,
    or a 3x3 conv then 2x2 average pooling, with the 3x3 kernel's variables."""
    with tf.Graph().as_default(), v1.Session() as session:
        x = tf.constant(np.random.RandomState(1).randn(2, 6, 6, 5).astype(np.float32))
        with v1.variable_scope("net"):
            fused = layers.conv2d(x, 7, "conv", 3, 1, v1.random_normal_initializer(), resample=resample)
        kernel, bias = v1.global_variables("net/conv/")
        assert kernel.shape.as_list() == [3, 3, 5, 7] and bias.shape.as_list() == [7]
        if resample == "up":
            plain = tf.nn.conv2d(layers.upsample(x), kernel, 1, "SAME") + bias
        else:
            plain = layers.downsample(tf.nn.conv2d(x, kernel, 1, "SAME") + bias)
        session.run(v1.global_variables_initializer())
        fused, plain = session.run([fused, plain])
    assert fused.shape == plain.shape == ((2, 12, 12, 7) if resample == "up" else (2, 3, 3, 7))
    np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_minibatch_stddev_adds_a_feature_before_the_logit():
    _, _, _, variables = build(resnet_config(32, "model.discriminator.minibatch_stddev=true"))
    assert variables["discriminator"]["logit/kernel"] == [9, 1]

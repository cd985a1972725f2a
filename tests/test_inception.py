"""FID, KID and the Inception Score: the formulas on fixed features against independent
computations, the Inception feature space with a small stand-in graph of the reference graph's
interface (the real one is a 90 MB download), the graph's download and its offline error, and
`eval.features` end to end."""
import hashlib
import http.server
import io
import json
import math
import os
import socket
import tarfile
import threading

import numpy as np
import pytest
import scipy.linalg

import inception_standin
from conftest import tiny_config
from estimator_gan import cli
from estimator_gan import config as config_lib
from estimator_gan.data import pipeline
from estimator_gan.errors import ConfigError, DataError
from estimator_gan.evaluation import evaluate as ev
from estimator_gan.evaluation import inception
from estimator_gan.evaluation import metrics
from estimator_gan.gan import GAN

# Keras 2.15 seeds its initializers with random.randint(1, 1e9).
pytestmark = pytest.mark.filterwarnings("ignore:non-integer arguments to randrange")

TINY_EVAL = ["eval.num_samples=40", "eval.classifier_epochs=1", "eval.kid_subset_size=20",
             "eval.kid_num_subsets=3", "eval.eval_batches=2"]


# ------------------------------------------------------------------------------ formulas


def _fid_ttur(a, b):
    """FID as TTUR writes it: sqrtm of the product of the covariances."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def _mmd2_loops(x, y):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written out with explicit loops."""
    m, d = len(x), x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def _inception_score_loops(probs, splits):
    """exp(E_x KL(p(y|x) || p(y))) per split of rows [i N / s, (i + 1) N / s), averaged."""
    n, scores = len(probs), []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = [sum(row[c] for row in part) / len(part) for c in range(part.shape[1])]
        kls = [sum(row[c] * math.log(row[c] / marginal[c]) for c in range(len(row)) if row[c] > 0)
               for row in part]
        scores.append(math.exp(sum(kls) / len(kls)))
    return float(np.mean(scores)), float(np.std(scores))


def test_fid_kid_and_inception_score_match_independent_computations():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12)) + 1.0
    fake = rng.standard_normal((250, 12)) * 1.5 + 0.3
    assert metrics.frechet_distance(real, fake) == pytest.approx(_fid_ttur(real, fake), rel=1e-7)
    assert metrics.frechet_distance(real, real[::-1]) == pytest.approx(0.0, abs=1e-8)
    # Fewer samples than dimensions (singular covariances), as 1,000 samples of 2,048 features.
    wide_real = rng.standard_normal((90, 64)) @ rng.standard_normal((64, 64)) / 8 + 0.5
    wide_fake = rng.standard_normal((30, 64)) * 0.7
    for x, y in ((wide_real, wide_fake), (wide_fake, wide_real), (wide_fake, wide_fake[::-1] * 1.1)):
        assert metrics.frechet_distance(x, y) == pytest.approx(_fid_ttur(x, y), rel=1e-6, abs=1e-5)

    x, y = real[:40], fake[:40]
    # One subset as large as both sets is a permutation of each: exactly the whole-set MMD^2.
    kid = metrics.kernel_distance(x, y, subset_size=40, num_subsets=1)
    assert kid["mean"] == pytest.approx(_mmd2_loops(x, y), rel=1e-9) and kid["std"] == 0.0

    logits = rng.standard_normal((103, 7)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[0] = np.eye(7)[3]  # a zero probability contributes nothing
    mean, std = _inception_score_loops(probs, 10)
    score = metrics.classifier_score(probs, num_splits=10)
    assert score["mean"] == pytest.approx(mean, rel=1e-10) and score["std"] == pytest.approx(std, rel=1e-8)
    one_hot = np.eye(7)[np.arange(70) % 7]
    assert metrics.classifier_score(one_hot, num_splits=10)["mean"] == pytest.approx(7.0)


# ------------------------------------------------------------------------------ the network


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return inception_standin.write(tmp_path_factory.mktemp("inception") / inception.GRAPH_FILENAME)


def _pixels(images):
    pixels = np.clip(np.round((np.asarray(images, np.float64) + 1.0) * 127.5), 0, 255)
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def test_network_features_and_probabilities_match_the_graph_run_image_by_image(standin):
    rng = np.random.default_rng(0)
    network = inception.InceptionNetwork(standin, batch_size=7)
    assert network.num_classes == 1008 and network.info["reference_graph"] is False
    assert network.info["graph_bytes"] == os.path.getsize(standin)
    for images in (rng.uniform(-1, 1, (17, 8, 8, 1)), rng.uniform(-1, 1, (5, 32, 24, 3))):
        feats, probs = network.features_and_probabilities(images)
        want_feats, want_probs = inception_standin.run_one_by_one(standin, _pixels(images))
        assert feats.shape == (len(images), 2048) and feats.dtype == np.float64
        np.testing.assert_allclose(feats, want_feats, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probs, want_probs, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(network.features(images), feats)
    with pytest.raises(DataError, match="1 or 3 channels"):
        network.features(np.zeros((2, 4, 4, 2)))


def test_graphs_without_the_inception_tensors_are_refused_in_one_line(tmp_path):
    not_a_graph = tmp_path / "notes.pb"
    not_a_graph.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(DataError, match="is not a TensorFlow GraphDef"):
        inception.InceptionNetwork(str(not_a_graph))
    gd = inception_standin.graph_def()
    kept = [node for node in gd.node if not node.name.startswith("softmax")]
    del gd.node[:]
    gd.node.extend(kept)
    partial = tmp_path / "partial.pb"
    partial.write_bytes(gd.SerializeToString())
    with pytest.raises(DataError, match="is not the Inception graph: it has no 'softmax/logits/MatMul'"):
        inception.InceptionNetwork(str(partial))
    with pytest.raises(DataError, match="is a directory"):
        inception.ensure_graph(str(tmp_path))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("digits"))
    gan = GAN(tiny_config("data.source=digits", "model.sample_shape=null", "data.image_size=8",
                          "data.split.fraction=0.8", *TINY_EVAL), model_dir=model_dir)
    gan.train(progress=False)
    return gan


# ------------------------------------------------------------------------------ download


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_graph_offline_is_one_line_naming_the_file_and_where_to_put_it(digits_run, tmp_path, capsys):
    target = tmp_path / "cache" / inception.GRAPH_FILENAME
    url = f"http://127.0.0.1:{_closed_port()}/inception-2015-12-05.tgz"
    with pytest.raises(DataError) as err:
        inception.ensure_graph(str(target), url)
    message = str(err.value)
    assert "\n" not in message and f"put it at {target}" in message and url in message
    assert inception.GRAPH_FILENAME in message and "eval.inception_graph" in message
    assert not target.exists()

    assert cli.main(["evaluate", "--model-dir", digits_run.model_dir, "--set", "eval.features=inception",
                     "--set", f"eval.inception_graph={target}", "--set", f"eval.inception_url={url}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Inception graph classify_image_graph_def.pb "
                                                   f"is not at {target}"), lines


class _Archive(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - the http.server interface
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_download_takes_the_graph_out_of_the_archive_and_refuses_one_that_is_not_the_reference(
        tmp_path, standin):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(standin, arcname=inception.GRAPH_FILENAME)
    _Archive.body = buffer.getvalue()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Archive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = tmp_path / inception.GRAPH_FILENAME
        logged = []
        url = f"http://127.0.0.1:{server.server_address[1]}/inception-2015-12-05.tgz"
        with pytest.raises(DataError, match=f"has {os.path.getsize(standin)} bytes, not 95673916"):
            inception.ensure_graph(str(target), url, logged.append)
        assert not target.exists() and logged[0].startswith(f"inception: downloading {url}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    # A file already there is used as it is, without any download.
    assert inception.ensure_graph(standin, url) == standin


# ------------------------------------------------------------------------------ end to end


def _fid_low_rank(a, b):
    """FID through the singular values of A^T B, where S_a = A A^T and S_b = B B^T (A, B the
    centred features over sqrt(n - 1)): tr((S_a^1/2 S_b S_a^1/2)^1/2) is the nuclear norm of
    A^T B, an n_a x n_b matrix, so no 2048 x 2048 square root is needed."""
    a_c = (a - a.mean(0)).T / math.sqrt(len(a) - 1)
    b_c = (b - b.mean(0)).T / math.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    nuclear = np.linalg.svd(a_c.T @ b_c, compute_uv=False).sum()
    return float(diff @ diff + (a_c ** 2).sum() + (b_c ** 2).sum() - 2 * nuclear)


def test_evaluate_command_with_inception_features_matches_an_independent_computation(
        digits_run, standin, tmp_path, capsys):
    gan = digits_run
    exports = str(tmp_path / "exports")
    gan.export(exports, generator_only=True)
    output = str(tmp_path / "eval.json")
    assert cli.main(["evaluate", "--model-dir", gan.model_dir, "--export", exports, "--output", output,
                     "--set", "eval.features=inception", "--set", f"eval.inception_graph={standin}"]) == 0
    out = capsys.readouterr().out
    assert "is not the reference graph" in out and "not comparable with published values" in out
    assert f"features: inception ({standin})" in out and "inception_score" in out and "real reference" in out
    saved = json.load(open(output))
    assert saved["source"] == "export" and saved["kind"] == "inception" and saved["num_samples"] == 40
    keys = {"frechet_distance", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert set(saved["metrics"]) == set(saved["reference"]) == keys
    assert saved["feature_extractor"]["graph_md5"] == hashlib.md5(open(standin, "rb").read()).hexdigest()
    assert saved["feature_extractor"]["reference_graph"] is False

    # The same numbers from the graph run image by image on the same real split and samples.
    config = config_lib.config_from_dict(gan.config.to_dict(), ["eval.features=inception"])
    real, _ = pipeline.load_examples(ev.evaluation_data_config(config), seed=config.eval.seed)
    n = config.eval.num_samples
    real_feats, _ = inception_standin.run_one_by_one(standin, _pixels(real[n:]))
    for row, images in ((saved["reference"], real[:n]),
                        (saved["metrics"], ev.export_samples(exports, config))):
        feats, probs = inception_standin.run_one_by_one(standin, _pixels(images))
        assert row["frechet_distance"] == pytest.approx(_fid_low_rank(real_feats, feats), rel=1e-3)
        assert row["inception_score"] == pytest.approx(_inception_score_loops(probs, 10)[0], rel=1e-4)
        kid = metrics.kernel_distance(real_feats, feats, 20, 3, config.eval.seed)["mean"]
        assert row["kid"] == pytest.approx(kid, rel=1e-3, abs=1e-6)
    assert saved["metrics"]["frechet_distance"] > 2 * saved["reference"]["frechet_distance"]


def test_eval_features_choose_the_feature_space(digits_run, tmp_path):
    pixels = config_lib.config_from_dict(digits_run.config.to_dict(), ["eval.features=pixels"])
    sample_metrics = ev.SampleMetrics(pixels, str(tmp_path))
    model, reference = sample_metrics(digits_run.generate(40, seed=0))
    assert sample_metrics.kind == "pixels" and set(model) == set(reference) == {"frechet_distance", "kid", "kid_std"}

    digits, _ = pipeline.load_examples(tiny_config("data.source=digits", "data.image_size=8").data)
    path = str(tmp_path / "digits.npy")
    np.save(path, digits)
    unlabelled = tiny_config("data.source=npy", f"data.path={path}", "model.sample_shape=null",
                             "eval.num_samples=40", "eval.features=classifier")
    with pytest.raises(ConfigError, match="eval.features classifier needs labelled data"):
        ev.SampleMetrics(config_lib.resolve(unlabelled), str(tmp_path)).kind
    with pytest.raises(ConfigError, match="eval.features 'inception' applies to images"):
        tiny_config("eval.features=inception", architecture="mlp")

"""Each benchmark script runs end to end in its smoke mode (a few steps) and ends with its JSON
line. Not a timing test: the numbers of a smoke run mean nothing; the keys and shapes do."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run_smoke(script, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", script), "--smoke"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["mode"] == "smoke"
    environment = record["environment"]
    assert environment["TF_NUM_INTRAOP_THREADS"] >= 1 and environment["TF_NUM_INTEROP_THREADS"] >= 1
    assert environment["tensorflow"].startswith("2.15") and len(environment["loadavg"]) == 3
    return record, result.stdout


def test_train_throughput_smoke():
    record, stdout = run_smoke("train_throughput.py", timeout=900)  # three models, one compute-bound
    assert record["ratio_vs_tf_function"] > 0 and record["ratio_vs_naive_k1"] > 0
    baselines = {"tf_function", "tf_function_xla", "naive_k1"}
    expected = {"dcgan": baselines | {"product", "product_default", "product_sn_ema",
                                          "product_mixed_bfloat16"},
                "mlp": baselines | {"product"}}
    expected["resnet"] = {"product", "tf_function"}
    for model, variants in expected.items():
        result = record["models"][model]
        assert set(result["variants"]) == variants
        assert set(result["ratios"]) >= ({"vs_tf_function"} if model == "resnet" else
                                         {"vs_tf_function", "vs_tf_function_xla", "vs_naive_k1"})
        assert result["params"]["generator"] > 0 and result["params"]["discriminator"] > 0
        assert all(v["steps_per_s"] > 0 and v["examples_per_s"] > 0 for v in result["variants"].values())
    dcgan_ratios = record["models"]["dcgan"]["ratios"]
    assert min(dcgan_ratios[k] for k in ("default_vs_tf_function", "sn_ema_vs_tf_function",
                                         "mixed_bfloat16_vs_tf_function")) > 0
    for model in ("dcgan", "resnet"):
        arithmetic = record["models"][model]["arithmetic"]
        assert arithmetic["tf_function_step_gflop"] > arithmetic["product_step_gflop"] > 0
        assert arithmetic["matmul_peak_gflops"] > 0 and arithmetic["product_gflops"] > 0
    assert record["models"]["resnet"]["sample_shape"] == [32, 32, 3]
    assert set(record["targets_met"]) >= {"resnet.vs_tf_function", "dcgan.vs_tf_function"}
    assert "product x" in stdout and "tf_function_xla" in stdout and "GFLOP/s" in stdout


def test_input_pipeline_smoke():
    record, _ = run_smoke("input_pipeline.py", timeout=600)
    sources = record["sources"]
    assert {"digits", "mixture2d", "npy", "images", "tfrecord", "images (no cache)"} <= set(sources)
    assert all(s["pipeline_examples_per_s"] > 0 and s["training_examples_per_s"] > 0 for s in sources.values())
    assert record["min_ratio"] == min(s["ratio"] for s in sources.values())
    sized = record["image_sizes"]
    assert set(sized) == {f"{source} {size}px{cache}" for source in ("tfds", "jpeg")
                          for size in (64, 128) for cache in ("", " (no cache)")}
    assert all(s["pipeline_images_per_s"] > 0 and s["ratio"] > 0 for s in sized.values())
    assert record["training_64px_images_per_s"] > 0
    assert record["min_ratio_64px"] == min(s["ratio"] for s in sized.values() if s["image_size"] == 64)


def test_serving_smoke():
    record, _ = run_smoke("serving.py")
    assert record["max_abs_difference"] < 1e-5  # the export serves the checkpoint's generator
    assert set(record["callers"]) == {"exported", "exported_session", "in_process"}
    for key in ("ratio_batch1_p50", "ratio_batch1_p99", "ratio_batch64_throughput"):
        assert record[key] > 0


def test_scaling_smoke():
    record, _ = run_smoke("scaling.py")
    assert [(p["axis"], p["image_size"]) for p in record["points"]] == [("batch", 28), ("image", 16)]
    assert all(p["product_ms_per_step"] > 0 and p["tf_function_ms_per_step"] > 0 for p in record["points"])

"""Serving: the exported generator (SavedModel) against calling the network in-process.

    python benchmarks/serving.py [--quick | --smoke] [--repeats N]

The MNIST DCGAN generator (configs/mnist_dcgan.yaml, briefly trained) is exported with
`generator_estimator.export_saved_model` and a noise receiver (`{"noise": [B, z_dim]}` ->
`{"samples": ...}`), loaded with `tf.saved_model.load` and called through its
`serving_default` signature (`exported`); `exported_session` runs the same SavedModel in a TF1
Session, as TensorFlow Serving's C++ server does. The in-process baseline runs the same generator graph
(the generator network in inference mode, restored from the checkpoint) with `Session.run`.
Both take numpy noise and return numpy samples. Reported: batch-1 latency p50/p99 and batch-64
throughput, repeats interleaved; ratios are exported / in-process speed (target >= 0.9).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread pools before TensorFlow starts)
from common import GAN, gan_lib, np, tf, v1  # noqa: E402

TARGET = 0.9


def export_generator(gan, export_base: str) -> str:
    z_dim = gan.config.model.z_dim

    def receiver():
        noise = v1.placeholder(tf.float32, [None, z_dim], name="noise")
        return tf.estimator.export.ServingInputReceiver({"noise": noise}, {"noise": noise})

    path = gan.generator_estimator.export_saved_model(export_base, receiver)
    return path.decode() if isinstance(path, bytes) else path


class Exported:
    """The SavedModel's serving signature, as a Python client in another process would call it."""

    def __init__(self, path: str):
        self._model = tf.saved_model.load(path)
        self._fn = self._model.signatures["serving_default"]

    def __call__(self, noise: np.ndarray) -> np.ndarray:
        return self._fn(noise=tf.constant(noise))["samples"].numpy()


class ExportedSession:
    """The same SavedModel loaded into a TF1 Session (what TensorFlow Serving's C++ server does
    with it): the exported graph's own speed, without the Python signature-call layer."""

    def __init__(self, path: str):
        graph = tf.Graph()
        self._session = v1.Session(graph=graph)
        meta = v1.saved_model.loader.load(self._session, ["serve"], path)
        signature = meta.signature_def["serving_default"]
        self._noise = signature.inputs["noise"].name
        self._samples = signature.outputs["samples"].name

    def __call__(self, noise: np.ndarray) -> np.ndarray:
        return self._session.run(self._samples, {self._noise: noise})


class InProcess:
    """The generator network itself, in the process that holds the checkpoint."""

    def __init__(self, gan):
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._noise = v1.placeholder(tf.float32, [None, gan.config.model.z_dim])
            parts = gan_lib.GANParts.from_params(gan.params)
            self._samples = gan_lib.generator_model(parts, self._noise, None).generated
            self._session = v1.Session(graph=self._graph)
            v1.train.Saver().restore(self._session, tf.train.latest_checkpoint(gan.model_dir))

    def __call__(self, noise: np.ndarray) -> np.ndarray:
        return self._session.run(self._samples, {self._noise: noise})


def latencies(fn, noise_batches) -> list:
    out = []
    for noise in noise_batches:
        start = time.perf_counter()
        fn(noise)
        out.append(time.perf_counter() - start)
    return out


def main():
    started = time.time()
    args = common.parse_args(__doc__.splitlines()[0])
    common.print_environment(common.environment())
    workdir = common.workdir("serving")
    smoke = common.smoke_overrides(args)
    config = common.dcgan_config(workdir, *smoke)
    gan = GAN(config, model_dir=os.path.join(workdir, "model"))
    gan.train(max_steps=common.pick(args, 50, 20, 2), progress=False)
    path = export_generator(gan, os.path.join(workdir, "export"))
    callers = {"exported": Exported(path), "exported_session": ExportedSession(path),
               "in_process": InProcess(gan)}

    rng = np.random.RandomState(0)
    z_dim = config.model.z_dim
    check = rng.standard_normal((64, z_dim)).astype(np.float32)
    reference = callers["in_process"](check)
    max_diff = max(float(np.abs(fn(check) - reference).max()) for fn in callers.values())
    single = [rng.standard_normal((1, z_dim)).astype(np.float32)
              for _ in range(common.pick(args, 1000, 300, 5))]
    batches = [rng.standard_normal((64, z_dim)).astype(np.float32) for _ in range(common.pick(args, 100, 30, 2))]
    for fn in callers.values():  # warm-up
        latencies(fn, single[:20] + batches[:3])

    lat1 = {name: [] for name in callers}
    variants = {}
    for name, fn in callers.items():
        def one(fn=fn, name=name):
            times = latencies(fn, single)
            lat1[name].extend(times)
            return common.median(times)
        variants[f"{name} batch 1"] = one
        variants[f"{name} batch 64"] = lambda fn=fn: float(np.sum(latencies(fn, batches))) / len(batches)
    seconds = common.interleave(variants, args.repeats)

    rows, out = [], {}
    for name in callers:
        b64 = common.median(seconds[f"{name} batch 64"])
        out[name] = {"batch1_p50_ms": round(common.percentile(lat1[name], 50) * 1e3, 4),
                     "batch1_p99_ms": round(common.percentile(lat1[name], 99) * 1e3, 4),
                     "batch64_examples_per_s": round(64 / b64, 1)}
        rows.append([name, out[name]["batch1_p50_ms"], out[name]["batch1_p99_ms"], 64 / b64])
    ratios = {}
    for name, prefix in (("exported", "ratio"), ("exported_session", "session_ratio")):
        ratios.update({
            f"{prefix}_batch1_p50": round(out["in_process"]["batch1_p50_ms"] / out[name]["batch1_p50_ms"], 3),
            f"{prefix}_batch1_p99": round(out["in_process"]["batch1_p99_ms"] / out[name]["batch1_p99_ms"], 3),
            f"{prefix}_batch64_throughput": round(out[name]["batch64_examples_per_s"]
                                                  / out["in_process"]["batch64_examples_per_s"], 3),
        })
        rows.append([f"{name} / in_process speed"] + [ratios[f"{prefix}_{k}"] for k in
                                                       ("batch1_p50", "batch1_p99", "batch64_throughput")])
    common.print_table(
        f"generator {'x'.join(map(str, config.model.sample_shape))} (z {z_dim}); {len(single)} batch-1 "
        f"calls and {len(batches)} batch-64 calls per repeat, {args.repeats} repeats; "
        f"max |exported - in-process| = {max_diff:.2g}; target speed ratio >= {TARGET:g}",
        ["caller", "batch-1 p50 ms", "batch-1 p99 ms", "batch-64 examples/s"], rows)
    common.emit_json("serving", args, dict(
        ratios, target_met=min(ratios["ratio_batch1_p50"], ratios["ratio_batch64_throughput"]) >= TARGET,
        max_abs_difference=max_diff, export="generator_estimator.export_saved_model with a noise receiver",
        callers=out), started)


if __name__ == "__main__":
    main()

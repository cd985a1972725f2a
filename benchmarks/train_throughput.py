"""Training throughput: the product's orchestrated loop against the loops users would write.

    python benchmarks/train_throughput.py [--quick | --smoke] [--repeats N]

Variants, each with the same networks (size checked), batch, loss, D:G ratio (1:1) and data,
on the MNIST DCGAN job (configs/mnist_dcgan.yaml, 28x28x1, batch 64) and the 2D MLP job
(configs/mixture_ring.yaml, batch 256):

* `product`      - `GAN.train` as `run_train.py` runs it: progress log, summaries and checkpoints
                   at the config's intervals. Timed per step by a hook after warm-up steps.
* `tf_function`  - Keras models + `tf.GradientTape` inside `tf.function` (TF DCGAN tutorial
                   style), one D update then one G update per step on fresh noise.
* `naive_k1`, `naive_k100` - alternating `discriminator_estimator.train(steps=k)` and
                   `generator_estimator.train(steps=k)`; one pair of calls = k steps.

The variants' repeats are interleaved; the median is reported. A ratio is the product's
throughput divided by the baseline's. The last line is JSON; its top-level `ratio_vs_*` are the
lower of the two models' ratios.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread pools before TensorFlow starts)
from common import GAN  # noqa: E402

TARGETS = {"vs_tf_function": 0.9, "vs_naive_k1": 100.0}


class NaiveAlternation:
    """The recipe the product replaces: alternate `train(steps=k)` on the two Estimators."""

    def __init__(self, config, model_dir: str, k: int):
        self.gan = GAN(config, model_dir=model_dir)
        self.input_fn = self.gan.input_fn()
        self.k = k

    def measure(self) -> float:
        """Seconds per step (one D and one G update) of one pair of `train()` calls."""
        start = time.perf_counter()
        self.gan.discriminator_estimator.train(self.input_fn, steps=self.k)
        self.gan.generator_estimator.train(self.input_fn, steps=self.k)
        return (time.perf_counter() - start) / self.k


def bench_model(name, config, args, workdir, product_steps, naive_ks):
    warmup = common.pick(args, 20, 5, 2)
    print(f"\n{name}: {config.model.architecture} {config.model.sample_shape}, batch "
          f"{config.data.batch_size}, data {config.data.source}", file=sys.stderr, flush=True)
    product = common.ProductLoop(config, os.path.join(workdir, name, "product"))
    tf_loop = common.TFFunctionLoop(config)
    naive = {k: NaiveAlternation(config, os.path.join(workdir, name, f"naive_k{k}"), k) for k in naive_ks}
    if args.mode != "smoke":
        for loop in naive.values():
            loop.measure()  # warm-up: the first pair writes the first checkpoint
    variants = {"product": lambda: product.measure(warmup, product_steps),
                "tf_function": lambda: tf_loop.measure(warmup, product_steps)}
    variants.update({f"naive_k{k}": loop.measure for k, loop in naive.items()})
    seconds = common.interleave(variants, args.repeats)

    per_step = {v: common.median(s) for v, s in seconds.items()}
    batch = common.examples_per_step(config)
    rows, variants_out = [], {}
    for v, sec in per_step.items():
        ratio = sec / per_step["product"]
        rows.append([v, sec * 1e3, 1 / sec, batch / sec, ratio,
                     f"{min(1 / s for s in seconds[v]):.4g}-{max(1 / s for s in seconds[v]):.4g}"])
        variants_out[v] = {"ms_per_step": round(sec * 1e3, 4), "steps_per_s": round(1 / sec, 3),
                           "examples_per_s": round(batch / sec, 1),
                           "steps_per_s_repeats": [round(1 / s, 3) for s in seconds[v]]}
    common.print_table(
        f"{name}: {config.model.architecture} {'x'.join(map(str, config.model.sample_shape))}, "
        f"batch {config.data.batch_size}, D:G {config.train.d_steps}:{config.train.g_steps}, "
        f"params G {tf_loop.sizes['generator']:,} D {tf_loop.sizes['discriminator']:,}; "
        f"product window {product_steps} steps after {warmup} warm-up, median of {args.repeats}",
        ["variant", "ms/step", "steps/s", "examples/s", "product x", "steps/s range"], rows)
    return {
        "sample_shape": config.model.sample_shape, "batch_size": config.data.batch_size,
        "data": config.data.source, "params": tf_loop.sizes, "product_window_steps": product_steps,
        "intervals": {"log": config.train.log_every_steps, "summary": config.train.save_summary_steps,
                      "checkpoint": config.train.save_checkpoints_steps},
        "variants": variants_out,
        "ratios": {f"vs_{v}": round(per_step[v] / per_step["product"], 3) for v in per_step if v != "product"},
    }


def main():
    started = time.time()
    args = common.parse_args(__doc__.splitlines()[0])
    env = common.environment()
    common.print_environment(env)
    workdir = common.workdir("train-throughput")
    smoke = common.smoke_overrides(args)
    models = {
        "dcgan": (common.dcgan_config(workdir, *smoke), common.pick(args, 300, 30, 3),
                  common.pick(args, (1, 100), (1,), (1,))),
        "mlp": (common.mlp_config(), common.pick(args, 2000, 500, 3),
                common.pick(args, (1, 100), (1, 100), (1,))),
    }
    results = {name: bench_model(name, cfg, args, workdir, steps, ks)
               for name, (cfg, steps, ks) in models.items()}

    summary = {}
    for key in sorted({k for r in results.values() for k in r["ratios"]}):
        summary["ratio_" + key] = min(r["ratios"][key] for r in results.values() if key in r["ratios"])
    rows = [[name] + [r["ratios"].get(k[len("ratio_"):], "-") for k in summary] for name, r in results.items()]
    rows.append(["target"] + [TARGETS.get(k[len("ratio_"):], "-") for k in summary])
    common.print_table("product throughput / baseline throughput (median of repeats)",
                       ["model"] + [k[len("ratio_"):] for k in summary], rows)
    summary["targets_met"] = {k: summary["ratio_" + k] >= t for k, t in TARGETS.items() if "ratio_" + k in summary}
    common.emit_json("train_throughput", args, dict(summary, models=results), started)


if __name__ == "__main__":
    main()

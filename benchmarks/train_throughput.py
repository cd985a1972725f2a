"""Training throughput: the product's orchestrated loop against the loops users would write.

    python benchmarks/train_throughput.py [--quick | --smoke] [--repeats N] [--models dcgan,mlp,resnet]

Variants, with the same networks (size checked), batch, loss, D:G ratio and data, on the MNIST
DCGAN job (configs/mnist_dcgan.yaml, 28x28x1, batch 64, D:G 1:1), the 2D MLP job
(configs/mixture_ring.yaml at batch 256, 1:1), both with plain networks (no spectral norm, EMA,
packing, conditioning or augmentation), and the 32 px residual SN-GAN as the paper trains it
(`common.resnet_config`: 32x32x3, batch 64, hinge loss, D:G 5:1, spectral norm in D on both
sides, a hand-written Keras spectral norm in the baseline; no EMA):

* `product`          - `GAN.train` as `run_train.py` runs it, with the product's defaults
                       (steps per run, one G forward per step, progress log, summaries and
                       checkpoints at the config's intervals). Timed per run after warm-up;
                       the run that ends training (it always writes summaries) is not timed.
* `tf_function`      - Keras models + `tf.GradientTape` inside `tf.function` (TF DCGAN tutorial
                       style), one D update then one G update per step on fresh noise.
* `tf_function_xla`  - the same loop with `tf.function(jit_compile=True)`.
* `naive_k1`, `naive_k100` - alternating `discriminator_estimator.train(steps=k)` and
                       `generator_estimator.train(steps=k)`; one pair of calls = k steps.
* The residual SN-GAN is compute-bound (several TFLOP per step): it runs only `product` and
  `tf_function`, over a few steps.
* DCGAN only: `product_default` - `configs/mnist_dcgan.yaml` as shipped (conditional, spectral
  norm and generator EMA on), `product_sn_ema` - `product` with spectral norm and the
  generator EMA (the image defaults of the first release), and `product_mixed_bfloat16` -
  `product` with `train.precision=mixed_bfloat16`.

The variants' repeats are interleaved; the median is reported. A ratio is the product's
throughput divided by the baseline's. For the DCGAN the step's FLOPs are counted from the
product's graph and set against a dense float32 matmul measured in the same run (for the DCGAN
and the residual SN-GAN). The last line is JSON; its top-level `ratio_vs_*` are the lowest of
the models' ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread pools before TensorFlow starts)
from common import GAN  # noqa: E402

TARGETS = {"dcgan": {"vs_tf_function": 1.25, "default_vs_tf_function": 1.0},
           "mlp": {"vs_tf_function": 3.0, "vs_naive_k1": 1000.0},
           "resnet": {"vs_tf_function": 1.0}}


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


def bench_model(name, config, args, workdir, product_steps, naive_ks, extra_products=None,
                warmup=None, xla=True):
    """Interleaved repeats of every variant of one model; its table and JSON record."""
    warmup = warmup or common.pick(args, 20, 5, 2)
    print(f"\n{name}: {config.model.architecture} {config.model.sample_shape}, batch "
          f"{config.data.batch_size}, data {config.data.source}", file=sys.stderr, flush=True)
    products = {"product": common.ProductLoop(config, os.path.join(workdir, name, "product"))}
    for variant, variant_config in (extra_products or {}).items():
        products[variant] = common.ProductLoop(variant_config, os.path.join(workdir, name, variant))
    tf_loop = common.TFFunctionLoop(config)
    xla_loop = common.TFFunctionLoop(config, jit_compile=True) if xla else None
    naive = {k: NaiveAlternation(config, os.path.join(workdir, name, f"naive_k{k}"), k) for k in naive_ks}
    if args.mode != "smoke":
        for loop in naive.values():
            loop.measure()  # warm-up: the first pair writes the first checkpoint
    variants = {v: (lambda p=p: p.measure(warmup, product_steps)) for v, p in products.items()}
    variants["tf_function"] = lambda: tf_loop.measure(warmup, product_steps)
    if xla_loop is not None:
        variants["tf_function_xla"] = lambda: xla_loop.measure(warmup, product_steps)
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
        if v in products:
            variants_out[v]["steps_per_run"] = products[v].steps_per_run
    common.print_table(
        f"{name}: {config.model.architecture} {'x'.join(map(str, config.model.sample_shape))}, "
        f"batch {config.data.batch_size}, D:G {config.train.d_steps}:{config.train.g_steps}, "
        f"params G {tf_loop.sizes['generator']:,} D {tf_loop.sizes['discriminator']:,}; "
        f"product: {products['product'].steps_per_run} steps per run, window {product_steps} "
        f"steps after {warmup} warm-up, median of {args.repeats}",
        ["variant", "ms/step", "steps/s", "examples/s", "product x", "steps/s range"], rows)
    ratios = {f"vs_{v}": round(per_step[v] / per_step["product"], 3)
              for v in per_step if v not in products}
    for variant in products:
        if variant != "product":  # product_default -> default_vs_tf_function, ...
            ratios[variant[len("product_"):] + "_vs_tf_function"] = round(
                per_step["tf_function"] / per_step[variant], 3)
    return {
        "sample_shape": config.model.sample_shape, "batch_size": config.data.batch_size,
        "data": config.data.source, "params": tf_loop.sizes, "product_window_steps": product_steps,
        "intervals": {"log": config.train.log_every_steps, "summary": config.train.save_summary_steps,
                      "checkpoint": config.train.save_checkpoints_steps},
        "variants": variants_out, "ratios": ratios,
    }, per_step, tf_loop


def compute_rate(name, config, per_step: dict, tf_loop) -> dict:
    """A model's step FLOPs (the product's from its graph, the tf.function loop's from its
    traced graph), the achieved GFLOP/s of both, and a dense float32 matmul measured now."""
    product = common.step_flops(config)
    baseline = tf_loop.step_flops()
    peak = common.matmul_peak()
    out = {"product_step_gflop": round(product / 1e9, 3), "tf_function_step_gflop": round(baseline / 1e9, 3),
           "product_gflops": round(product / per_step["product"] / 1e9, 1),
           "tf_function_gflops": round(baseline / per_step["tf_function"] / 1e9, 1),
           "matmul_peak_gflops": round(peak / 1e9, 1)}
    out["product_fraction_of_peak"] = round(out["product_gflops"] / out["matmul_peak_gflops"], 3)
    common.print_table(f"{name} arithmetic (FLOPs counted from the graph; peak: 2048^3 float32 matmul, same run)",
                       ["", "GFLOP/step", "GFLOP/s", "of peak"],
                       [["product", out["product_step_gflop"], out["product_gflops"],
                         out["product_fraction_of_peak"]],
                        ["tf_function", out["tf_function_step_gflop"], out["tf_function_gflops"],
                         round(out["tf_function_gflops"] / out["matmul_peak_gflops"], 3)],
                        ["matmul peak", "-", out["matmul_peak_gflops"], 1.0]])
    return out


def _model_list(value: str):
    names = value.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model {unknown[0]!r}; choose from {','.join(TARGETS)}")
    return names


def _add_arguments(parser):
    parser.add_argument("--models", type=_model_list, default=list(TARGETS),
                        help="comma-separated models to run (default: all): " + ",".join(TARGETS))


def main():
    started = time.time()
    args = common.parse_args(__doc__.splitlines()[0], _add_arguments)
    env = common.environment()
    common.print_environment(env)
    workdir = common.workdir("train-throughput")
    smoke = common.smoke_overrides(args)
    dcgan = common.dcgan_config(workdir, *smoke)
    shipped = common.dcgan_config(workdir, *smoke, plain=False)
    sn_ema = common.dcgan_config(workdir, *smoke, "model.discriminator.spectral_norm=true",
                                 "model.generator.ema_decay=0.999")
    bf16 = common.dcgan_config(workdir, *smoke, "train.precision=mixed_bfloat16")
    # The residual SN-GAN's smoke run: tiny widths and batch, the paper's 5 D steps, one step per
    # run (as its full size gets), so that it makes 3 steps, not 3 runs of 100.
    sngan = common.resnet_config(workdir, *smoke, *(["data.batch_size=8", "train.steps_per_run=1"]
                                                    if args.mode == "smoke" else []))
    models = {
        "dcgan": (dcgan, common.pick(args, 300, 30, 3), common.pick(args, (1, 100), (1,), (1,)),
                  {"product_default": shipped, "product_sn_ema": sn_ema, "product_mixed_bfloat16": bf16}, {}),
        "mlp": (common.mlp_config(), common.pick(args, 2000, 500, 3),
                common.pick(args, (1, 100), (1, 100), (1,)), None, {}),
        "resnet": (sngan, common.pick(args, 4, 2, 2), (), None, {"warmup": 1, "xla": False}),
    }
    results = {}
    for name, (cfg, steps, ks, extra, options) in models.items():
        if name not in args.models:
            continue
        results[name], per_step, tf_loop = bench_model(name, cfg, args, workdir, steps, ks, extra, **options)
        if name in ("dcgan", "resnet"):
            results[name]["arithmetic"] = compute_rate(name, cfg, per_step, tf_loop)

    summary = {}
    for key in sorted({k for r in results.values() for k in r["ratios"]}):
        summary["ratio_" + key] = min(r["ratios"][key] for r in results.values() if key in r["ratios"])
    keys = sorted({k for r in results.values() for k in r["ratios"]})
    rows = [[name] + [r["ratios"].get(k, "-") for k in keys] for name, r in results.items()]
    rows += [[f"target {name}"] + [TARGETS[name].get(k, "-") for k in keys] for name in results]
    common.print_table("product throughput / baseline throughput (median of repeats)", ["model"] + keys, rows)
    summary["targets_met"] = {f"{name}.{k}": results[name]["ratios"][k] >= t
                              for name, targets in TARGETS.items() if name in results
                              for k, t in targets.items() if k in results[name]["ratios"]}
    common.emit_json("train_throughput", args, dict(summary, models=results), started)


if __name__ == "__main__":
    main()

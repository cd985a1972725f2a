"""Scaling: step time against batch size and against image size, product and TF2 loop.

    python benchmarks/scaling.py [--quick | --smoke] [--repeats N]

The MNIST DCGAN job (configs/mnist_dcgan.yaml) on synthetic single-channel images, once with
28x28 images and batch sizes 16..256, once with batch 64 and images of 16, 28, 32 and 64 pixels
(the DCGAN grows a stride-2 layer per halving, so 32 and 64 are deeper networks, not only more
pixels). Each point times the product's loop (`GAN.train`) and the hand-written `tf.function`
loop of the same networks, repeats interleaved, and reports ms/step, examples/s and their ratio:
the product's fixed per-step cost shows where the ratio drops at small work per step.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread pools before TensorFlow starts)

# Steps timed per point at batch 64 x 28x28 (scaled by the work per step, at least 3).
_BASE_STEPS = {"full": 60, "quick": 20}


def points(args):
    batches = common.pick(args, [16, 32, 64, 128, 256], [16, 64, 256], [8])
    sizes = common.pick(args, [16, 28, 32, 64], [16, 28, 32, 64], [16])
    return ([("batch", b, 28, b) for b in batches] + [("image", s, s, 64) for s in sizes if s != 28]
            + ([("image", 28, 28, 64)] if 28 in sizes else []))


def main():
    started = time.time()
    args = common.parse_args(__doc__.splitlines()[0])
    common.print_environment(common.environment())
    workdir = common.workdir("scaling")
    smoke = common.smoke_overrides(args)
    rows, out = [], []
    for axis, value, size, batch in points(args):
        config = common.dcgan_config(workdir, *common.synthetic_image_overrides(workdir, size, 1),
                                     f"data.batch_size={batch}", *smoke)
        work = batch * size * size * (2 if size >= 32 else 1) * (2 if size >= 64 else 1)
        steps = 2 if args.smoke else max(3, int(_BASE_STEPS[args.mode] * 64 * 28 * 28 / work))
        warmup = common.pick(args, 5, 3, 2)
        product = common.ProductLoop(config, os.path.join(workdir, f"{axis}-{value}"))
        tf_loop = common.TFFunctionLoop(config)
        print(f"\n{axis} {value}: {size}x{size}x1, batch {batch}, {steps} steps", file=sys.stderr, flush=True)
        seconds = common.interleave({"product": lambda: product.measure(warmup, steps),
                                     "tf_function": lambda: tf_loop.measure(warmup, steps)}, args.repeats)
        p, t = common.median(seconds["product"]), common.median(seconds["tf_function"])
        params = sum(tf_loop.sizes.values())
        rows.append([axis, value, f"{size}x{size}", batch, params, p * 1e3, t * 1e3, batch / p, t / p])
        out.append({"axis": axis, "value": value, "image_size": size, "batch_size": batch,
                    "params": params, "steps": steps, "product_ms_per_step": round(p * 1e3, 3),
                    "tf_function_ms_per_step": round(t * 1e3, 3),
                    "product_examples_per_s": round(batch / p, 1), "ratio_vs_tf_function": round(t / p, 3)})
    common.print_table(f"step time vs batch size and image size (DCGAN, median of {args.repeats}; ratio = "
                       "product throughput / tf.function throughput)",
                       ["axis", "value", "image", "batch", "params", "product ms/step",
                        "tf.function ms/step", "product ex/s", "ratio"], rows)
    common.emit_json("scaling", args, {"min_ratio_vs_tf_function": min(o["ratio_vs_tf_function"] for o in out),
                                       "points": out}, started)


if __name__ == "__main__":
    main()

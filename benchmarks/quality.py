"""Sample quality per training budget, as a user gets it: train a shipped config with the
command line, export it, and evaluate the *exported* generator, for several seeds.

    python benchmarks/quality.py mixture_ring --seeds 0 1 2 3 4
    python benchmarks/quality.py mixture_grid --seeds 0 1 2
    python benchmarks/quality.py mnist_dcgan --seeds 0 1 2 [--set train.max_minutes=15]
    python benchmarks/quality.py mnist_unconditional --seeds 0 1 2
    python benchmarks/quality.py stacked_mnist --seeds 0 1 2

Each seed runs, in a fresh model dir:

    estimator-gan train --config NAME --model-dir DIR --set train.seed=S [--set ...]
    estimator-gan export --model-dir DIR --export-dir DIR/export
    estimator-gan evaluate --model-dir DIR --export DIR/export

with the config's own `eval.num_samples`. 2D mixtures are judged on 2,500 samples
(`eval.mode_std_k` = 3: a sample is high quality within 3 std of its nearest centre; modes
covered by the papers' rule, at least one high-quality sample, and by ours, 10% of a uniform
share; the reverse KL of the per-mode high-quality histogram against uniform). MNIST on 1,000
samples against the held-out part of `data.split`: Fréchet distance and classifier score next to
the real-vs-real reference, and the rarest class's share of the samples. Stacked MNIST on 26,000
samples (the papers' protocol): each channel labelled by the digit classifier, the modes (digit
triples) holding at least one sample, and KL(mode histogram || uniform over 1,000), next to
stacks of held-out digits. Training time is the train command's own `done: ... in Xs` (graph
building, restores and the final checkpoint included); since a shared host's speed drifts, the
load and a 2048^3 float32 matmul rate are printed from before and after the runs, so times from
different runs can be compared. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import common

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")


def _cli(*args, timeout=7200) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "estimator_gan", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"estimator-gan {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def run_seed(name: str, seed: int, workdir: str, overrides) -> dict:
    model_dir = os.path.join(workdir, f"{name}-seed{seed}")
    sets = [x for o in [f"train.seed={seed}", *overrides] for x in ("--set", o)]
    out = _cli("train", "--config", name, "--model-dir", model_dir, *sets)
    done = re.search(r"done: step (\d+) in ([\d.]+)s|stopped by the time budget .* at step (\d+) after ([\d.]+)s", out)
    step = int(done.group(1) or done.group(3))
    seconds = float(done.group(2) or done.group(4))
    export_dir = os.path.join(model_dir, "export")
    _cli("export", "--model-dir", model_dir, "--export-dir", export_dir, "--generator-only")
    result_path = os.path.join(model_dir, "export_eval.json")
    _cli("evaluate", "--model-dir", model_dir, "--export", export_dir, "--output", result_path)
    with open(result_path, encoding="utf-8") as f:
        record = json.load(f)
    return {"seed": seed, "steps": step, "train_seconds": seconds, "metrics": record["metrics"],
            "reference": record["reference"], "model_dir": model_dir}


def _table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def summarize(name: str, runs) -> str:
    if "high_quality_share" not in runs[0]["metrics"] and "modes_covered" in runs[0]["metrics"]:
        columns = ["seed", "steps", "train s", "modes", "KL", "KL channels", "FD", "FD real"]
        rows = [[r["seed"], r["steps"], f"{r['train_seconds']:.0f}",
                 f"{r['metrics']['modes_covered']}/{r['metrics']['num_modes']}",
                 f"{r['metrics']['kl_to_uniform']:.4f}", f"{r['metrics']['kl_channels']:.4f}",
                 f"{r['metrics']['frechet_distance']:.3f}",
                 f"{r['reference']['frechet_distance']:.3f}"] for r in runs]
        ref = runs[0]["reference"]
        rows.append(["real vs real", "", "", f"{ref['modes_covered']}/{ref['num_modes']}",
                     f"{ref['kl_to_uniform']:.4f}", f"{ref['kl_channels']:.4f}",
                     f"{ref['frechet_distance']:.3f}", ""])
    elif "modes_covered" in runs[0]["metrics"]:
        columns = ["seed", "steps", "train s", "modes (>=1 HQ)", "modes (ours)", "high quality", "KL"]
        rows = [[r["seed"], r["steps"], f"{r['train_seconds']:.1f}",
                 f"{r['metrics']['modes_covered_any']}/{r['metrics']['num_modes']}",
                 f"{r['metrics']['modes_covered']}/{r['metrics']['num_modes']}",
                 f"{100 * r['metrics']['high_quality_share']:.1f}%",
                 f"{r['metrics']['kl_to_uniform']:.4f}"] for r in runs]
    else:
        columns = ["seed", "steps", "train s", "FD", "FD real", "FD x real", "score", "score real",
                   "score / real", "rarest class"]
        rows = []
        for r in runs:
            m, ref = r["metrics"], r["reference"]
            rows.append([r["seed"], r["steps"], f"{r['train_seconds']:.0f}", f"{m['frechet_distance']:.3f}",
                         f"{ref['frechet_distance']:.3f}", f"{m['frechet_distance'] / ref['frechet_distance']:.2f}",
                         f"{m['classifier_score']:.3f}", f"{ref['classifier_score']:.3f}",
                         f"{m['classifier_score'] / ref['classifier_score']:.3f}",
                         f"{100 * m['min_class_share']:.1f}%"])
    return f"{name}\n" + _table(rows, columns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a shipped config name (mixture_ring, mixture_grid, mnist_dcgan, "
                                       "mnist_unconditional, stacked_mnist)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default=os.path.join("runs", "quality"))
    args = parser.parse_args()
    started = time.time()
    overrides = list(args.overrides)
    if "mnist" in args.config and not any(o.startswith("data.path=") for o in overrides):
        overrides.append(f"data.path={SHARED_MNIST}")
    host = {"load_before": round(os.getloadavg()[0], 2),
            "matmul_gflops_before": round(common.matmul_peak() / 1e9, 1)}
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.config, seed, args.workdir, overrides))
        print(f"seed {seed}: {json.dumps({k: v for k, v in runs[-1].items() if k != 'model_dir'})}",
              file=sys.stderr, flush=True)
    host.update(load_after=round(os.getloadavg()[0], 2),
                matmul_gflops_after=round(common.matmul_peak() / 1e9, 1))
    print(summarize(args.config, runs))
    print(f"host: load {host['load_before']} before, {host['load_after']} after; float32 matmul "
          f"{host['matmul_gflops_before']} GFLOP/s before, {host['matmul_gflops_after']} after")
    print(json.dumps({"benchmark": "quality", "config": args.config, "overrides": overrides,
                      "runs": runs, "host": host,
                      "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()

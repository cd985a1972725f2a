"""`run_train.py` end to end in a subprocess, as a user runs it."""
import os
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from conftest import REPO_ROOT

TINY = ["--set", "model.generator.filters=4", "--set", "model.discriminator.filters=4",
        "--set", "model.z_dim=8", "--set", "data.batch_size=16", "--set", "train.log_every_steps=2",
        "--set", "train.save_checkpoints_steps=3", "--set", "train.sample_grid=3"]


def run_train(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_default_job_writes_checkpoint_config_events_and_samples_then_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    result = run_train("--model-dir", model_dir, "--max-steps", "4", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step       4/4" in result.stdout and "steps/s" in result.stdout and "ETA" in result.stdout
    assert int(tf.train.load_variable(tf.train.latest_checkpoint(model_dir), "global_step")) == 4
    saved = yaml.safe_load(open(os.path.join(model_dir, "config.yaml")))
    assert saved["train"]["max_steps"] == 4 and saved["model"]["sample_shape"] == [16, 16, 1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir))
    assert "step_00000004.png" in os.listdir(os.path.join(model_dir, "samples"))

    again = run_train("--model-dir", model_dir, "--max-steps", "4", *TINY)
    assert again.returncode == 0 and "already at step 4" in again.stdout
    more = run_train("--model-dir", model_dir, "--max-steps", "6", *TINY)
    assert more.returncode == 0 and "resuming at step 4" in more.stdout, more.stderr[-2000:]
    assert int(tf.train.load_variable(tf.train.latest_checkpoint(model_dir), "global_step")) == 6

    changed = run_train("--model-dir", model_dir, "--max-steps", "8", *TINY, "--set", "model.z_dim=9")
    assert changed.returncode == 2
    assert changed.stderr.strip().count("\n") == 0
    assert "model.z_dim: 8 in the checkpoint's config, 9 now" in changed.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.max_stepz=3"], "train.max_stepz: unknown key"),
    (["--set", "data.source=images", "--set", "data.path=/nonexistent/pics"], "/nonexistent/pics"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_error(tmp_path, args, fragment):
    result = run_train("--model-dir", str(tmp_path / "m"), *args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert fragment in result.stderr

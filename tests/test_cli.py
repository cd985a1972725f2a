"""`run_train.py` end to end in a subprocess, as a user runs it."""
import os
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from conftest import REPO_ROOT
from estimator_gan import cli

TINY = ["--set", "model.generator.filters=4", "--set", "model.discriminator.filters=4",
        "--set", "model.z_dim=8", "--set", "data.batch_size=16", "--set", "train.log_every_steps=2",
        "--set", "train.save_checkpoints_steps=3", "--set", "train.sample_grid=3"]


def run_train(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
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


def run_cli(*args, env=None, timeout=240):
    """`python -m estimator_gan ARGS` in a subprocess, TF_CPP_MIN_LOG_LEVEL unset unless given."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} if env is None else env
    return subprocess.run([sys.executable, "-m", "estimator_gan", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_shows_the_whole_description_and_version_answers():
    import estimator_gan

    shown = run_cli("--help")
    assert shown.returncode == 0, shown.stderr
    description = shown.stdout.split("\n\n")[1]
    assert " ".join(description.split()) == ("Train GANs on TensorFlow Estimators and export the "
                                             "generator for TensorFlow Serving (and TFLite).")
    assert "Exit codes: 0 done" in shown.stdout and "--version" in shown.stdout
    for version in (run_cli("--version"),
                    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_train.py"), "--version"],
                                   capture_output=True, text=True, timeout=120)):
        assert version.returncode == 0 and version.stdout == f"estimator-gan {estimator_gan.__version__}\n"


@pytest.mark.parametrize("level", [None, "0", "2"])
def test_tensorflow_start_up_noise_is_not_shown(tmp_path, level):
    """TensorFlow 2.15 logs 'Unable to register cuDNN/cuFFT/cuBLAS factory' at import on any
    machine; the command line drops those three lines whatever TF_CPP_MIN_LOG_LEVEL the user
    set, and keeps the user's level for everything else."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    result = run_cli("generate", "--export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png"),
                     env=env, timeout=180)
    assert result.returncode == 2
    assert "Unable to register" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: export not found: {tmp_path / 'missing'}"
    if level != "0":  # 0 shows TensorFlow's info lines, as the user asked
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path, capsys):
    code = cli.main(["train", "--model-dir", str(tmp_path / "m"), "--set", "train.max_stepz=3", "--debug"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.max_stepz: unknown key" in last


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"], ids=["empty", "comments-only"])
def test_empty_config_file_is_refused(tmp_path, capsys, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    code = cli.main(["train", "--model-dir", str(tmp_path / "m"), "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.strip() == (f"error: config file {path} is empty (no settings): add settings, or give "
                           f"no config file to run the default job")
    assert not (tmp_path / "m").exists()

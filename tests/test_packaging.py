"""The package as a user installs it: a wheel built from this checkout, installed into a fresh
virtual environment outside it, runs the default job and a shipped config by name from another
directory. (The fresh environment borrows the test environment's dependencies, TensorFlow
included, through a path entry, so the test needs no network; estimator_gan itself comes only
from the wheel.)"""
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO_ROOT

TINY = ["--set", "model.generator.filters=4", "--set", "model.discriminator.filters=4",
        "--set", "model.z_dim=8", "--set", "data.batch_size=16", "--set", "train.log_every_steps=2",
        "--set", "train.save_checkpoints_steps=2"]


def _run(args, cwd, timeout=300, env=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(root / "dist"), REPO_ROOT], cwd=str(root))
    (wheel,) = list((root / "dist").glob("estimator_gan-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=str(root))
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=str(root))
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=str(root)).stdout.strip()
    with open(os.path.join(site, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return wheel, venv, work


@pytest.mark.slow
def test_wheel_ships_the_configs(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("digits_dcgan", "mnist_dcgan", "mixture_ring", "mixture_grid"):
        assert f"estimator_gan/configs/{config}.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


@pytest.mark.slow
def test_installed_package_runs_the_default_job_and_a_shipped_config(installed):
    _, venv, work = installed
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    where = _run([str(venv / "bin" / "python"), "-c", "import estimator_gan; print(estimator_gan.__file__)"],
                 cwd=str(work), env=env).stdout.strip()
    assert where.startswith(str(venv)), where
    cli = str(venv / "bin" / "estimator-gan")
    default = _run([cli, "train", "--model-dir", "default", "--max-steps", "2", *TINY], cwd=str(work), env=env)
    assert "training dcgan on digits (16x16x1)" in default.stdout and "done: step 2" in default.stdout
    ring = _run([cli, "train", "--config", "mixture_ring", "--model-dir", "ring", "--max-steps", "20",
                 "--set", "train.log_every_steps=10", "--set", "train.save_checkpoints_steps=10"],
                cwd=str(work), env=env)
    assert "training mlp on mixture2d (2)" in ring.stdout and "done: step 20" in ring.stdout
    assert (work / "ring" / "samples" / "step_00000020.png").is_file()
    assert not (work / "ram:").exists()


def test_setup_py_shim_reads_the_metadata_in_pyproject():
    """Tools that still run `python setup.py` get the version pyproject.toml declares (the
    wheel above is built with the shim present, as `pip install .` builds it)."""
    import estimator_gan

    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == estimator_gan.__version__

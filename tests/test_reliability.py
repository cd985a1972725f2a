"""Preemption, kill -9, divergence, determinism, concurrent runs and the bad-input table.

Signals, kills and the lock run `run_train.py` in real subprocesses; the bad-input rows call
the CLI's `main` in this process (same code path, same one-line output, no TF start-up each).
"""
import contextlib
import glob
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO_ROOT, checkpoint_values, newest_complete_step, tiny_config
from estimator_gan import checkpoints, cli
from estimator_gan import memory as memory_lib
from estimator_gan import config as config_lib
from estimator_gan.errors import ModelDirLocked
from estimator_gan.gan import GAN
from estimator_gan.model import gan as gan_lib
from estimator_gan.runtime import loop
from estimator_gan.runtime import failures
from estimator_gan.runtime import model_dir as model_dir_lib
from test_cli import TINY, run_train

SLOW_SAVES = ["--set", "train.save_checkpoints_steps=100000", "--set", "train.log_every_steps=20"]


# --------------------------------------------------------------------------------- helpers


def start_train(out_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    with open(out_path, "w") as out:
        return subprocess.Popen(
            [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *args, *TINY],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(path):
    with open(path) as f:
        return f.read()


def training_started(out_path):
    return lambda: any(line.startswith("step ") for line in read(out_path).splitlines())


def stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def ckpt_step(path):
    return int(tf.train.load_variable(path, "global_step"))


def assert_model_dir_intact(model_dir):
    """Every checkpoint the state file lists loads in full with consistent counters; config
    and sample PNGs parse. Returns the latest step."""
    state = tf.train.get_checkpoint_state(model_dir)
    assert state is not None, os.listdir(model_dir)
    for path in state.all_model_checkpoint_paths:
        values = checkpoint_values(path)
        assert values["global_step"] == values["generator_step"] == values["discriminator_step"]
        assert all(np.isfinite(v).all() for v in values.values() if v.dtype.kind == "f")
    config_lib.load_config(os.path.join(model_dir, "config.yaml"))
    samples = os.path.join(model_dir, "samples")
    for name in os.listdir(samples) if os.path.isdir(samples) else []:
        if name.endswith(".png") and not name.startswith("."):
            Image.open(os.path.join(samples, name)).load()
    return ckpt_step(state.model_checkpoint_path)


def cli_train(capsys, model_dir, *args):
    code = cli.main(["train", "--model-dir", str(model_dir), *TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    print(err.strip())  # the observed message, shown by `pytest -rP`
    return err.strip()


@contextlib.contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at `path` (needs root); skips the test where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------------- signals and lock


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resumes_and_a_second_training_is_refused(tmp_path):
    model_dir = str(tmp_path / "run")
    out = str(tmp_path / "a.out")
    first = start_train(out, "--model-dir", model_dir, "--max-steps", "1000000", *SLOW_SAVES)
    try:
        wait_for(training_started(out), what="the first progress line")
        second = run_train("--model-dir", model_dir, *TINY)
        assert_one_line_error(second.returncode, second.stderr, f"{model_dir} is in use by another "
                              f"training (pid {first.pid} on {socket.gethostname()} since ")
        assert first.poll() is None

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, read(out)
    finally:
        stop(first)
    log = read(out)
    assert "SIGTERM received: stopping after this step and saving a checkpoint" in log
    stopped = [line for line in log.splitlines() if line.startswith("stopped by SIGTERM at step ")]
    assert stopped, log
    step = int(stopped[0].split()[5])
    assert assert_model_dir_intact(model_dir) == step > 20
    events = [e for f in tf.io.gfile.glob(os.path.join(model_dir, "events.out.tfevents*"))
              for e in tf.compat.v1.train.summary_iterator(f)]
    assert any(e.step == step and e.session_log.status == e.session_log.CHECKPOINT for e in events)
    assert read(os.path.join(model_dir, model_dir_lib.LOCK_FILENAME)) == ""

    resumed = run_train("--model-dir", model_dir, "--max-steps", str(step + 3), *TINY)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {step}," in resumed.stdout and "stale lock" not in resumed.stderr
    assert assert_model_dir_intact(model_dir) == step + 3


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    model_dir = str(tmp_path / "run")
    out = str(tmp_path / "a.out")
    proc = start_train(out, "--model-dir", model_dir, "--max-steps", "1000000", *SLOW_SAVES)
    try:
        wait_for(training_started(out), what="the first progress line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, read(out)
    finally:
        stop(proc)
    stopped = [line for line in read(out).splitlines() if line.startswith("stopped by SIGINT")]
    assert stopped and "Traceback" not in read(out), read(out)
    assert assert_model_dir_intact(model_dir) == int(stopped[0].split()[5])


def test_sigterm_during_start_up_exits_0_with_a_line(tmp_path):
    """SIGTERM before training's own handler is up (here: while the config's generator module
    is imported) exits 0 with a line, as documented, not 143 in silence. The module blocks on a
    FIFO, so the signal lands in start-up whatever the host's speed."""
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (tmp_path / "startup_blocker.py").write_text(
        f"open({fifo!r}).read()  # start-up waits here until the test writes\n"
        "from custom_nets import v1_generator as generator\n")
    model_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO_ROOT, "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), "--model-dir", str(model_dir),
         "--set", "model.generator_fn=startup_blocker:generator", *TINY],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = []

    def blocked_in_start_up():
        assert proc.poll() is None, proc.communicate()
        try:
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO until it reads
            return True
        except OSError:
            return False

    try:
        wait_for(blocked_in_start_up, what="start-up to reach the config's generator module")
        proc.send_signal(signal.SIGTERM)
        os.close(writer.pop())  # unblock, should the signal not have ended it
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, (proc.returncode, err[-2000:])
    assert err.strip().splitlines() == [
        "SIGTERM received outside the training loop: exiting; nothing unsaved was lost"], err
    assert not model_dir.exists()


@pytest.mark.slow
def test_kill_9_at_many_points_loses_nothing_and_resumes(tmp_path):
    """Kills cycle through three moments: start-up (graph building, restore, first save), the
    instant a save's temporary file appears, and a random moment of the loop (checkpoints every
    step). After each kill every listed checkpoint loads, the newest complete checkpoint's step
    never goes back, and the next run resumes from it (not from the state file's, which a kill
    can leave one save behind), removes the partial files and takes over the stale lock."""
    points = int(os.environ.get("RELIABILITY_KILL_POINTS", "4"))
    model_dir = str(tmp_path / "run")
    rng = random.Random(7)
    latest, partial_kills, stale_lock, takeovers = 0, [], False, 0
    lock_path = os.path.join(model_dir, model_dir_lib.LOCK_FILENAME)
    for i in range(points):
        out = str(tmp_path / f"run{i}.out")
        leftovers = set(model_dir_lib.partial_files(model_dir))
        proc = start_train(out, "--model-dir", model_dir, "--max-steps", "1000000",
                           "--set", "train.save_checkpoints_steps=1")
        try:
            moment = ("start-up", "save", "loop")[i % 3]
            if moment == "start-up":
                wait_for(lambda: "training dcgan" in read(out), what="start-up")
                time.sleep(rng.uniform(0.0, 2.0))
            else:
                wait_for(training_started(out), what="the first progress line")
                if moment == "save":
                    wait_for(lambda: set(model_dir_lib.partial_files(model_dir)) - leftovers,
                             what="a save in progress")
                else:
                    time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            stop(proc)
        holder = read(lock_path).strip() if os.path.exists(lock_path) else ""
        took_lock = bool(holder) and json.loads(holder)["pid"] == proc.pid
        if i:
            assert (f"resuming at step {latest}," if latest else "from scratch") in read(out), read(out)
            # a kill before the lock was taken leaves no holder to take over from, and a run
            # killed before it reached the lock took nothing over
            if took_lock:
                assert ("taking over the stale lock" in read(out)) == stale_lock, read(out)
                takeovers += stale_lock
        stale_lock = bool(holder)
        partial_kills += sorted(os.path.basename(p) for p in
                                set(model_dir_lib.partial_files(model_dir)) - leftovers)
        if tf.train.latest_checkpoint(model_dir):
            assert_model_dir_intact(model_dir)
        step = newest_complete_step(model_dir)
        assert step >= latest
        latest = step
    print(f"kill -9 points: {points}; partial files they left: {partial_kills}; latest step {latest}")
    assert takeovers >= 1, "no kill left a stale lock to take over"

    final = run_train("--model-dir", model_dir, "--max-steps", str(latest + 2), *TINY)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming at step {latest}," in final.stdout
    assert assert_model_dir_intact(model_dir) == latest + 2
    assert not model_dir_lib.partial_files(model_dir)


def test_stale_lock_is_taken_over_and_a_held_one_refused(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / model_dir_lib.LOCK_FILENAME
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with model_dir_lib.RunLock(str(tmp_path)) as lock:
        assert lock.took_over.startswith(f"pid {dead.pid} on {socket.gethostname()}")
        assert "no longer running" in lock.took_over
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(ModelDirLocked, match=f"in use by another training \\(pid {os.getpid()}"):
            with model_dir_lib.RunLock(str(tmp_path)):
                pass
    assert path.read_text() == ""
    assert "taking over the stale lock" in capsys.readouterr().err


# -------------------------------------------------------------- divergence, determinism


def test_non_finite_loss_stops_without_saving_and_exits_3(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code, out, err = cli_train(
        capsys, model_dir, "--max-steps", "50", "--set", "train.save_checkpoints_steps=2",
        "--set", "train.generator_optimizer.name=sgd", "--set", "train.discriminator_optimizer.name=sgd",
        "--set", "train.generator_optimizer.learning_rate=1e3",
        "--set", "train.discriminator_optimizer.learning_rate=1e3",
        "--set", "model.discriminator.spectral_norm=false")
    message = assert_one_line_error(code, err, "training stopped without saving",
                                    exit_code=failures.EXIT_DIVERGED)
    words = message.split()
    assert words[1] in ("generator", "discriminator")
    bad_step = int(words[words.index("step") + 1].rstrip(":"))
    latest = assert_model_dir_intact(str(model_dir))  # also: no NaN/inf in any checkpoint
    assert latest < bad_step and f"the last good checkpoint is step {latest} " in message


def logged_losses(model_dir):
    """{step: (D loss, G loss)} from the TensorBoard events of a model dir (float32, exact)."""
    values = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, "events.out.tfevents*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in ("loss/discriminator", "loss/generator"):
                    values.setdefault(event.step, {})[value.tag] = value.simple_value
    return {step: (v["loss/discriminator"], v["loss/generator"]) for step, v in sorted(values.items())
            if len(v) == 2}


def _recorded_losses(config, model_dir, steps):
    """Both losses of every step, from summaries written every step."""
    train = config.train.model_copy(update={"save_summary_steps": 1})
    GAN(config.model_copy(update={"train": train}), model_dir=model_dir).train(max_steps=steps, progress=False)
    losses = logged_losses(model_dir)
    return np.array([losses[step] for step in range(1, steps + 1)])


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["dcgan", "mlp"])
def test_same_seed_gives_identical_losses_from_scratch(tmp_path, architecture):
    shape = ["model.sample_shape=[16,16,1]"] if architecture == "dcgan" else []  # digits
    config = tiny_config(*shape, "train.seed=11", "train.save_checkpoints_steps=1000",
                         architecture=architecture)
    first = _recorded_losses(config, str(tmp_path / "a"), 15)
    again = _recorded_losses(config, str(tmp_path / "b"), 15)
    other = _recorded_losses(tiny_config(*shape, "train.seed=12", architecture=architecture),
                             str(tmp_path / "c"), 15)
    assert first.shape == (15, 2)
    np.testing.assert_array_equal(first, again)  # bitwise, on CPU
    assert not np.array_equal(first, other)


# ------------------------------------------------------------------------ bad input table


def write_png(path, size, mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, 128).save(path)


@pytest.mark.parametrize("args, fragments", [
    (["--set", "train.max_stepz=3"], ["train.max_stepz: unknown key"]),
    (["--set", "data.batch_size=many"], ["data.batch_size: Input should be a valid integer", "'many'"]),
    (["--set", "train.generator_optimizer.learning_rate=-0.1"],
     ["train.generator_optimizer.learning_rate: Input should be greater than 0 (got -0.1)"]),
    (["--set", "data.batch_size=0"], ["data.batch_size: Input should be greater than or equal to 1"]),
    (["--set", "train.d_steps=0"], ["train.d_steps: Input should be greater than or equal to 1"]),
    (["--set", "data.source=images", "--set", "data.path=/nonexistent/pics"],
     ["images: /nonexistent/pics does not exist"]),
], ids=["unknown-key", "wrong-type", "negative-lr", "zero-batch", "zero-d-steps", "missing-path"])
def test_config_and_path_errors(tmp_path, capsys, args, fragments):
    assert_one_line_error(*cli_train(capsys, tmp_path / "m", *args)[::2], *fragments)


def test_config_path_that_is_a_directory(tmp_path, capsys):
    assert_one_line_error(*cli_train(capsys, tmp_path / "m", "--config", str(tmp_path))[::2],
                          f"config path {tmp_path} is a directory, not a YAML file")
    assert not (tmp_path / "m").exists()


def test_model_too_large_for_memory_is_refused_before_anything_is_written(tmp_path, capsys):
    model_dir = tmp_path / "m"
    started = time.time()
    message = assert_one_line_error(*cli_train(capsys, model_dir, "--set", "model.z_dim=1000000000")[::2],
                                    "the networks need about ", "GiB for their variables",
                                    "generator/project/kernel [1000000000, ", "model.z_dim=1000000000",
                                    "make the model smaller")
    assert time.time() - started < 60, "the check must not allocate the variables"
    assert not model_dir.exists(), message


def test_batch_too_large_for_memory_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """The default job at data.batch_size=100000 under a 10 GiB limit died of std::bad_alloc
    (exit 134) after writing ckpt-0; the step's memory is estimated from the graph first."""
    limit = memory_lib.Memory(10 << 30, "its cgroup's memory limit")
    monkeypatch.setattr(memory_lib, "available", lambda: limit)
    model_dir = tmp_path / "m"
    code = cli.main(["train", "--model-dir", str(model_dir), "--set", "data.batch_size=100000"])
    message = assert_one_line_error(code, capsys.readouterr().err,
                                    "error: data.batch_size=100000 needs about ", " GiB per training step",
                                    "more than 80% of its cgroup's memory limit, 10.0 GiB: lower "
                                    "data.batch_size (about ")
    assert not model_dir.exists(), message
    fits = int(message.split("(about ")[1].split()[0])
    assert 20000 < fits < 50000, message  # measured: about 183 KB per example for this model
    default = loop.check_model_size(gan_lib.GANParts.from_params({"config": config_lib.resolve(
        config_lib.load_config(None, [f"data.batch_size={fits}"]))}), limit)
    assert default.variable_bytes + default.step_bytes <= 0.8 * limit.bytes


def test_memory_limit_is_read_from_the_cgroup(tmp_path):
    proc = tmp_path / "cgroup"
    v1_dir = tmp_path / "fs" / "memory" / "job" / "task"
    v1_dir.mkdir(parents=True)
    proc.write_text("4:memory:/job/task\n1:cpu:/\n")
    (v1_dir / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    assert memory_lib.cgroup_limit(str(proc), str(tmp_path / "fs")) is None
    (v1_dir.parent / "memory.limit_in_bytes").write_text(f"{10 << 30}\n")  # the job's limit binds
    assert memory_lib.cgroup_limit(str(proc), str(tmp_path / "fs")) == 10 << 30
    v2_dir = tmp_path / "fs" / "user.slice" / "job"
    v2_dir.mkdir(parents=True)
    proc.write_text("0::/user.slice/job\n")
    (v2_dir / "memory.max").write_text("max\n")
    assert memory_lib.cgroup_limit(str(proc), str(tmp_path / "fs")) is None
    (v2_dir / "memory.max").write_text(f"{3 << 30}\n")
    assert memory_lib.cgroup_limit(str(proc), str(tmp_path / "fs")) == 3 << 30
    assert memory_lib.cgroup_limit(str(tmp_path / "missing"), str(tmp_path / "fs")) is None
    assert memory_lib.available().bytes <= memory_lib.physical_bytes()


def test_empty_image_folder(tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "notes.txt").write_text("no images here")
    assert_one_line_error(*cli_train(capsys, tmp_path / "m", "--set", "data.source=images", "--set",
                                     f"data.path={tmp_path / 'pics'}")[::2], "images: no PNG/JPEG files in")


@contextlib.contextmanager
def as_unprivileged_user():
    """Permissions do not bind root: act as `nobody` for the block (or as yourself if not root)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_image_folder(capsys):
    base = tempfile.mkdtemp()
    try:
        os.chmod(base, 0o777)
        pics = os.path.join(base, "pics")
        write_png(os.path.join(pics, "a.png"), (8, 8))
        os.chmod(pics, 0)
        with as_unprivileged_user():
            result = cli_train(capsys, os.path.join(base, "m"), "--set", "data.source=images",
                               "--set", f"data.path={pics}")
        assert_one_line_error(*result[::2], f"images: cannot read folder {pics} (Permission denied)")
    finally:
        os.chmod(os.path.join(base, "pics"), 0o755)
        subprocess.run(["rm", "-rf", base], check=False)


def test_corrupt_image_fails_by_default(tmp_path, capsys):
    write_png(str(tmp_path / "pics" / "good.png"), (8, 8))
    (tmp_path / "pics" / "bad.png").write_bytes(b"\x89PNG truncated")
    assert_one_line_error(*cli_train(capsys, tmp_path / "m", "--set", "data.source=images", "--set",
                                     f"data.path={tmp_path / 'pics'}")[::2],
                          f"images: cannot decode {tmp_path / 'pics' / 'bad.png'}")


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """One short training on an images folder with mixed sizes and modes and a corrupt file
    skipped (`data.on_corrupt=skip`): rows below reuse its model_dir."""
    root = tmp_path_factory.mktemp("mixed")
    for i, (size, mode) in enumerate([((8, 8), "L"), ((12, 10), "RGB"), ((30, 17), "L"), ((9, 9), "RGBA")]):
        write_png(str(root / "pics" / f"{i}.png"), size, mode)
    (root / "pics" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    args = ["--set", "data.source=images", "--set", f"data.path={root / 'pics'}", "--set", "data.image_size=8",
            "--set", "data.channels=1", "--set", "data.batch_size=2", "--set", "data.on_corrupt=skip",
            "--max-steps", "2"]
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["train", "--model-dir", str(root / "run"), *TINY, *args])
    return str(root / "run"), code, out.getvalue(), err.getvalue()


def test_mixed_sizes_are_resized_and_corrupt_files_skipped_with_a_count(trained_dir):
    model_dir, code, out, err = trained_dir
    assert code == 0, err
    assert "training dcgan on images (8x8x1)" in out and "done: step 2" in out
    assert "images: skipped 1 undecodable files (first: " in err and "broken.jpg" in err
    assert assert_model_dir_intact(model_dir) == 2


def test_skipped_files_are_noted_once(trained_dir):
    """The training input and the sample pictures read the same folder; the note is said once."""
    _, code, _, err = trained_dir
    assert code == 0, err
    assert err.count("skipped 1 undecodable files") == 1, err


def test_npy_source_smaller_than_one_batch_trains_with_a_note(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.RandomState(0).normal(size=(5, 2)).astype(np.float32))
    code, out, err = cli_train(capsys, tmp_path / "m", "--set", "data.source=npy", "--set",
                               f"data.path={tmp_path / 'x.npy'}", "--set", "model.architecture=mlp",
                               "--max-steps", "2")
    assert code == 0, err
    assert "done: step 2" in out
    assert err.count("note: npy has 5 examples, fewer than one batch (data.batch_size=16): every "
                     "batch repeats them") == 1, err


def test_labels_out_of_range(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((20, 2), np.float32))
    np.save(tmp_path / "y.npy", np.arange(20) % 5)
    assert_one_line_error(*cli_train(
        capsys, tmp_path / "m", "--set", "data.source=npy", "--set", f"data.path={tmp_path / 'x.npy'}",
        "--set", f"data.labels_path={tmp_path / 'y.npy'}", "--set", "model.architecture=mlp",
        "--set", "model.conditional=true", "--set", "model.num_classes=3")[::2],
        "npy: labels go up to 4 but model.num_classes is 3; labels must lie in 0..2")


def test_npy_with_nan_is_refused_before_training(tmp_path, capsys):
    x = np.zeros((20, 2), np.float32)
    x[13, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    model_dir = tmp_path / "m"
    assert_one_line_error(*cli_train(capsys, model_dir, "--set", "data.source=npy", "--set",
                                     f"data.path={tmp_path / 'x.npy'}", "--set", "model.architecture=mlp")[::2],
                          f"npy: {tmp_path / 'x.npy'} holds NaN at index (13, 0); every value must be finite")
    assert not glob.glob(str(model_dir / "model.ckpt-*")) and not glob.glob(str(model_dir / "events.*"))


def test_tfrecord_without_the_image_feature(tmp_path, capsys):
    path = str(tmp_path / "x.tfrecord")
    example = tf.train.Example(features=tf.train.Features(feature={
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc"]))}))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    assert_one_line_error(*cli_train(capsys, tmp_path / "m", "--set", "data.source=tfrecord", "--set",
                                     f"data.path={path}")[::2], f"tfrecord: {path} has no feature 'image/encoded'")


def test_file_that_is_not_a_tfrecord_gives_tensorflows_reason_only(tmp_path, capsys):
    path = tmp_path / "x.tfrecord"
    path.write_bytes(b"these bytes are not a TFRecord file at all")
    message = assert_one_line_error(*cli_train(capsys, tmp_path / "m", "--set", "data.source=tfrecord",
                                               "--set", f"data.path={path}")[::2])
    assert message == f"error: tfrecord: cannot read {path} (corrupted record at 0 (Is this even a TFRecord file?))"


def test_checkpoint_of_a_different_architecture_without_its_config(trained_dir, tmp_path, capsys):
    model_dir = tmp_path / "copy"
    subprocess.run(["cp", "-r", trained_dir[0], str(model_dir)], check=True)
    os.remove(model_dir / "config.yaml")  # so only the checkpoint itself can tell
    result = cli_train(capsys, model_dir, "--set", "data.image_size=8", "--max-steps", "3",
                       "--set", "model.z_dim=9")
    assert_one_line_error(*result[::2], f"{model_dir} holds a checkpoint that does not fit these settings "
                          "(generator/project/kernel: [8, ", "in the checkpoint, [9, ")


def test_model_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "m").write_text("")
    assert_one_line_error(*cli_train(capsys, tmp_path / "m")[::2], f"{tmp_path / 'm'} exists and is not a directory")


def test_model_dir_that_is_not_writable(tmp_path, capsys):
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        result = cli_train(capsys, tmp_path / "ro" / "m")
        assert_one_line_error(*result[::2], "cannot write", "Permission denied")
        return
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        result = cli_train(capsys, os.path.join(ro, "m"))
    assert_one_line_error(*result[::2], f"cannot write {ro}/m: Read-only file system")


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "size=5m") as disk:
        model_dir = os.path.join(disk, "m")
        result = cli_train(capsys, model_dir, "--max-steps", "60")
        assert_one_line_error(*result[::2], "no space left on the device", "free space and rerun")
        latest = assert_model_dir_intact(model_dir)
        assert 0 < latest < 60

        subprocess.run(["mount", "-o", "remount,size=20m", disk], check=True)
        code, out, err = cli_train(capsys, model_dir, "--max-steps", str(latest + 3))
        assert code == 0, err
        assert f"resuming at step {latest}," in out
        assert assert_model_dir_intact(model_dir) == latest + 3
        assert not model_dir_lib.partial_files(model_dir)


def test_unreadable_latest_checkpoint_is_set_aside_and_training_resumes_from_the_previous(
        trained_dir, tmp_path, capsys):
    model_dir = tmp_path / "copy"
    subprocess.run(["cp", "-r", trained_dir[0], str(model_dir)], check=True)
    with open(model_dir / "model.ckpt-2.data-00000-of-00001", "r+b") as f:
        f.truncate(100)  # a storage fault; kills cannot do this
    args = ["--set", "data.source=digits", "--set", "data.image_size=8", "--set", "data.channels=1"]
    code, out, err = cli_train(capsys, model_dir, *args, "--max-steps", "3")
    assert code == 0, err
    assert ("note: checkpoint model.ckpt-2 is unreadable (Read less bytes than requested); moved "
            "aside as *.corrupt, resuming from model.ckpt-0") in err
    assert "from scratch, to step 3" in out  # the step-0 checkpoint
    assert assert_model_dir_intact(str(model_dir)) == 3
    assert os.path.exists(model_dir / "model.ckpt-2.index.corrupt")


# --------------------------------------------------------------- any TensorFlow filesystem


@pytest.mark.slow
def test_model_dir_on_a_tensorflow_filesystem(tmp_path, monkeypatch, capsys):
    """Train, resume, evaluate, export and generate with `ram://` model and export dirs (the same
    code path as gs:// or s3://): every file goes through TensorFlow's filesystem layer, so
    nothing lands in a local folder named `ram:`."""
    monkeypatch.chdir(tmp_path)
    model_dir, exports = f"ram://{tmp_path.name}/run", f"ram://{tmp_path.name}/exports"
    args = ["--set", "data.image_size=8", "--set", "model.generator.filters=4",
            "--set", "model.discriminator.filters=4", "--set", "model.z_dim=8",
            "--set", "data.batch_size=16", "--set", "train.save_checkpoints_steps=2",
            "--set", "train.log_every_steps=2"]
    code, out, err = cli_train(capsys, model_dir, *args[:], "--max-steps", "4")
    assert code == 0, err
    assert "is on a filesystem without file locks" in err and "done: step 4" in out
    code, out, err = cli_train(capsys, model_dir, *args, "--max-steps", "6")
    assert code == 0 and "resuming at step 4" in out, err
    files = tf.io.gfile.listdir(model_dir)
    assert {"config.yaml", "checkpoint", "model.ckpt-6.index"} <= set(files), files
    assert tf.io.gfile.exists(f"{model_dir}/samples/step_00000006.png")
    assert checkpoints.step_of(tf.train.latest_checkpoint(model_dir)) == 6

    eval_args = ["--set", "eval.num_samples=64", "--set", "eval.classifier_epochs=1",
                 "--set", "eval.kid_subset_size=32", "--set", "eval.eval_batches=2"]
    assert cli.main(["evaluate", "--model-dir", model_dir, "--plot", *eval_args]) == 0
    assert json.loads(tf.io.gfile.GFile(f"{model_dir}/eval.json").read())["step"] == 6
    assert tf.io.gfile.exists(f"{model_dir}/evaluation/metrics.png")
    assert cli.main(["export", "--model-dir", model_dir, "--export-dir", exports,
                     "--set", "export.standing_batches=2", "--set", "export.standing_batch_size=32"]) == 0
    assert tf.io.gfile.exists(f"{exports}/generator/1/saved_model.pb")
    assert cli.main(["generate", "--export", exports, "--count", "4",
                     "--out", f"ram://{tmp_path.name}/grid.png"]) == 0
    assert Image.open(io.BytesIO(tf.io.gfile.GFile(f"ram://{tmp_path.name}/grid.png", "rb").read())).size[0] > 8
    assert cli.main(["evaluate", "--model-dir", model_dir, "--export", exports, *eval_args]) == 0
    capsys.readouterr()
    assert not os.path.exists("ram:") and not os.listdir(tmp_path), os.listdir(tmp_path)


# ------------------------------------------ refused runs, and the commands that read a model dir

RING_SMALL = ["--set", "data.batch_size=16", "--set", "data.mixture.num_examples=256",
              "--set", "model.generator.hidden_units=[16]", "--set", "model.discriminator.hidden_units=[16]",
              "--set", "train.save_checkpoints_steps=2", "--set", "train.log_every_steps=2",
              "--set", "eval.num_samples=200", "--set", "eval.eval_batches=2"]


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(model_dir):
    """{relative path: (size, mtime_ns, content hash)} of every file under `model_dir` (the lock
    file's content only: a run takes the lock before it reads the checkpoint)."""
    files = {}
    for root, _, names in os.walk(model_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                mtime = os.stat(path).st_mtime_ns if name != model_dir_lib.LOCK_FILENAME else None
                files[os.path.relpath(path, model_dir)] = (os.path.getsize(path), mtime, hash(f.read()))
    return files


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory):
    """A 4-step `mixture_ring` run (small networks), checkpoints at steps 0, 2 and 4."""
    model_dir = str(tmp_path_factory.mktemp("ring") / "run")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["train", "--config", "mixture_ring", "--model-dir", model_dir, *RING_SMALL,
                         "--max-steps", "4"])
    assert code == 0, err.getvalue()
    return model_dir


def ring_copy(ring_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(ring_dir, model_dir)
    return model_dir


def test_a_refused_run_writes_nothing_to_the_model_dir_and_its_advice_works(ring_dir, tmp_path, capsys):
    """Another optimizer (other slot variables) is refused before anything is written, so the
    saved config still is the run's and the advice `--config <model dir>/config.yaml` resumes it;
    without a config.yaml, a run of the default (DCGAN) config leaves none behind either."""
    model_dir = ring_copy(ring_dir, tmp_path)
    before = snapshot(model_dir)
    code, out, err = run_cli(capsys, "train", "--config", "mixture_ring", "--model-dir", model_dir, *RING_SMALL,
                             "--max-steps", "6", "--set", "train.generator_optimizer.name=rmsprop")
    assert_one_line_error(code, err, f"{model_dir} holds a checkpoint", "G_RMSProp is not in the checkpoint",
                          f"--config {model_dir}/config.yaml")
    assert snapshot(model_dir) == before

    code, out, err = run_cli(capsys, "train", "--config", f"{model_dir}/config.yaml", "--model-dir", model_dir,
                             "--max-steps", "6")
    assert code == 0, err
    assert "resuming at step 4, to step 6" in out and "done: step 6" in out

    os.remove(os.path.join(model_dir, "config.yaml"))
    before = snapshot(model_dir)
    code, out, err = run_cli(capsys, "train", "--model-dir", model_dir, "--set", "data.image_size=8")
    assert_one_line_error(code, err, f"{model_dir} holds a checkpoint", "is not in the checkpoint")
    assert snapshot(model_dir) == before
    assert_one_line_error(*run_cli(capsys, "export", "--model-dir", model_dir, "--export-dir",
                                   tmp_path / "exports")[::2], f"{model_dir} has no config.yaml")


@pytest.mark.parametrize("damage", ["empty-newest-index", "no-state-file", "outdated-state-file"])
def test_every_command_reads_the_newest_readable_checkpoint(ring_dir, tmp_path, capsys, damage):
    """`export`, `generate --model-dir` and `evaluate` read the checkpoint `train` would resume
    from: the newest that reads in full, whatever the state file says; none of them changes the
    model dir."""
    model_dir = ring_copy(ring_dir, tmp_path)
    state = os.path.join(model_dir, "checkpoint")
    if damage == "empty-newest-index":
        open(os.path.join(model_dir, "model.ckpt-4.index"), "w").close()
        expected, note = 2, "note: checkpoint model.ckpt-4 is unreadable ("
    elif damage == "no-state-file":
        os.remove(state)
        expected, note = 4, f"note: {model_dir} has no checkpoint state file; using model.ckpt-4"
    else:
        tf.compat.v1.train.update_checkpoint_state(model_dir, f"{model_dir}/model.ckpt-2")
        expected, note = 4, "note: the checkpoint state file lists model.ckpt-2 but model.ckpt-4 is newer"
    before = snapshot(model_dir)

    code, out, err = run_cli(capsys, "export", "--model-dir", model_dir, "--export-dir", tmp_path / "exports")
    assert code == 0, err
    assert f"exported step {expected} as version 1" in out and note in err
    code, out, err = run_cli(capsys, "generate", "--model-dir", model_dir, "--count", "5",
                             "--out", tmp_path / "x.npy")
    assert code == 0, err
    assert f"(step {expected})" in out and np.load(tmp_path / "x.npy").shape == (5, 2)
    code, out, err = run_cli(capsys, "evaluate", "--model-dir", model_dir, "--output", tmp_path / "eval.json")
    assert code == 0, err
    assert f"step {expected}: " in out
    after = snapshot(model_dir)
    assert {k: v for k, v in after.items() if not k.startswith(("evaluation", "eval" + os.sep))} == before


def test_a_checkpoint_name_is_one_of_the_model_dir(ring_dir, tmp_path, capsys):
    """`--checkpoint model.ckpt-2` is a checkpoint of `--model-dir`; a wrong one lists them."""
    model_dir = ring_copy(ring_dir, tmp_path)
    exports = tmp_path / "exports"
    code, out, err = run_cli(capsys, "export", "--model-dir", model_dir, "--export-dir", exports,
                             "--checkpoint", "model.ckpt-2")
    assert code == 0, err
    assert "exported step 2 as version 1" in out
    code, out, err = run_cli(capsys, "evaluate", "--model-dir", model_dir, "--checkpoint", "model.ckpt-0",
                             "--output", tmp_path / "eval.json")
    assert code == 0, err
    assert "step 0: " in out
    assert_one_line_error(*run_cli(capsys, "export", "--model-dir", model_dir, "--export-dir", exports,
                                   "--checkpoint", "model.ckpt-3")[::2],
                          "checkpoint not found: model.ckpt-3", "model.ckpt-0, model.ckpt-2, model.ckpt-4")


def test_a_model_dir_that_is_a_file_is_named_as_such(ring_dir, tmp_path, capsys):
    config = os.path.join(ring_dir, "config.yaml")
    for command in (["export", "--export-dir", tmp_path / "exports"], ["evaluate"],
                    ["generate", "--out", tmp_path / "x.npy"]):
        assert_one_line_error(*run_cli(capsys, command[0], "--model-dir", config, *command[1:])[::2],
                              f"{config} is a file, not a model dir")


def test_an_unreadable_named_checkpoint_is_a_one_line_error_naming_it(ring_dir, tmp_path, capsys):
    model_dir = ring_copy(ring_dir, tmp_path)
    path = os.path.join(model_dir, "model.ckpt-2")
    with open(path + ".data-00000-of-00001", "r+b") as f:
        f.truncate(50)
    for command in (["export", "--export-dir", tmp_path / "exports"], ["evaluate"]):
        assert_one_line_error(*run_cli(capsys, command[0], "--model-dir", model_dir, *command[1:],
                                       "--checkpoint", path)[::2],
                              f"checkpoint {path} is unreadable (")

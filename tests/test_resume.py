"""Interrupted and rerun jobs: exact resume, the input stream's position, steps_per_run, the
time budget, a lost checkpoint state file, kill -9 during export, file modes under a umask, and
`--export` on a finished run.

Interruptions (SIGTERM, the time budget, kill -9) hit `run_train.py` / `python -m estimator_gan`
in real subprocesses; a resumed run must then compute what an uninterrupted run computes, bit
for bit: every logged loss of every step and every variable of the final checkpoint (single
process, in-memory data, the same CPU). Multi-worker exact resume is in test_distributed.py.
"""
import glob
import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO_ROOT, checkpoint_values, newest_complete_step, tiny_config
from estimator_gan import cli
from estimator_gan.config import DataConfig
from estimator_gan.data import pipeline
from estimator_gan.gan import GAN
from estimator_gan.runtime import loop
from estimator_gan.runtime import model_dir as model_dir_lib
from estimator_gan.serving import export as export_lib
from estimator_gan.serving import saved_model

# A digits DCGAN small enough for hundreds of steps per second; every step logged (stdout and
# TensorBoard), one step per session.run.
DIGITS = ["--set", "data.source=digits", "--set", "data.image_size=8", "--set", "data.batch_size=16",
          "--set", "model.generator.filters=4", "--set", "model.discriminator.filters=4",
          "--set", "model.z_dim=8", "--set", "train.sample_grid=2", "--set", "train.steps_per_run=1",
          "--set", "train.save_summary_steps=1", "--set", "train.log_every_steps=1"]
RARE_SAVES = ["--set", "train.save_checkpoints_steps=100000"]
SUBPROCESS_TIMEOUT = 240


# --------------------------------------------------------------------------------- helpers


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}


def train_cmd(*args):
    return [sys.executable, os.path.join(REPO_ROOT, "run_train.py"), *args]


def run(cmd, timeout=SUBPROCESS_TIMEOUT, **kwargs):
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def start(cmd, out_path):
    with open(out_path, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def read(path):
    with open(path) as f:
        return f.read()


def wait_for(predicate, timeout=180, what="condition", proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def progress_steps(text):
    return [int(line.split()[1].split("/")[0]) for line in text.splitlines() if line.startswith("step ")]


def ckpt_step(path):
    return int(tf.train.load_variable(path, "global_step"))


def assert_same_checkpoint(path, reference):
    """Every variable of two checkpoints bitwise equal (weights, Adam slots, EMA, counters)."""
    mine, theirs = checkpoint_values(path), checkpoint_values(reference)
    assert sorted(mine) == sorted(theirs)
    differ = [name for name in mine if not np.array_equal(mine[name], theirs[name])]
    assert not differ, f"{len(differ)} of {len(mine)} variables differ, e.g. {differ[:5]}"
    return mine


def loss_records(model_dir):
    """Every `(step, D loss, G loss)` any run logged to the model dir's event files, duplicates
    included (a killed run may have logged steps past its last checkpoint, which the resumed
    run logs again). A file cut short by kill -9 is read up to its damaged record."""
    records = []
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents*"))):
        values = {}
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag in ("loss/discriminator", "loss/generator"):
                        values.setdefault(event.step, {})[value.tag] = value.simple_value
        except tf.errors.DataLossError:
            pass
        records += [(step, v["loss/discriminator"], v["loss/generator"])
                    for step, v in sorted(values.items()) if len(v) == 2]
    return records


def assert_losses_match(model_dir, reference_dir, first_step, last_step):
    """Every loss logged in `model_dir` equals the uninterrupted run's at the same step, and
    every step from `first_step` to `last_step` was logged."""
    reference = {step: (d, g) for step, d, g in loss_records(reference_dir)}
    assert sorted(reference) == list(range(1, last_step + 1))
    records = loss_records(model_dir)
    assert {step for step, _, _ in records} >= set(range(first_step, last_step + 1))
    mismatched = [(step, (d, g), reference.get(step)) for step, d, g in records
                  if (d, g) != reference.get(step)]
    assert not mismatched, f"{len(mismatched)} of {len(records)} logged steps differ: {mismatched[:3]}"
    return len(records)


def uninterrupted(model_dir, steps, *args):
    """The reference: one run from scratch to `steps` (in this process, through the same
    command line code, to save a TensorFlow start-up)."""
    assert cli.main(["train", "--model-dir", model_dir, "--max-steps", str(steps), *DIGITS, *args]) == 0
    assert ckpt_step(tf.train.latest_checkpoint(model_dir)) == steps
    return tf.train.latest_checkpoint(model_dir)


# --------------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    model_dir, out = str(tmp_path / "run"), str(tmp_path / "first.out")
    proc = start(train_cmd("--model-dir", model_dir, "--max-steps", "1000000", *DIGITS, *RARE_SAVES), out)
    try:
        wait_for(lambda: any(s >= 3 for s in progress_steps(read(out))), what="step 3", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, read(out)[-3000:]
    finally:
        stop(proc)
    stopped = [line for line in read(out).splitlines() if line.startswith("stopped by SIGTERM at step ")]
    assert stopped, read(out)[-3000:]
    interrupted = int(stopped[0].split()[5])
    assert ckpt_step(tf.train.latest_checkpoint(model_dir)) == interrupted >= 3

    final = interrupted + 7
    resumed = run(train_cmd("--model-dir", model_dir, "--max-steps", str(final), *DIGITS, *RARE_SAVES))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {interrupted}," in resumed.stdout
    assert progress_steps(resumed.stdout) == list(range(interrupted + 1, final + 1))

    reference = uninterrupted(str(tmp_path / "reference"), final, *RARE_SAVES)
    logged = assert_losses_match(model_dir, str(tmp_path / "reference"), 1, final)
    values = assert_same_checkpoint(tf.train.latest_checkpoint(model_dir), reference)
    assert values["global_step"] == values["generator_step"] == values["discriminator_step"] == final
    print(f"SIGTERM at step {interrupted}, resumed to {final}: {logged} logged steps and "
          f"{len(values)} variables identical")


@pytest.mark.slow
def test_time_budget_stops_like_sigterm_and_reruns_continue_exactly(tmp_path):
    model_dir = str(tmp_path / "run")
    command = train_cmd("--model-dir", model_dir, "--max-steps", "1000000", "--max-minutes", "0.04",
                        *DIGITS, *RARE_SAVES)
    stops = []
    for attempt in range(2):  # the same command twice: the rerun continues where the first stopped
        result = run(command)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in result.stdout.splitlines()
                 if line.startswith("stopped by the time budget (train.max_minutes=0.04) at step ")]
        assert len(lines) == 1 and "rerun the same command to continue" in lines[0], result.stdout[-2000:]
        step = int(lines[0].split()[8])
        assert ckpt_step(tf.train.latest_checkpoint(model_dir)) == step
        assert progress_steps(result.stdout)[-1] == step
        assert "Traceback" not in result.stderr
        if attempt:
            assert f"resuming at step {stops[-1]}," in result.stdout and step > stops[-1]
        stops.append(step)
        elapsed = float(lines[0].split(" after ")[1].split("s;")[0])
        assert 0.04 * 60 <= elapsed < 0.04 * 60 + 30, lines[0]

    final = stops[-1] + 5
    resumed = run(train_cmd("--model-dir", model_dir, "--max-steps", str(final), *DIGITS, *RARE_SAVES))
    assert resumed.returncode == 0 and f"resuming at step {stops[-1]}," in resumed.stdout, resumed.stderr[-2000:]
    reference = uninterrupted(str(tmp_path / "reference"), final, *RARE_SAVES)
    assert_losses_match(model_dir, str(tmp_path / "reference"), 1, final)
    assert_same_checkpoint(tf.train.latest_checkpoint(model_dir), reference)
    print(f"time budget stops at steps {stops}; resumed to {final}: identical")


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    model_dir, out = str(tmp_path / "run"), str(tmp_path / "killed.out")
    saves = ["--set", "train.save_checkpoints_steps=2"]
    proc = start(train_cmd("--model-dir", model_dir, "--max-steps", "1000000", *DIGITS, *saves), out)
    try:
        wait_for(lambda: os.path.exists(os.path.join(model_dir, "model.ckpt-6.index")),
                 what="checkpoint 6", proc=proc)
        time.sleep(random.Random(15).uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(progress_steps(read(out)))  # the last step it printed (may precede its last save)
    latest = newest_complete_step(model_dir)  # the state file may not list it yet
    assert latest >= 6 and latest % 2 == 0

    final = max(latest, killed_at) + 5
    resumed = run(train_cmd("--model-dir", model_dir, "--max-steps", str(final), *DIGITS, *saves))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {latest}," in resumed.stdout and "taking over the stale lock" in resumed.stderr
    assert not model_dir_lib.partial_files(model_dir)
    reference = uninterrupted(str(tmp_path / "reference"), final, *saves)
    # Whatever the killed run logged is compared too, including steps past its last checkpoint
    # that the resumed run computed again. (Its events not yet flushed when it was killed are
    # lost: TensorBoard may miss a few steps before the checkpoint it resumed from.)
    assert_losses_match(model_dir, str(tmp_path / "reference"), latest + 1, final)
    assert_same_checkpoint(tf.train.latest_checkpoint(model_dir), reference)
    print(f"kill -9 at step ~{killed_at}, last checkpoint {latest}, resumed to {final}: identical")


# ------------------------------------------------------- no batch of the stream is replayed


def stream(cfg, start_example, batches, seed=3, input_context=None):
    """The training stream's batches, as tuples of arrays (features[, labels])."""
    ds = pipeline.make_input_fn(cfg, training=True, seed=seed, start_example=start_example)(input_context)
    return [tuple(np.asarray(a) for a in (b if isinstance(b, tuple) else (b,)))
            for b in ds.take(batches).as_numpy_iterator()]


def same_batch(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def points_npy(path, count):
    """`count` distinct 2-D points (x = index), so every example is recognisable."""
    np.save(path, np.stack([np.arange(count), np.zeros(count)], 1).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("source", ["digits", "npy"])
def test_a_resumed_stream_continues_the_uninterrupted_one_without_replaying(tmp_path, source):
    """start_example = N * batch: the stream yields exactly the uninterrupted stream's batches
    N, N+1, ... (across an epoch boundary), none of batches 0..N-1."""
    if source == "digits":  # 1797 examples: batches 110..115 cross the first epoch's end
        cfg, steps = DataConfig(source="digits", image_size=8, batch_size=16), 110
    else:  # 50 examples: batches 11..16 cross the first and the second epoch's end
        cfg = DataConfig(source="npy", path=points_npy(tmp_path / "p.npy", 50), batch_size=4)
        steps = 11
    whole = stream(cfg, 0, steps + 6)
    resumed = stream(cfg, steps * cfg.batch_size, 6)
    assert len(resumed) == 6
    for i, batch in enumerate(resumed):
        assert same_batch(batch, whole[steps + i]), f"batch {steps + i} differs"
    assert not any(same_batch(r, w) for r in resumed for w in whole[:steps])
    if source == "npy":  # every epoch is a permutation: the stream's first 50 examples are all 50
        first_epoch = np.concatenate([b[0][:, 0] for b in whole])[:50]
        assert sorted(first_epoch.tolist()) == list(range(50))


def test_a_resumed_stream_continues_per_input_pipeline(tmp_path):
    """Two input pipelines (each half of the global batch, its own shard): started at the
    global example count, each continues its own uninterrupted stream."""
    cfg = DataConfig(source="npy", path=points_npy(tmp_path / "p.npy", 40), batch_size=4)
    steps, resumed_shards = 9, []  # 9 steps x 2 per pipeline = 18 of its 20 examples
    for shard in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=shard,
                                         num_replicas_in_sync=2)
        whole = stream(cfg, 0, steps + 4, input_context=ctx)
        resumed = stream(cfg, steps * cfg.batch_size, 4, input_context=ctx)
        assert all(b[0].shape == (2, 2) for b in resumed)
        for i, batch in enumerate(resumed):
            assert same_batch(batch, whole[steps + i]), f"pipeline {shard}: batch {steps + i} differs"
        assert not any(same_batch(r, w) for r in resumed for w in whole[:steps])
        ids = {int(x) for b in whole for x in b[0][:, 0]}
        assert ids == {i for i in range(40) if i % 2 == shard}  # its own shard only
        resumed_shards.append({int(x) for b in resumed for x in b[0][:, 0]})
    assert not resumed_shards[0] & resumed_shards[1]


def test_a_resumed_streamed_file_source_is_reshuffled_not_replayed(tmp_path):
    """Files streamed from disk (no cache) cannot seek: a resumed stream is a fresh shuffle
    keyed on the position, not the uninterrupted order and not a replay of its start."""
    for k in range(32):
        Image.fromarray(np.full((8, 8), k * 7, np.uint8)).save(tmp_path / f"{k:02d}.png")
    cfg = DataConfig(source="images", path=str(tmp_path), image_size=8, channels=1, batch_size=4,
                     cache=False, shuffle_buffer=32)
    key = lambda batches: [int(round((v + 1) * 127.5 / 7)) for b in batches for v in b[0][:, 0, 0, 0]]  # noqa: E731
    fresh, again = key(stream(cfg, 0, 8)), key(stream(cfg, 0, 8))
    resumed = key(stream(cfg, 8 * 4, 8))
    assert fresh == again and sorted(fresh) == list(range(32))  # seeded: one epoch, in order
    assert sorted(resumed) == list(range(32)) and resumed != fresh


# ------------------------------------------------------------------------- steps_per_run


def _spr_config(k, summary_every):
    return tiny_config("data.source=digits", "data.image_size=8", "model.sample_shape=[8,8,1]",
                       "data.batch_size=16", f"train.steps_per_run={k}", "train.log_every_steps=4",
                       "train.save_checkpoints_steps=4", f"train.save_summary_steps={summary_every}",
                       "train.max_steps=10")


def test_steps_per_run_computes_what_one_step_per_run_does(tmp_path):
    """K=4 steps per session.run against K=1 over 10 steps (checkpoints every 4): the same
    checkpoints at exactly steps 0, 4, 8, 10, bitwise equal, the same losses at the steps K=4
    logs them, the progress and sample pictures at the same steps, and no step past 10."""
    import io

    runs = {}
    for k, summary_every in ((1, 1), (4, 4)):
        config = _spr_config(k, summary_every)
        assert loop.steps_per_run(config) == k
        model_dir = str(tmp_path / f"k{k}")
        progress = io.StringIO()
        gan = GAN(config, model_dir=model_dir)
        assert gan.train(progress=True, stream=progress) == 10
        assert gan.last_train.steps_per_run == k
        assert progress_steps(progress.getvalue()) == [4, 8, 10]
        on_disk = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(f"{model_dir}/model.ckpt-*.index"))
        assert on_disk == [0, 4, 8, 10]
        assert sorted(os.listdir(os.path.join(model_dir, "samples"))) == [
            f"step_{s:08d}.png" for s in (0, 4, 8, 10)]
        runs[k] = model_dir

    for step in (0, 4, 8, 10):
        values = assert_same_checkpoint(f"{runs[4]}/model.ckpt-{step}", f"{runs[1]}/model.ckpt-{step}")
        assert values["global_step"] == values["generator_step"] == values["discriminator_step"] == step
    every_step = {step: (d, g) for step, d, g in loss_records(runs[1])}
    assert sorted(every_step) == list(range(1, 11))
    k4 = loss_records(runs[4])
    assert [step for step, _, _ in k4] == [4, 8, 10]  # every 4 steps and at the end
    assert all((d, g) == every_step[step] for step, d, g in k4)


# ------------------------------------------------------------------ lost checkpoint state


DIGITS_SMALL = ["--set", "data.image_size=8", "--set", "data.batch_size=16", "--set", "model.z_dim=8",
                "--set", "model.generator.filters=4", "--set", "model.discriminator.filters=4",
                "--set", "train.save_checkpoints_steps=3", "--set", "train.log_every_steps=3",
                "--set", "train.sample_grid=2"]


def cli_train(capsys, model_dir, *args):
    code = cli.main(["train", "--model-dir", str(model_dir), *DIGITS_SMALL, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reference_9(tmp_path_factory):
    """An uninterrupted 9-step run of DIGITS_SMALL (in this process)."""
    model_dir = str(tmp_path_factory.mktemp("reference") / "run")
    assert cli.main(["train", "--model-dir", model_dir, *DIGITS_SMALL, "--max-steps", "9"]) == 0
    return tf.train.latest_checkpoint(model_dir)


@pytest.mark.parametrize("damage", ["deleted", "outdated"])
def test_lost_or_outdated_checkpoint_state_file_resumes_from_the_newest_checkpoint(
        tmp_path, capsys, reference_9, damage):
    """After 6 steps (checkpoints 0, 3, 6) the `checkpoint` state file is deleted, or lists
    step 3 only (a kill between a save's rename and the state file's update): the rerun
    resumes from step 6, says so, and ends where an uninterrupted run ends."""
    model_dir = str(tmp_path / "run")
    code, out, err = cli_train(capsys, model_dir, "--max-steps", "6")
    assert code == 0, err
    state = os.path.join(model_dir, "checkpoint")
    if damage == "deleted":
        os.remove(state)
        note = (f"note: {model_dir} has no checkpoint state file; resuming from model.ckpt-6, the "
                f"newest checkpoint on disk")
    else:
        tf.compat.v1.train.update_checkpoint_state(
            model_dir, f"{model_dir}/model.ckpt-3",
            all_model_checkpoint_paths=[f"{model_dir}/model.ckpt-0", f"{model_dir}/model.ckpt-3"])
        note = ("note: the checkpoint state file lists model.ckpt-3 but model.ckpt-6 is newer and "
                "complete; resuming from model.ckpt-6")
    code, out, err = cli_train(capsys, model_dir, "--max-steps", "9")
    assert code == 0, err
    assert note in err
    assert "resuming at step 6, to step 9" in out and "done: step 9" in out, out
    assert progress_steps(out) == [9]
    assert tf.train.latest_checkpoint(model_dir) == f"{model_dir}/model.ckpt-9"
    values = assert_same_checkpoint(f"{model_dir}/model.ckpt-9", reference_9)
    assert values["global_step"] == values["generator_step"] == values["discriminator_step"] == 9

    # Nothing left to do is reported as such, from the same newest checkpoint.
    if damage == "outdated":
        tf.compat.v1.train.update_checkpoint_state(model_dir, f"{model_dir}/model.ckpt-6")
        code, out, err = cli_train(capsys, model_dir, "--max-steps", "9")
        assert code == 0 and "is already at step 9 >= max_steps 9" in out, out + err


# ------------------------------------------------------------------- kill -9 during export


EXPORT_FAST = ["--set", "export.standing_batches=2", "--set", "export.standing_batch_size=32"]


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """A DIGITS_SMALL model dir trained 3 steps (in this process)."""
    model_dir = str(tmp_path_factory.mktemp("small") / "run")
    assert cli.main(["train", "--model-dir", model_dir, *DIGITS_SMALL, "--max-steps", "3"]) == 0
    return model_dir


def staging_dirs(export_dir):
    return sorted(n for n in os.listdir(export_dir) if n.startswith(".tmp-")) if os.path.isdir(export_dir) else []


def assert_only_complete_versions(export_dir):
    """Every version a server would see loads its signatures and has its variables; TFLite
    versions hold their model. Returns {part: versions}."""
    found = {}
    if not os.path.isdir(export_dir):
        return found
    for part in ("generator", "discriminator"):
        base = os.path.join(export_dir, part)
        found[part] = saved_model.versions(base)
        numbered = sorted(int(n) for n in os.listdir(base) if n.isdigit()) if os.path.isdir(base) else []
        assert numbered == found[part], f"{base}: an incomplete version is visible ({numbered})"
        for version in found[part]:
            path = os.path.join(base, str(version))
            assert "serving_default" in saved_model.signature_defs(path)
            assert os.path.isfile(os.path.join(path, "variables", "variables.index"))
            assert saved_model.export_info(path)["version"] == version
    base = os.path.join(export_dir, "tflite")
    found["tflite"] = sorted(int(n) for n in os.listdir(base) if n.isdigit()) if os.path.isdir(base) else []
    for version in found["tflite"]:
        assert os.path.getsize(os.path.join(base, str(version), "generator.tflite")) > 1000
    return found


@pytest.mark.slow
def test_kill_9_during_export_leaves_only_complete_versions_and_the_next_export_cleans_up(
        tmp_path, small_model_dir):
    """`export --tflite` killed as it publishes, as its staging dir appears, while it writes
    the generator's SavedModel and at a random moment of the TFLite conversion: every version
    a server can see is complete, no kill takes a version away, and every export removes the
    staging dirs that killed exports left."""
    export_dir = str(tmp_path / "exports")
    command = [sys.executable, "-m", "estimator_gan", "export", "--model-dir", small_model_dir,
               "--export-dir", export_dir, "--tflite", *EXPORT_FAST]
    rng, kills = random.Random(6), []

    def numbered(part):
        base = os.path.join(export_dir, part)
        return sorted(n for n in os.listdir(base) if n.isdigit()) if os.path.isdir(base) else []

    for i, moment in enumerate(["publishing", "staging dir created", "writing a SavedModel",
                                "random, converting to TFLite"]):
        before = assert_only_complete_versions(export_dir)
        published = {part: numbered(part) for part in ("generator", "discriminator", "tflite")}
        stale = set(staging_dirs(export_dir))

        def staged(pattern):
            return [p for name in set(staging_dirs(export_dir)) - stale
                    for p in glob.glob(os.path.join(export_dir, name, pattern))]

        reached = {
            "staging dir created": lambda: staged(""),
            "writing a SavedModel": lambda: staged("saved_model-*/temp-*"),
            "random, converting to TFLite": lambda: len(staged("saved_model-*/[0-9]*")) == 2,
            "publishing": lambda: any(numbered(p) != published[p] for p in published),
        }[moment]
        proc = start(command, str(tmp_path / f"export{i}.out"))
        try:
            wait_for(reached, what=moment, proc=proc)
            if moment.startswith("random"):
                time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            stop(proc)
        kills.append((moment, proc.returncode, len(staging_dirs(export_dir))))
        assert not stale & set(staging_dirs(export_dir)), "a killed export's staging dir was kept"
        versions = assert_only_complete_versions(export_dir)
        for part, listed in before.items():
            assert set(listed) <= set(versions[part])  # a kill never takes a version away
    assert all(code == -signal.SIGKILL for _, code, _ in kills), kills
    assert [left for _, _, left in kills[1:]] == [1, 1, 1], kills  # killed while staging
    leftovers = staging_dirs(export_dir)

    done = run(command)
    assert done.returncode == 0, done.stderr[-2000:]
    versions = assert_only_complete_versions(export_dir)
    newest = max(v for vs in versions.values() for v in vs)
    assert f"exported step 3 as version {newest}" in done.stdout
    assert all(newest in versions[p] for p in ("generator", "discriminator", "tflite"))
    assert staging_dirs(export_dir) == [], f"stale staging dirs kept: {leftovers}"
    print(f"kills (moment, status, staging dirs): {kills}; then version {newest}: {versions}")


def test_a_staging_dir_held_by_a_running_export_is_not_removed(tmp_path, small_model_dir, capsys):
    import fcntl

    export_dir = tmp_path / "exports"
    held, stale = export_dir / ".tmp-running", export_dir / ".tmp-killed"
    for path in (held, stale):
        (path / "saved_model-x").mkdir(parents=True)
    fd = os.open(held, os.O_RDONLY)  # what a running export holds on its staging dir
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["export", "--model-dir", small_model_dir, "--export-dir", str(export_dir),
                         "--generator-only", *EXPORT_FAST]) == 0
        assert staging_dirs(str(export_dir)) == [".tmp-running"]
        assert (held / "saved_model-x").is_dir()
    finally:
        os.close(fd)
    assert saved_model.versions(str(export_dir / "generator")) == [1]
    assert export_lib.remove_stale_staging(str(export_dir)) == [str(held)]  # its export ended
    assert staging_dirs(str(export_dir)) == []
    capsys.readouterr()


# ------------------------------------------------------------------------------ file modes


def modes(paths):
    return {os.path.relpath(p): oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_written_files_follow_the_umask(tmp_path, capsys, mask, monkeypatch):
    """What the commands write for others to read (a server, a colleague, a web page) has
    the modes `open` would give under the umask: 0644/0755 under 022, 0600/0700 under 077."""
    monkeypatch.chdir(tmp_path)
    previous = os.umask(mask)
    try:
        model_dir, exports = "run", "exports"
        assert cli.main(["train", "--model-dir", model_dir, *DIGITS_SMALL, "--max-steps", "3"]) == 0
        assert cli.main(["evaluate", "--model-dir", model_dir, "--set", "eval.num_samples=64",
                         "--set", "eval.classifier_epochs=1", "--set", "eval.kid_subset_size=32",
                         "--set", "eval.eval_batches=2"]) == 0
        assert cli.main(["export", "--model-dir", model_dir, "--export-dir", exports, "--tflite",
                         *EXPORT_FAST]) == 0
        for out in ("grid.png", "samples.npy", "pngs"):
            assert cli.main(["generate", "--export", exports, "--count", "3", "--out", out]) == 0
    finally:
        os.umask(previous)
    capsys.readouterr()
    files = ["run/config.yaml", "run/eval.json", *glob.glob("run/samples/step_*.png"), "grid.png",
             "samples.npy", *glob.glob("pngs/*.png"), "exports/tflite/1/generator.tflite"]
    dirs = ["pngs", "exports/generator/1", "exports/discriminator/1", "exports/tflite/1"]
    for part in ("generator", "discriminator"):  # what TF Serving reads
        for folder, subdirs, names in os.walk(f"exports/{part}/1"):
            dirs += [os.path.join(folder, d) for d in subdirs]
            files += [os.path.join(folder, n) for n in names]
    assert len(glob.glob("run/samples/step_*.png")) == 2 and len(glob.glob("pngs/*.png")) == 3
    assert "exports/generator/1/saved_model.pb" in files
    file_mode, dir_mode = oct(0o666 & ~mask), oct(0o777 & ~mask)
    assert {p: m for p, m in modes(files).items() if m != file_mode} == {}
    assert {p: m for p, m in modes(dirs).items() if m != dir_mode} == {}


# ------------------------------------------------------------ --export on a finished run


def test_export_flag_on_a_run_already_at_max_steps_still_exports(tmp_path, small_model_dir):
    exports = str(tmp_path / "exports")
    before = sorted(os.listdir(small_model_dir))
    result = run(train_cmd("--model-dir", small_model_dir, "--max-steps", "3", *DIGITS_SMALL,
                           *EXPORT_FAST, "--export", exports))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{small_model_dir} is already at step 3 >= max_steps 3; nothing to train" in result.stdout
    assert "exported step 3 as version 1" in result.stdout, result.stdout
    assert saved_model.versions(os.path.join(exports, "generator")) == [1]
    assert saved_model.versions(os.path.join(exports, "discriminator")) == [1]
    assert saved_model.export_info(os.path.join(exports, "generator", "1"))["global_step"] == 3
    assert sorted(os.listdir(small_model_dir)) == before  # nothing trained, nothing rewritten

"""Distributed training with real processes on 127.0.0.1: parameter servers through the
`local-cluster` launcher, MirroredStrategy on two CPU devices in process, TF_CONFIG mistakes."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, tiny_config, tiny_images, array_input_fn
from estimator_gan import checkpoints
from estimator_gan.config import DistributeConfig
from estimator_gan.data import pipeline
from estimator_gan.errors import ConfigError
from estimator_gan.gan import GAN
from estimator_gan.runtime import cluster as distributed
from estimator_gan.runtime import launcher

CLUSTER_TIMEOUT = 420  # seconds for the whole job; the launcher stops every process after it

TINY_MLP = [
    "model.architecture=mlp", "data.source=mixture2d", "data.mixture.num_examples=2000",
    "model.z_dim=8", "model.generator.hidden_units=[16]", "model.discriminator.hidden_units=[16]",
    "data.batch_size=16", "train.max_steps=60", "train.save_checkpoints_steps=30",
    "train.log_every_steps=30", "distribute.max_worker_delay_secs=1",
    "distribute.evaluator_throttle_secs=1", "distribute.evaluator_steps=2",
]


def _env():
    return dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                TF_CPP_MIN_LOG_LEVEL="3")


def _run(args, timeout, env=None):
    """Run a command in its own process group; kill the whole group if it outlives `timeout`."""
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tf_config(cluster, task_type="chief", index=0):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


@pytest.mark.slow
def test_parameter_server_cluster_trains_evaluates_and_exports(tmp_path):
    model_dir = str(tmp_path / "run")
    args = [sys.executable, "-m", "estimator_gan.cli", "local-cluster", "--workers", "1", "--ps", "1",
            "--evaluator", "--timeout", str(CLUSTER_TIMEOUT), "--", "--model-dir", model_dir]
    for item in TINY_MLP:
        args += ["--set", item]
    code, out, err = _run(args, timeout=CLUSTER_TIMEOUT + 60)
    assert code == 0, out[-3000:] + err[-3000:]
    for task in ("chief:0", "worker:0", "evaluator:0"):
        assert f"[cluster] {task} exited with status 0" in out
    assert "[cluster] ps:0 stopped" in out

    reader = tf.train.load_checkpoint(model_dir)
    step = int(reader.get_tensor("global_step"))
    assert step >= 60
    # Asynchronous updates: the chief's last save may catch the other worker mid-step.
    for role, counter in (("G", "generator_step"), ("D", "discriminator_step")):
        count = int(reader.get_tensor(counter))
        assert abs(count - step) <= 2, (counter, count, step)
        beta2 = float(reader.get_tensor(f"{role}_train/beta2_power"))
        assert 0.999 ** (count + 3) <= beta2 + 1e-6 and beta2 <= 0.999 ** (count - 1) + 1e-6
    first = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-0"))
    for name in ("generator/hidden0/kernel", "discriminator/hidden0/kernel"):
        assert not np.allclose(first.get_tensor(name), reader.get_tensor(name)), name

    logs = os.path.join(model_dir, "cluster-logs")
    with open(os.path.join(logs, "evaluator-0.log")) as f:
        assert "evaluation at step" in f.read()
    with open(os.path.join(logs, "worker-0.log")) as f:
        assert "done: step" in f.read()
    assert glob.glob(os.path.join(model_dir, "samples", "step_*.png"))
    exports = glob.glob(os.path.join(model_dir, "export", "generator", "*", "saved_model.pb"))
    assert len(exports) == 1
    served = tf.saved_model.load(os.path.dirname(exports[0])).signatures["serving_default"]
    samples = served(noise=tf.random.normal([5, 8]))["samples"].numpy()
    assert samples.shape == (5, 2) and np.all(np.isfinite(samples))


def _local_cluster(model_dir, max_steps, *sets, workers=1, ps=0, timeout=300):
    """`estimator-gan local-cluster` with TINY_MLP (max_steps and intervals of 10); returns
    (exit code, launcher output, every process's log)."""
    args = [sys.executable, "-m", "estimator_gan.cli", "local-cluster", "--workers", str(workers),
            "--ps", str(ps), "--timeout", str(timeout), "--", "--model-dir", model_dir]
    for item in TINY_MLP + list(sets):
        if not item.startswith(("train.max_steps=", "train.save_checkpoints_steps=", "train.log_every_steps=")):
            args += ["--set", item]
    args += ["--max-steps", str(max_steps), "--set", "train.save_checkpoints_steps=10",
             "--set", "train.log_every_steps=10"]
    code, out, err = _run(args, timeout=timeout + 60)
    logs = os.path.join(model_dir, "cluster-logs")
    texts = {name: open(os.path.join(logs, name)).read() for name in sorted(os.listdir(logs))} \
        if os.path.isdir(logs) else {}
    return code, out + err, texts


@pytest.mark.slow
def test_multi_worker_mirrored_cluster_trains_in_lockstep_and_resumes_exactly(tmp_path):
    """A chief and a worker, all-reduce, no ps: 10 steps, then the same job again to 20, which
    resumes at 10. Both processes exit 0 each time; the chief's checkpoints reach 20 with every
    counter equal to the step (synchronous: one update per step, none lost or doubled); its
    sample pictures are written; the worker leaves no copy of the checkpoints behind
    (TensorFlow makes it save into `tmp_worker_0/` while training); and the checkpoint at 20
    is bitwise the one of an uninterrupted 20-step job (built-in in-memory data)."""
    model_dir, mwms = str(tmp_path / "run"), "distribute.strategy=multi_worker_mirrored"
    for steps in (10, 20):
        code, out, logs = _local_cluster(model_dir, steps, mwms)
        assert code == 0, out[-3000:] + "".join(f"\n--- {k}\n{v[-2000:]}" for k, v in logs.items())
        for task in ("chief:0", "worker:0"):
            assert f"[cluster] {task} exited with status 0" in out, out
        for log in (logs["chief-0.log"], logs["worker-0.log"]):
            assert "strategy multi_worker_mirrored" in log and f"done: step {steps}" in log
            assert ("resuming at step 10, to step 20" if steps == 20 else "from scratch") in log
    reader = tf.train.load_checkpoint(model_dir)
    assert int(reader.get_tensor("global_step")) == 20
    assert int(reader.get_tensor("generator_step")) == int(reader.get_tensor("discriminator_step")) == 20
    for role in ("G", "D"):  # Adam's beta powers: exactly one update per step
        assert np.isclose(reader.get_tensor(f"{role}_train/beta1_power"), 0.5 ** 21)
        assert np.isclose(reader.get_tensor(f"{role}_train/beta2_power"), 0.999 ** 21)
    steps = sorted(int(p.split("-")[-1].split(".")[0])
                   for p in glob.glob(os.path.join(model_dir, "model.ckpt-*.index")))
    assert steps == [0, 10, 20]
    assert sorted(os.listdir(os.path.join(model_dir, "samples"))) == [
        "step_00000000.png", "step_00000010.png", "step_00000020.png"]
    first = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-0"))
    assert not np.allclose(first.get_tensor("generator/hidden0/kernel"),
                           reader.get_tensor("generator/hidden0/kernel"))
    assert not os.path.exists(os.path.join(model_dir, "tmp_worker_0")), os.listdir(model_dir)

    reference_dir = str(tmp_path / "reference")
    code, out, logs = _local_cluster(reference_dir, 20, mwms)
    assert code == 0, out[-3000:]
    reference = tf.train.load_checkpoint(reference_dir)
    names = sorted(reader.get_variable_to_shape_map())
    assert names == sorted(reference.get_variable_to_shape_map())
    differ = [n for n in names if not np.array_equal(reader.get_tensor(n), reference.get_tensor(n))]
    assert not differ, f"{len(differ)} of {len(names)} variables differ after the resume: {differ[:5]}"


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_restores_into_single_device_estimators(tmp_path):
    model_dir = str(tmp_path / "mirrored")
    cfg = tiny_config("distribute.strategy=mirrored", "distribute.num_devices=2")
    gan = GAN(cfg, model_dir=model_dir)
    assert gan.estimator.config.train_distribute.num_replicas_in_sync == 2
    assert gan.train(array_input_fn(tiny_images()), max_steps=4, progress=False) == 4

    reader = tf.train.load_checkpoint(model_dir)
    assert int(reader.get_tensor("generator_step")) == 4
    assert int(reader.get_tensor("discriminator_step")) == 4
    assert np.isclose(reader.get_tensor("G_train/beta1_power"), 0.5 ** 5)
    assert np.isclose(reader.get_tensor("D_train/beta1_power"), 0.5 ** 5)
    assert not np.allclose(reader.get_tensor("generator/project_bn/moving_mean"), 0.0)
    assert glob.glob(os.path.join(model_dir, "samples", "step_*.png"))

    single = GAN(tiny_config(), model_dir=model_dir)
    assert single.estimator.config.train_distribute is None
    samples = single.generate(3)
    assert samples.shape == (3, 8, 8, 1) and np.all(np.isfinite(samples))
    single.discriminator_estimator.train(array_input_fn(tiny_images()), max_steps=5)
    reader = tf.train.load_checkpoint(model_dir)
    assert int(reader.get_tensor("discriminator_step")) == 5
    assert int(reader.get_tensor("generator_step")) == 4


@pytest.mark.parametrize("tf_config, message", [
    ({"cluster": {"chief": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]},
      "task": {"type": "chief", "index": 0}}, "exactly one chief, it lists 2"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"], "evaluator": ["127.0.0.1:3"]},
      "task": {"type": "evaluator", "index": 0}}, "evaluator must not be listed in 'cluster'"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}}, "no 'task'"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "ps": ["localhost"]},
      "task": {"type": "chief", "index": 0}}, "cluster.ps[0] 'localhost' is not host:port"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "ps": ["127.0.0.1:70000"]},
      "task": {"type": "chief", "index": 0}}, "port must be a number from 1 to 65535"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "ps": ["127.0.0.1:1"]},
      "task": {"type": "chief", "index": 0}}, "used by both chief:0 and ps:0"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]},
      "task": {"type": "worker", "index": 1}}, "task worker:1 is not in the cluster"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "gpu": ["127.0.0.1:2"]},
      "task": {"type": "chief", "index": 0}}, "unknown job 'gpu'"),
    ({"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
      "task": {"type": "chief", "index": 0}}, "lists workers but no ps job"),
])
def test_tf_config_mistakes_are_one_line_errors(tf_config, message):
    with pytest.raises(ConfigError) as err:
        cluster = distributed.read_tf_config({"TF_CONFIG": json.dumps(tf_config)})
        distributed.check_cluster(cluster, DistributeConfig())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_strategy_and_cluster_must_agree():
    ps_cluster = distributed.read_tf_config(_tf_config(
        {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}, "worker", 0))
    for strategy, cluster, message in [
        ("mirrored", ps_cluster, "mirrored runs in one process"),
        ("multi_worker_mirrored", ps_cluster, "uses no ps job"),
        ("multi_worker_mirrored", None, "needs a TF_CONFIG"),
        ("parameter_server", None, "needs a TF_CONFIG whose cluster has a ps job"),
    ]:
        with pytest.raises(ConfigError, match=message):
            distributed.check_cluster(cluster, DistributeConfig(strategy=strategy))
    distributed.check_cluster(ps_cluster, DistributeConfig(strategy="parameter_server"))
    with pytest.raises(ConfigError, match="num_devices applies to strategy 'mirrored'"):
        tiny_config("distribute.num_devices=2")


def test_parameter_server_workers_read_their_own_shard():
    jobs = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"], "ps": ["127.0.0.1:4"]}
    contexts = {}
    for task_type, index in (("chief", 0), ("worker", 0), ("worker", 1), ("ps", 0)):
        cluster = distributed.read_tf_config(_tf_config(jobs, task_type, index))
        contexts[(task_type, index)] = distributed.worker_input_context(cluster, DistributeConfig())
    assert contexts[("ps", 0)] is None
    ids = [contexts[k].input_pipeline_id for k in (("chief", 0), ("worker", 0), ("worker", 1))]
    assert ids == [0, 1, 2]
    assert all(contexts[k].num_input_pipelines == 3 and contexts[k].num_replicas_in_sync == 1
               for k in (("chief", 0), ("worker", 0), ("worker", 1)))

    cfg = tiny_config(*TINY_MLP).data
    seen = []
    for key in (("chief", 0), ("worker", 0)):
        ds = pipeline.make_input_fn(cfg, training=False)(input_context=contexts[key])
        seen.append({tuple(np.round(x, 6)) for batch in ds.take(5) for x in batch[0].numpy()})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_cli_refuses_bad_tf_config_before_starting_anything(tmp_path):
    model_dir = tmp_path / "never"
    env = dict(_env(), TF_CONFIG=json.dumps({"cluster": {"chief": ["127.0.0.1:1", "127.0.0.1:2"]},
                                              "task": {"type": "chief", "index": 0}}))
    code, out, err = _run([sys.executable, "run_train.py", "--model-dir", str(model_dir)], 120, env)
    assert code == 2
    assert err.strip().splitlines() == ["error: TF_CONFIG: the cluster needs exactly one chief, it lists 2"]
    assert not model_dir.exists()


@pytest.mark.parametrize("value", ["", "  \n"], ids=["empty", "blank"])
def test_tf_config_set_but_empty_is_a_one_line_error(tmp_path, monkeypatch, capsys, value):
    from estimator_gan import cli

    monkeypatch.setenv("TF_CONFIG", value)
    model_dir = tmp_path / "never"
    assert cli.main(["train", "--model-dir", str(model_dir), "--max-steps", "2"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "error: TF_CONFIG: is set but empty: unset it for a single-process run, or set it to the "
        "job's cluster and task JSON"], err
    assert not model_dir.exists()


def test_local_tf_configs_use_distinct_free_ports():
    configs = launcher.local_tf_configs(workers=2, ps=1, evaluator=True)
    assert [(t, i) for t, i, _ in configs] == [("chief", 0), ("worker", 0), ("worker", 1), ("ps", 0), ("evaluator", 0)]
    cluster = configs[0][2]["cluster"]
    addresses = [a for job in cluster.values() for a in job]
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert "evaluator" not in cluster
    for _, _, tf_config in configs:
        assert distributed.read_tf_config({"TF_CONFIG": json.dumps(tf_config)}) is not None


# ------------------------------------------------------------------- signals and local-cluster

# A parameter-server job that trains until it is stopped: progress every step, no checkpoint
# between the first one and the one the stop writes.
STOPPABLE_JOB = ["--config", "digits_dcgan", "--max-steps", "1000000"] + [
    a for item in ["data.image_size=8", "model.generator.filters=4", "model.discriminator.filters=4",
                   "model.z_dim=8", "data.batch_size=8", "train.log_every_steps=1",
                   "train.save_checkpoints_steps=100000", "distribute.max_worker_delay_secs=1",
                   "distribute.export_at_end=false"] for a in ("--set", item)]


def _start_local_cluster(model_dir, out_path):
    """`local-cluster` (chief, worker, ps) on STOPPABLE_JOB in the background, output to a file."""
    args = [sys.executable, "-m", "estimator_gan.cli", "local-cluster", "--workers", "1", "--ps", "1",
            "--", "--model-dir", model_dir, *STOPPABLE_JOB]
    with open(out_path, "w") as out:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def _text(path):
    with open(path, errors="replace") as f:
        return f.read()


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _cluster_pids(text):
    """{task: pid} from the launcher's `[cluster] started <task> pid <pid>` lines."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"\[cluster\] started (\S+) pid (\d+)", text)}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _chief_training(out_path):
    return lambda: len(_cluster_pids(_text(out_path))) == 3 and re.search(r"^step +\d+/", _text(out_path), re.M)


def _stop_all(launcher_proc, pids):
    for pid in [launcher_proc.pid, *pids.values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher_proc.wait(30)


def _assert_stopped_with_a_checkpoint(model_dir, out, pids):
    chief_log = _text(os.path.join(model_dir, "cluster-logs", "chief-0.log"))
    stopped = re.search(r"^stopped by SIGTERM at step (\d+)", chief_log, re.M)
    assert stopped, out[-3000:] + chief_log[-3000:]
    step = int(stopped.group(1))
    # Asynchronous training: the worker moves the global step on while the chief saves, so the
    # checkpoint's file name can trail the step stored in it, which is what resume reads.
    newest = checkpoints.newest_readable(model_dir)
    assert step > 0 and newest.step == step and os.path.exists(newest.path + ".index")
    assert int(tf.train.load_checkpoint(model_dir).get_tensor("global_step")) == step
    assert f"[cluster] stopped at step {step} of 1000000; checkpoint in {model_dir}; rerun" in out, out[-3000:]
    assert [task for task, pid in pids.items() if _alive(pid)] == [], out[-3000:]


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_and_stops_every_process(tmp_path):
    """What a scheduler does to a job: SIGTERM to the launcher is passed on, the chief saves a
    checkpoint, every process ends, and the launcher exits 0."""
    model_dir, out_path = str(tmp_path / "run"), str(tmp_path / "launcher.out")
    proc, pids = _start_local_cluster(model_dir, out_path), {}
    try:
        _wait_for(_chief_training(out_path), CLUSTER_TIMEOUT, "the chief's first progress line")
        pids = _cluster_pids(_text(out_path))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=CLUSTER_TIMEOUT)
    finally:
        _stop_all(proc, pids)
    out = _text(out_path)
    assert code == 0, out[-3000:]
    assert "[cluster] SIGTERM received: passing it on to chief:0, worker:0" in out, out[-3000:]
    _assert_stopped_with_a_checkpoint(model_dir, out, pids)


@pytest.mark.slow
def test_a_chief_stopped_by_sigterm_ends_the_job(tmp_path):
    """SIGTERM to the chief alone: it saves and exits 0, and the launcher then stops the worker
    and the ps (instead of leaving the worker training until --timeout) and exits 0."""
    model_dir, out_path = str(tmp_path / "run"), str(tmp_path / "launcher.out")
    proc, pids = _start_local_cluster(model_dir, out_path), {}
    try:
        _wait_for(_chief_training(out_path), CLUSTER_TIMEOUT, "the chief's first progress line")
        pids = _cluster_pids(_text(out_path))
        os.kill(pids["chief:0"], signal.SIGTERM)
        code = proc.wait(timeout=CLUSTER_TIMEOUT)
    finally:
        _stop_all(proc, pids)
    out = _text(out_path)
    assert code == 0, out[-3000:]
    assert "[cluster] chief:0 exited with status 0" in out
    assert "[cluster] chief:0 stopped before the last step: stopping worker:0" in out, out[-3000:]
    _assert_stopped_with_a_checkpoint(model_dir, out, pids)


@pytest.mark.slow
def test_a_parameter_server_ends_on_sigterm(tmp_path):
    """A ps blocks in TensorFlow's server loop, where no Python signal handler runs, and has
    nothing to save: it keeps the default handlers, so SIGTERM ends it (it used to be ignored)."""
    chief, ps = launcher.free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{chief}"], "ps": [f"127.0.0.1:{ps}"]}
    env = dict(_env(), TF_CPP_MIN_LOG_LEVEL="0", **_tf_config(cluster, "ps"))
    out_path = str(tmp_path / "ps.out")
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "estimator_gan.cli", "train", "--model-dir",
                                 str(tmp_path / "run"), *STOPPABLE_JOB[:4]], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for(lambda: "Started server with target" in _text(out_path), 300, "the ps server")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == -signal.SIGTERM, _text(out_path)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

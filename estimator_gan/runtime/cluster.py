"""Distributed training: the cluster a process belongs to (`TF_CONFIG`), the strategy the config
asks for, and the `RunConfig` that carries both to the Estimator.

A distributed job is many processes running the *same* command (`run_train.py ...`), each with
its own `TF_CONFIG`, e.g. for the chief of a 1-ps / 2-worker job:

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222"], "ps": ["host2:2222"]},
     "task": {"type": "chief", "index": 0}}

The evaluator is not listed in `cluster`; its task is `{"type": "evaluator", "index": 0}`.
TensorFlow's own runtime does the work (`tf.estimator.train_and_evaluate`): this module only
checks `TF_CONFIG` up front (`read_tf_config`, `check_cluster`: one-line `TFConfigError`s before
any server starts), builds the `tf.distribute` strategy of `config.distribute`
(`make_strategy`, `make_run_config`) and shards the input per worker under parameter-server
training (`worker_input_context`). `runtime.launcher` runs a whole cluster on 127.0.0.1.

How processes end: the chief returns when the global step reaches `max_steps` (and exports);
workers return at their next step after that; the evaluator returns after evaluating the final
checkpoint. A `ps` process serves variables until it is killed: whoever launched it stops it
(by pid, after the chief has finished); `runtime.launcher` does exactly that.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from estimator_gan.config import Config, DistributeConfig
from estimator_gan.errors import TFConfigError

CLUSTER_JOBS = ("chief", "worker", "ps")
TASK_TYPES = CLUSTER_JOBS + ("evaluator",)
_TF_CONFIG_KEYS = ("cluster", "task", "environment", "rpc_layer")


@dataclass(frozen=True)
class Cluster:
    """This process's place in a validated `TF_CONFIG`."""

    jobs: Dict[str, List[str]]
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief"

    @property
    def has_ps(self) -> bool:
        return bool(self.jobs.get("ps"))

    @property
    def num_workers(self) -> int:
        """Processes that train: the chief and the workers."""
        return len(self.jobs.get("chief", [])) + len(self.jobs.get("worker", []))

    @property
    def worker_index(self) -> Optional[int]:
        """0 for the chief, 1 + index for workers, None for ps and evaluator."""
        if self.task_type == "chief":
            return 0
        if self.task_type == "worker":
            return len(self.jobs.get("chief", [])) + self.task_index
        return None

    def describe(self) -> str:
        sizes = ", ".join(f"{len(v)} {k}" for k, v in self.jobs.items())
        return f"{self.task_type}:{self.task_index} of a cluster of {sizes or 'no other processes'}"


def _fail(message: str):
    raise TFConfigError(f"TF_CONFIG: {message}")


def _check_address(job: str, index: int, address) -> str:
    where = f"cluster.{job}[{index}]"
    if not isinstance(address, str) or not address.strip():
        _fail(f"{where} must be a 'host:port' string, got {address!r}")
    if "://" in address:
        _fail(f"{where} {address!r}: give host:port without a scheme")
    host, sep, port = address.rpartition(":")
    if not sep or not host or any(c.isspace() for c in address):
        _fail(f"{where} {address!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"{where} {address!r}: port must be a number from 1 to 65535")
    return address


def read_tf_config(environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
    """Parse and check `TF_CONFIG`; None when it is unset or empty (a single process).

    Refused, each with a one-line `TFConfigError`: invalid JSON, unknown job names, an
    `evaluator` (or legacy `master`) job inside `cluster`, not exactly one chief, bad or repeated
    addresses, a missing task, a task type/index that is not in the cluster.
    """
    environ = os.environ if environ is None else environ
    if "TF_CONFIG" not in environ:
        return None
    raw = environ["TF_CONFIG"].strip()
    if not raw:
        _fail("is set but empty: unset it for a single-process run, or set it to the job's "
              "cluster and task JSON")
    try:
        tree = json.loads(raw)
    except json.JSONDecodeError as err:
        _fail(f"not valid JSON ({err.msg} at character {err.pos})")
    if not isinstance(tree, dict):
        _fail("must be a JSON object with 'cluster' and 'task'")
    unknown = sorted(set(tree) - set(_TF_CONFIG_KEYS))
    if unknown:
        _fail(f"unknown key {unknown[0]!r} (expected {', '.join(_TF_CONFIG_KEYS)})")
    jobs = tree.get("cluster") or {}
    if not isinstance(jobs, dict):
        _fail("'cluster' must map job names to lists of host:port addresses")
    seen: Dict[str, str] = {}
    for job, addresses in jobs.items():
        if job == "evaluator":
            _fail("the evaluator must not be listed in 'cluster'; only its task says "
                  "{\"type\": \"evaluator\", \"index\": 0}")
        if job == "master":
            _fail("use a 'chief' job instead of the legacy 'master'")
        if job not in CLUSTER_JOBS:
            _fail(f"unknown job {job!r} in 'cluster' (expected {', '.join(CLUSTER_JOBS)})")
        if not isinstance(addresses, list) or not addresses:
            _fail(f"cluster.{job} must be a non-empty list of host:port addresses")
        for i, address in enumerate(addresses):
            _check_address(job, i, address)
            if address in seen:
                _fail(f"address {address} is used by both {seen[address]} and {job}:{i}")
            seen[address] = f"{job}:{i}"
    if jobs and len(jobs.get("chief", [])) != 1:
        _fail(f"the cluster needs exactly one chief, it lists {len(jobs.get('chief', []))}")
    task = tree.get("task")
    if not task:
        if jobs:
            _fail("no 'task': every process needs its own task, e.g. {\"type\": \"worker\", \"index\": 0}")
        return None
    if not isinstance(task, dict) or "type" not in task:
        _fail("'task' must be an object with 'type' and 'index'")
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in TASK_TYPES:
        _fail(f"unknown task type {task_type!r} (expected {', '.join(TASK_TYPES)})")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        _fail(f"task index must be a whole number >= 0, got {index!r}")
    if task_type == "evaluator":
        if index != 0:
            _fail(f"there is one evaluator, its index is 0 (got {index})")
    elif index >= len(jobs.get(task_type, [])):
        _fail(f"task {task_type}:{index} is not in the cluster, which lists "
              f"{len(jobs.get(task_type, []))} {task_type} address(es)")
    return Cluster({k: list(v) for k, v in jobs.items()}, task_type, index)


def check_cluster(cluster: Optional[Cluster], cfg: DistributeConfig) -> None:
    """Refuse `TF_CONFIG` / `distribute.strategy` combinations that cannot train."""
    strategy = cfg.strategy
    if strategy == "mirrored" and cluster is not None:
        raise TFConfigError(
            "distribute.strategy=mirrored runs in one process: unset TF_CONFIG, or use "
            "multi_worker_mirrored (no ps) or parameter_server across processes")
    if strategy == "parameter_server" and (cluster is None or not cluster.has_ps):
        raise TFConfigError(
            "distribute.strategy=parameter_server needs a TF_CONFIG whose cluster has a ps job")
    if strategy == "multi_worker_mirrored":
        if cluster is None or not cluster.jobs:
            raise TFConfigError("distribute.strategy=multi_worker_mirrored needs a TF_CONFIG "
                                "with a cluster (a chief and workers)")
        if cluster.has_ps:
            raise TFConfigError("distribute.strategy=multi_worker_mirrored uses no ps job; "
                                "remove it from TF_CONFIG or use parameter_server")
    if strategy == "none" and cluster is not None and cluster.jobs.get("worker") and not cluster.has_ps:
        raise TFConfigError(
            "TF_CONFIG lists workers but no ps job: add a ps job (parameter-server training) "
            "or set distribute.strategy=multi_worker_mirrored")


def _cpu_only() -> bool:
    return not tf.config.list_physical_devices("GPU")


def make_strategy(cfg: DistributeConfig, cluster: Optional[Cluster] = None):
    """`(train_distribute, session_config)` for `RunConfig`; `(None, None)` without a strategy
    and for the processes that do not train (ps, evaluator: the strategy's constructor would
    look for them among the workers).

    `mirrored` on a machine without GPUs places its `num_devices` replicas on that many CPU
    devices, made for the Estimator's session (`device_count`), so nothing process-global
    changes and it works whatever the process ran before. Its gradients are summed with `ReductionToOneDevice` by default: the all-reduce
    TensorFlow picks by default hangs on the first step with several CPU devices.
    """
    if cfg.strategy == "mirrored":
        session_config = None
        if _cpu_only():
            count = cfg.num_devices or 1
            devices = [f"/cpu:{i}" for i in range(count)]
            session_config = tf.compat.v1.ConfigProto(
                device_count={"CPU": count}, allow_soft_placement=True)
        else:
            gpus = tf.config.list_logical_devices("GPU")
            count = cfg.num_devices or len(gpus)
            if count > len(gpus):
                raise TFConfigError(f"distribute.num_devices={count} but this machine has "
                                    f"{len(gpus)} GPU(s)")
            devices = [g.name for g in gpus[:count]]
        cross_device_ops = {
            "reduction_to_one_device": tf.distribute.ReductionToOneDevice,
            "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce,
            "nccl": tf.distribute.NcclAllReduce,
        }[cfg.cross_device_ops]()
        # Built outside eager mode: in an eager context that already exists with one CPU
        # device, the constructor would place a tensor on the devices the session adds later.
        with tf.Graph().as_default():
            strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
        return strategy, session_config
    if cfg.strategy == "multi_worker_mirrored" and cluster is not None and cluster.worker_index is not None:
        implementation = tf.distribute.experimental.CommunicationImplementation
        communication = {"auto": implementation.AUTO, "ring": implementation.RING,
                         "nccl": implementation.NCCL}[cfg.communication]
        # The v1 class: it starts no server when built; the Estimator's coordinator does.
        return (tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy(
            communication=communication), None)
    return None, None


def worker_input_context(cluster: Optional[Cluster], cfg: DistributeConfig):
    """Under parameter-server training, the input shard of this chief/worker: Estimator gives
    an `input_context` only to distribution strategies, so without one every worker would read
    the same examples. None when there is nothing to shard."""
    if cfg.strategy not in ("none", "parameter_server") or cluster is None:
        return None
    index = cluster.worker_index
    if index is None or cluster.num_workers < 2:
        return None
    return tf.distribute.InputContext(num_input_pipelines=cluster.num_workers,
                                      input_pipeline_id=index, num_replicas_in_sync=1)


def make_run_config(config: Config, model_dir: str, cluster: Optional[Cluster] = None,
                    **overrides) -> tf.estimator.RunConfig:
    """The RunConfig of a training process: the config's train and distribute sections and the
    strategy for `cluster` (this process's place in `TF_CONFIG`, which RunConfig also reads)."""
    train = config.train
    check_cluster(cluster, config.distribute)
    train_distribute, session_config = make_strategy(config.distribute, cluster)
    if train.precision == "mixed_bfloat16":
        session_config = session_config or tf.compat.v1.ConfigProto()
        session_config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
            rewriter_config_pb2.RewriterConfig.ON)
    kwargs = dict(
        train_distribute=train_distribute,
        session_config=session_config,
        experimental_max_worker_delay_secs=config.distribute.max_worker_delay_secs,
        model_dir=model_dir,
        tf_random_seed=train.seed,
        save_checkpoints_steps=train.save_checkpoints_steps,
        save_summary_steps=train.save_summary_steps,
        keep_checkpoint_max=train.keep_checkpoint_max,
        log_step_count_steps=None,
    )
    kwargs.update(overrides)
    return tf.estimator.RunConfig(**kwargs)

"""Running one distributed training job as local processes on 127.0.0.1, for trying it out and
for tests: each process gets its own `TF_CONFIG` on free ports, its output goes to a log file,
and the ps processes (which never return by themselves) are stopped once training is done.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence, TextIO, Tuple


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """`count` distinct ports free on `host` right now (held open together while picking)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_configs(workers: int = 1, ps: int = 1, evaluator: bool = False,
                     host: str = "127.0.0.1") -> List[Tuple[str, int, dict]]:
    """`(task_type, index, TF_CONFIG)` for every process of a one-machine cluster: one chief,
    `workers` workers, `ps` parameter servers on free ports, and optionally an evaluator."""
    if workers < 0 or ps < 0:
        raise ValueError("workers and ps must be >= 0")
    ports = iter(free_ports(1 + workers + ps, host))
    jobs = {"chief": [f"{host}:{next(ports)}"]}
    if workers:
        jobs["worker"] = [f"{host}:{next(ports)}" for _ in range(workers)]
    if ps:
        jobs["ps"] = [f"{host}:{next(ports)}" for _ in range(ps)]
    tasks = [(job, i) for job in ("chief", "worker", "ps") for i in range(len(jobs.get(job, [])))]
    if evaluator:
        tasks.append(("evaluator", 0))
    return [(t, i, {"cluster": jobs, "task": {"type": t, "index": i}}) for t, i in tasks]


@dataclass
class ClusterProcess:
    task_type: str
    index: int
    process: subprocess.Popen
    log_path: str
    returncode: Optional[int] = None
    _tee: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.index}"


def _tee(source, log_file, stream: Optional[TextIO]):
    for line in iter(source.readline, ""):
        log_file.write(line)
        log_file.flush()
        if stream is not None:
            stream.write(line)
            stream.flush()
    source.close()
    log_file.close()


def _stop(proc: ClusterProcess, grace: float = 5.0) -> None:
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(grace)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()
    proc.returncode = proc.process.returncode


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = [l.rstrip() for l in f.readlines() if l.strip()][-lines:]
    except OSError:
        return ""
    return "\n".join("    " + l for l in tail)


def run_local_cluster(command: Sequence[str], workers: int = 1, ps: int = 1,
                      evaluator: bool = False, log_dir: str = "cluster-logs",
                      timeout: float = 3600, env: Optional[Mapping[str, str]] = None,
                      stream: Optional[TextIO] = None) -> Tuple[int, List[ClusterProcess]]:
    """Run `command` as every process of a local cluster and wait for training to end.

    Each process gets its own `TF_CONFIG`; its output goes to `log_dir/<task>-<index>.log`
    (the chief's is also copied to `stream`). Returns `(status, processes)`: status 0 when
    the chief, workers and evaluator all exited 0. The ps processes, which never return by
    themselves, are stopped by pid once the others are done; on a failure, a timeout or
    Ctrl-C every process still running is stopped.
    """
    stream = stream or sys.stdout
    os.makedirs(log_dir, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    procs: List[ClusterProcess] = []
    status = 1
    try:
        for task_type, index, tf_config in local_tf_configs(workers, ps, evaluator):
            log_path = os.path.join(log_dir, f"{task_type}-{index}.log")
            proc_env = dict(base_env, TF_CONFIG=json.dumps(tf_config))
            process = subprocess.Popen(list(command), env=proc_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1)
            proc = ClusterProcess(task_type, index, process, log_path)
            proc._tee = threading.Thread(
                target=_tee, daemon=True,
                args=(process.stdout, open(log_path, "w", encoding="utf-8"),
                      stream if task_type == "chief" else None))
            proc._tee.start()
            procs.append(proc)
            address = tf_config["cluster"].get(task_type, ["-"])[index] if task_type != "evaluator" else "-"
            print(f"[cluster] started {proc.name} pid {process.pid} {address} log {log_path}",
                  file=stream, flush=True)
        status = _wait_for_training(procs, time.time() + timeout, stream)
        return status, procs
    finally:
        for proc in procs:
            was_running = proc.process.poll() is None
            _stop(proc)
            if was_running:
                why = "stopped (ps never exits by itself)" if proc.task_type == "ps" else "stopped"
                print(f"[cluster] {proc.name} {why}", file=stream, flush=True)
            if proc._tee is not None:
                proc._tee.join(5)


def _wait_for_training(procs: List[ClusterProcess], deadline: float, stream: TextIO) -> int:
    pending = [p for p in procs if p.task_type != "ps"]
    while pending:
        for proc in list(pending):
            code = proc.process.poll()
            if code is None:
                continue
            proc.returncode = code
            pending.remove(proc)
            print(f"[cluster] {proc.name} exited with status {code}", file=stream, flush=True)
            if code != 0:
                tail = _log_tail(proc.log_path)
                print(f"[cluster] {proc.name} failed; last lines of {proc.log_path}:\n{tail}",
                      file=stream, flush=True)
                return code
        if any(p.task_type == "ps" and p.process.poll() is not None for p in procs):
            ps = next(p for p in procs if p.task_type == "ps" and p.process.poll() is not None)
            print(f"[cluster] {ps.name} exited early with status {ps.process.returncode}; "
                  f"last lines of {ps.log_path}:\n{_log_tail(ps.log_path)}", file=stream, flush=True)
            return ps.process.returncode or 1
        if time.time() > deadline:
            print(f"[cluster] timed out waiting for {', '.join(p.name for p in pending)}",
                  file=stream, flush=True)
            return 124
        time.sleep(0.2)
    return 0

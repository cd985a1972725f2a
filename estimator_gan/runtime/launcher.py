"""Running one distributed training job as local processes on 127.0.0.1, for trying it out and
for tests: each process gets its own `TF_CONFIG` on free ports, its output goes to a log file,
and the ps processes (which never return by themselves) are stopped once training is done.

Stopping: the launcher is the job. The processes run in sessions of their own, so a terminal's
Ctrl-C or a scheduler's SIGTERM reaches the launcher alone, which passes it on once to every
process but the ps (the chief saves a checkpoint, each exits), then stops the ps, and exits as
the chief did (0 for SIGTERM, 130 for SIGINT). A chief that ends before the job's last step
(stopped by a signal, or by its time budget) ends the job the same way.
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
from typing import Callable, List, Mapping, Optional, Sequence, TextIO, Tuple


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
                      stream: Optional[TextIO] = None, stop_grace: float = 60.0,
                      job_done: Optional[Callable[[], bool]] = None) -> Tuple[int, List[ClusterProcess]]:
    """Run `command` as every process of a local cluster and wait for training to end.

    Each process gets its own `TF_CONFIG`; its output goes to `log_dir/<task>-<index>.log`
    (the chief's is also copied to `stream`). Returns `(status, processes)`: status 0 when
    the chief, workers and evaluator all exited 0. The ps processes, which never return by
    themselves, are stopped by pid once the others are done; on a failure or a timeout every
    process still running is stopped. SIGTERM and SIGINT to the launcher are passed on (see the
    module docstring); so is a SIGTERM when the chief exits 0 while `job_done()` is False.
    `stop_grace`: seconds a stopping process may take before it is killed.
    """
    stream = stream or sys.stdout
    os.makedirs(log_dir, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    procs: List[ClusterProcess] = []
    status = 1
    signals = _Signals()
    try:
        for task_type, index, tf_config in local_tf_configs(workers, ps, evaluator):
            log_path = os.path.join(log_dir, f"{task_type}-{index}.log")
            proc_env = dict(base_env, TF_CONFIG=json.dumps(tf_config))
            process = subprocess.Popen(list(command), env=proc_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       start_new_session=True)
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
        status = _Wait(procs, stream, signals.received, job_done, stop_grace).run(time.time() + timeout)
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
        signals.restore()


class _Signals:
    """Records SIGTERM and SIGINT (when made in the main thread) in `received` instead of dying
    of them, so that the job can be stopped in order; `restore` puts the previous handlers back."""

    def __init__(self):
        self.received: List[int] = []
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Wait:
    """Waits for the chief, workers and evaluator; stops them in order when asked to."""

    def __init__(self, procs: List[ClusterProcess], stream: TextIO, received: List[int],
                 job_done: Optional[Callable[[], bool]], stop_grace: float):
        self.procs = procs
        self.pending = [p for p in procs if p.task_type != "ps"]
        self.stream = stream
        self.received = received
        self.job_done = job_done
        self.stop_grace = stop_grace
        self.forwarded = 0
        self.stopping: Optional[float] = None  # the deadline of an orderly stop

    def _print(self, message: str) -> None:
        print(f"[cluster] {message}", file=self.stream, flush=True)

    def _pass_on(self, signum: int) -> None:
        running = [p for p in self.pending if p.process.poll() is None]
        for proc in running:
            proc.process.send_signal(signum)
        if self.stopping is None:
            self.stopping = time.time() + self.stop_grace

    def run(self, deadline: float) -> int:
        while self.pending:
            while self.forwarded < len(self.received):
                signum = self.received[self.forwarded]
                self.forwarded += 1
                names = ", ".join(p.name for p in self.pending)
                self._print(f"{signal.Signals(signum).name} received: passing it on to {names}"
                            + (" (the chief saves a checkpoint)" if self.forwarded == 1 else
                               " (exiting at once)"))
                self._pass_on(signum)
            for proc in list(self.pending):
                code = proc.process.poll()
                if code is None:
                    continue
                proc.returncode = code
                self.pending.remove(proc)
                self._print(f"{proc.name} exited with status {code}")
                if self.stopping is not None:
                    continue
                if code != 0:
                    self._print(f"{proc.name} failed; last lines of {proc.log_path}:\n{_log_tail(proc.log_path)}")
                    return code
                if proc.task_type == "chief" and self.pending and self.job_done is not None \
                        and not self.job_done():
                    self._print(f"chief:0 stopped before the last step: stopping "
                                f"{', '.join(p.name for p in self.pending)}")
                    self._pass_on(signal.SIGTERM)
            if self.stopping is None:
                ps = next((p for p in self.procs if p.task_type == "ps" and p.process.poll() is not None), None)
                if ps is not None:
                    self._print(f"{ps.name} exited early with status {ps.process.returncode}; "
                                f"last lines of {ps.log_path}:\n{_log_tail(ps.log_path)}")
                    return ps.process.returncode or 1
            now = time.time()
            if now > deadline or (self.stopping is not None and now > self.stopping):
                self._print(f"timed out waiting for {', '.join(p.name for p in self.pending)}")
                return 124
            time.sleep(0.2)
        return self._status()

    def _status(self) -> int:
        """0 when every process ended as it should; after a signal, what the chief's exit says
        (0 for SIGTERM, 130 for SIGINT); else the first unexpected exit code."""
        graceful = {signal.SIGTERM: 0, signal.SIGINT: 130}.get(self.received[0], 0) if self.received else 0
        codes = [p.returncode for p in self.procs if p.task_type != "ps"]
        return next((c for c in codes if c not in (0, graceful)), graceful)

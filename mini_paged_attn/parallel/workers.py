"""WorkerGroup: the driver's side of a tensor-parallel LLM's N-1 worker
processes (torch.multiprocessing, spawned).

Steps reach the workers over one pipe each, not through torch.distributed:
an idle worker then waits for its next step without a collective timing out,
a driver that dies closes the pipes (which ends the workers), and a worker
reports its error on its pipe before it exits. The step's own collectives
(all-reduces, the logits' gather) run in the process group.
"""
from __future__ import annotations

import atexit
import os
import pickle
import socket
import time
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.multiprocessing as mp

from . import worker
from .group import NVLS_OFF, TPGroup, check_size, current, join, leave, rank_device

START_TIMEOUT_S = 600.0  # each rank loads its checkpoint shards (and captures graphs)
STOP_TIMEOUT_S = 10.0


class WorkerError(RuntimeError):
    """A tensor-parallel worker failed; the LLM's workers are shut down."""


def start(size, model, device: torch.device, llm_args: Dict[str, Any]
          ) -> Tuple[TPGroup, Optional["WorkerGroup"]]:
    """This process's rank for an LLM of ``tensor_parallel_size=size`` and,
    when it is the driver, its started workers. ``llm_args`` are the LLM's
    arguments, which every worker builds its own LLM from."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"tensor_parallel_size must be an int >= 1, got {size!r}")
    if size == 1:
        return TPGroup(), None
    from ..models.config import ModelConfig
    config = ModelConfig.from_pretrained(model) if isinstance(model, str) else \
        model or ModelConfig.tiny()
    check_size(size, config)
    group = current()
    if group is not None:
        if group.rank > 0 and group.size == size:
            return group, None  # a worker building its rank's LLM
        raise RuntimeError("another tensor-parallel LLM is running in this process: close() it "
                           "first (one per process)")
    workers = WorkerGroup(size, device, llm_args)
    return current(), workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerGroup:
    def __init__(self, size: int, device: torch.device, llm_args: Dict[str, Any]):
        self.conns, self.procs = [], []
        self.closed = self._joined = False
        ctx = mp.get_context("spawn")
        port = _free_port()
        for key, value in NVLS_OFF.items():  # the workers inherit them
            os.environ.setdefault(key, value)
        args = worker.encode_args(llm_args)
        try:
            for rank in range(1, size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker.main, name=f"mini-paged-attn-tp{rank}",
                                   args=(rank, size, port, str(rank_device(device, rank)), args,
                                         child), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            self._wait_for("started")
            join(0, size, port, rank_device(device, 0))
            self._joined = True
        except BaseException:
            self.close(graceful=False)
            raise
        atexit.register(self.close)

    def _wait_for(self, what: str, timeout: float = START_TIMEOUT_S) -> None:
        """Until every worker has sent ``what``; ``WorkerError`` if one fails,
        dies or takes longer than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pending = set(self.conns)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"tensor-parallel workers did not get {what} within "
                                  f"{timeout:.0f} s")
            ready = wait(list(pending) + [p.sentinel for p in self.procs], left)
            for conn in [c for c in ready if c in pending]:
                message = conn.recv()
                if message[0] != what:
                    raise WorkerError(self._describe(self.conns.index(conn) + 1, message))
                pending.discard(conn)
            if any(r not in self.conns for r in ready):  # a process ended
                raise WorkerError(self.failure() or "a tensor-parallel worker exited")

    def wait_ready(self) -> None:
        """Until every worker has built its LLM."""
        try:
            self._wait_for("ready")
        except BaseException:
            self.close(graceful=False)
            raise

    @staticmethod
    def _describe(rank: int, message) -> str:
        detail = message[1] if message[0] == "error" else f"unexpected message {message!r}"
        return f"tensor-parallel worker {rank} failed:\n{detail}"

    def failure(self) -> Optional[str]:
        """What went wrong with a worker, if anything: its error, or its exit."""
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs), 1):
            try:
                if conn.poll():
                    return self._describe(rank, conn.recv())
            except (EOFError, OSError):
                pass
            if not proc.is_alive():
                return f"tensor-parallel worker {rank} (pid {proc.pid}) exited with code " \
                       f"{proc.exitcode}"
        return None

    def send(self, message: Any) -> None:
        """Sends a step to every worker (pickled once)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self.conns:
            conn.send_bytes(data)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one step of the driver. A step cut short (an error anywhere,
        KeyboardInterrupt) leaves the workers inside it, so the group shuts
        down; a worker's failure is raised as ``WorkerError``."""
        if self.closed:
            raise WorkerError("the tensor-parallel workers are shut down (LLM.close() or an "
                              "earlier failure): create a new LLM")
        cause = self.failure()
        if cause is not None:
            self.close(graceful=False)
            raise WorkerError(cause)
        try:
            yield
        except BaseException as e:
            cause = self.failure() if isinstance(e, Exception) else None
            self.close(graceful=False)
            if cause is not None:
                raise WorkerError(cause) from e
            raise

    def close(self, graceful: bool = True) -> None:
        """Stops the workers (asked to, then terminated, then killed) and
        leaves the process group. Idempotent."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        for conn in self.conns:
            try:
                if graceful:
                    conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        deadline = time.monotonic() + (STOP_TIMEOUT_S if graceful else 0.0)
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            for stop in (proc.terminate, proc.kill):
                if proc.is_alive():
                    stop()
                    proc.join(STOP_TIMEOUT_S)
        for conn in self.conns:
            conn.close()
        if self._joined:
            leave()

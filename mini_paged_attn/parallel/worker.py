"""The worker process of a tensor-parallel LLM (ranks 1 .. N-1): joins the
process group, builds its rank's LLM (the same constructor as the driver's,
so the same model shards, cache and CUDA graphs), then repeats each step the
driver sends until it is told to stop or the driver is gone."""
from __future__ import annotations

import os
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any, Dict

import torch

from .._C import PagedKVCacheConfig, StaticKVCacheConfig
from .cache_sync import apply_changes
from .group import join, leave


def encode_args(llm_args: Dict[str, Any]) -> Dict[str, Any]:
    """``LLM`` arguments in picklable form (the C++ cache configs are not)."""
    args = dict(llm_args)
    c = args.get("cache_config")
    if isinstance(c, PagedKVCacheConfig):
        args["cache_config"] = ("paged", c.max_kv_memory_bytes(), c.block_size())
    elif isinstance(c, StaticKVCacheConfig):
        args["cache_config"] = ("static", c.max_batch_size(), c.max_cache_len())
    return args


def decode_args(args: Dict[str, Any]) -> Dict[str, Any]:
    args = dict(args)
    c = args.get("cache_config")
    if isinstance(c, tuple):
        kind, *values = c
        args["cache_config"] = (PagedKVCacheConfig if kind == "paged" else
                                StaticKVCacheConfig)(*values)
    return args


def main(rank: int, size: int, port: int, device: str, llm_args: Dict[str, Any],
         conn: Connection) -> None:
    # Ctrl-C in a terminal reaches every process of the group; the driver
    # alone handles it (and shuts the workers down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if device == "cpu":  # the ranks share the host's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
        from ..llm import LLM
        conn.send(("started",))
        join(rank, size, port, torch.device(device))
        llm = LLM(**decode_args(llm_args), device=device, skip_tokenizer_init=True)
        conn.send(("ready",))
        serve(llm.engine.runner, conn)
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        # At once: a driver waiting in a collective sees this rank's sockets close.
        os._exit(1)
    leave()


@torch.inference_mode()
def serve(runner, conn: Connection) -> None:
    """Runs the driver's steps (``ModelRunner`` messages) until a stop (None)
    or the end of the pipe."""
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return  # the driver is gone
        if message is None:
            return
        kind, changes, *args = message
        apply_changes(runner.kv_cache, changes)
        if kind == "eager":
            inputs, = args
            runner.run_eager(inputs._replace(slot_mapping=torch.from_numpy(inputs.slot_mapping)))
        else:
            bucket, filled = args
            runner.inputs.load(torch.from_numpy(filled))
            runner.run_decode(bucket)

"""TPGroup: a process's rank in a tensor-parallel group and the collectives the
sharded layers call. ``TPGroup()`` (rank 0 of 1) is the single-process model,
whose layers never call into torch.distributed.

One tensor-parallel LLM per process: its processes form the default process
group (NCCL on GPUs, gloo on the CPU), set up by :func:`join` and left by
:func:`leave`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from ..models.config import ModelConfig

# A collective that waits longer than this for a peer fails instead of hanging
# (a worker that died mid-step is usually noticed at once: its sockets close).
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
# NVLink multicast (NVLS) stays off in every process of the group.
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks, in place, on every rank."""
        dist.all_reduce(x)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The ranks' ``x`` concatenated along the last dimension, on rank 0
        (the driver, which samples); None on the other ranks."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0)
        return torch.cat(parts, dim=-1) if parts is not None else None


_current: Optional[TPGroup] = None


def current() -> Optional[TPGroup]:
    """This process's group while it is in one, else None."""
    return _current


def kv_heads_per_rank(num_kv_heads: int, size: int) -> int:
    """KV heads each rank holds: a share of them, or one (replicated) when
    there are fewer than ranks."""
    return max(1, num_kv_heads // size)


def check_size(size: int, config: "ModelConfig") -> None:
    """``ValueError`` naming ``tensor_parallel_size`` unless ``config`` can be
    split into ``size`` ranks."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if heads % size:
        raise ValueError(f"tensor_parallel_size ({size}) must divide num_attention_heads "
                         f"({heads})")
    if (kv >= size and kv % size) or (kv < size and size % kv):
        raise ValueError(f"tensor_parallel_size ({size}) and num_key_value_heads ({kv}) must "
                         f"divide one another (each rank's query heads share one KV head set)")
    if config.intermediate_size % size:
        raise ValueError(f"tensor_parallel_size ({size}) must divide intermediate_size "
                         f"({config.intermediate_size})")


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank ``rank``'s device: the CPU, or the ``rank``-th GPU from ``device``'s."""
    if device.type == "cpu":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def join(rank: int, size: int, port: int, device: torch.device) -> TPGroup:
    """Joins the group of ``size`` processes that meet at 127.0.0.1:``port``."""
    global _current
    if _current is not None:
        raise RuntimeError("this process is already in a tensor-parallel group: close() the "
                           "LLM that holds it first")
    for key, value in NVLS_OFF.items():
        os.environ.setdefault(key, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)
    _current = TPGroup(rank, size)
    return _current


def leave() -> None:
    """Leaves the group (a no-op outside one)."""
    global _current
    if _current is not None:
        _current = None
        if dist.is_initialized():
            dist.destroy_process_group()

"""StaticKVCache: the contiguous, per-slot cache of a ``StaticKVCacheConfig``
(InfiniLM's static mode), the comparison point for paging.

Slot ``i`` owns tokens ``[i * max_cache_len, (i + 1) * max_cache_len)`` of one
contiguous buffer whether it uses them or not. The buffer is viewed as fixed
blocks so the same ``paged_attention`` kernel serves it.
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch

from .._C import StaticKVCacheConfig
from ..ops import reshape_and_cache


class StaticKVCache:
    BLOCK_SIZE = 16

    def __init__(self, config: StaticKVCacheConfig, num_kv_heads: int, head_size: int,
                 max_seq_len: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float16):
        if not isinstance(config, StaticKVCacheConfig):
            raise TypeError(f"config must be a StaticKVCacheConfig, got {type(config).__name__}")
        cache_len = config.max_cache_len()
        if max_seq_len is not None:
            cache_len = min(cache_len, max_seq_len)
        if cache_len >= 2**40:
            raise ValueError("max_cache_len is unbounded: pass max_seq_len (the model's "
                             "context length) or a StaticKVCacheConfig with max_cache_len")
        self.max_batch_size = config.max_batch_size()
        self.blocks_per_slot = -(-cache_len // self.BLOCK_SIZE)
        self.max_cache_len = self.blocks_per_slot * self.BLOCK_SIZE
        self.device = torch.device(device)
        shape = (self.max_batch_size * self.blocks_per_slot, self.BLOCK_SIZE, num_kv_heads,
                 head_size)
        self.key_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.value_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.block_table = torch.arange(shape[0], dtype=torch.int32, device=self.device).view(
            self.max_batch_size, self.blocks_per_slot)
        self.context_lens = torch.zeros(self.max_batch_size, dtype=torch.int32,
                                        device=self.device)
        self._slots: Dict[int, int] = {}

    @property
    def reserved_bytes(self) -> int:
        return 2 * self.key_cache.numel() * self.key_cache.element_size()

    def row_of(self, seq_id: int) -> int:
        if seq_id not in self._slots:
            raise KeyError(f"unknown seq_id {seq_id!r}")
        return self._slots[seq_id]

    def add_sequence(self, seq_id: int, seq_len: int) -> None:
        if seq_id in self._slots:
            raise ValueError(f"seq_id {seq_id!r} is already present")
        if not 0 <= seq_len <= self.max_cache_len:
            raise ValueError(f"seq_len {seq_len} is outside [0, {self.max_cache_len}]")
        if len(self._slots) == self.max_batch_size:
            raise MemoryError(f"all {self.max_batch_size} static slots are in use")
        slot = min(set(range(self.max_batch_size)) - set(self._slots.values()))
        self._slots[seq_id] = slot
        self.context_lens[slot] = seq_len

    def append_slots(self, seq_id: int, num_tokens: int = 1) -> torch.Tensor:
        slot = self.row_of(seq_id)
        old_len = int(self.context_lens[slot])
        if old_len + num_tokens > self.max_cache_len:
            raise MemoryError(f"sequence {seq_id!r} outgrows its static slot of "
                              f"{self.max_cache_len} tokens")
        self.context_lens[slot] = old_len + num_tokens
        return self.slot_mapping(seq_id, old_len, num_tokens)

    def slot_mapping(self, seq_id: int, start: int, num_tokens: int) -> torch.Tensor:
        base = self.row_of(seq_id) * self.max_cache_len
        return torch.arange(base + start, base + start + num_tokens, dtype=torch.int64,
                            device=self.device)

    def write_kv(self, seq_id: int, key: torch.Tensor, value: torch.Tensor,
                 start: int = 0) -> None:
        slots = self.slot_mapping(seq_id, start, key.size(0))
        reshape_and_cache(key.to(self.key_cache), value.to(self.value_cache), self.key_cache,
                          self.value_cache, slots)

    def free_sequence(self, seq_id: int) -> None:
        self.context_lens[self.row_of(seq_id)] = 0
        del self._slots[seq_id]

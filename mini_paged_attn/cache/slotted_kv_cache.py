"""SlottedKVCache: the engine's cache for a ``StaticKVCacheConfig``, every
layer's K/V in the contiguous per-slot buffer of ``mini_paged_attn.StaticKVCache``
(one slot of ``max_cache_len`` tokens per sequence, reserved whole), the
comparison point for paging."""
from __future__ import annotations

import torch

from .._C import StaticKVCacheConfig
from ..engine.host_to_device import to_device
from ..ops import copy_blocks
from .kv_cache import KVCache
from .static_cache import StaticKVCache as SlotBuffer


class SlottedKVCache(KVCache):
    """The layers' heads sit side by side in one slot buffer
    (``num_layers * num_kv_heads`` heads), each layer a strided view of it. A
    slot is reserved for a sequence's whole possible length when it is added,
    so appending never fails; forks copy the parent's slot (nothing is shared)."""

    def __init__(self, config: StaticKVCacheConfig, num_layers: int, num_kv_heads: int,
                 head_size: int, dtype: torch.dtype, device: torch.device, max_model_len: int):
        self.slots = SlotBuffer(config, num_layers * num_kv_heads, head_size,
                                max_seq_len=max_model_len, device=device, dtype=dtype)
        self.block_size = SlotBuffer.BLOCK_SIZE
        self.num_blocks = self.slots.key_cache.size(0)
        self.max_seq_len = self.slots.max_cache_len
        self.block_table = self.slots.block_table
        heads = [slice(i * num_kv_heads, (i + 1) * num_kv_heads) for i in range(num_layers)]
        self.key_caches = [self.slots.key_cache[:, :, h] for h in heads]
        self.value_caches = [self.slots.value_cache[:, :, h] for h in heads]
        self._num_live = 0
        self._mirror_block_table()  # rows never change: slot i owns its blocks for good

    def can_add(self, seq) -> bool:
        return self._num_live < self.slots.max_batch_size

    def add(self, seq, reuse_prefix: bool = True) -> int:
        self.slots.add_sequence(seq.seq_id, seq.num_tokens)
        self._num_live += 1
        seq.num_slots = seq.num_tokens
        return 0

    def can_append(self, seq) -> bool:
        return seq.num_slots < self.max_seq_len

    def append(self, seq) -> None:
        if not self.can_append(seq):
            raise MemoryError(f"sequence {seq.seq_id} outgrows its static slot of "
                              f"{self.max_seq_len} tokens")
        seq.num_slots += 1

    def fork(self, parent, child) -> None:
        self.add(child)
        bps = self.slots.blocks_per_slot
        src, dst = self.row_of(parent) * bps, self.row_of(child) * bps
        used = -(-parent.num_slots // self.block_size)
        self.copy_blocks(torch.tensor([[src + i, dst + i] for i in range(used)],
                                      dtype=torch.int64).view(-1, 2))

    def _copy(self, block_mapping: torch.Tensor) -> None:
        # Block i of the slot buffer is block i of every layer's view.
        copy_blocks([self.slots.key_cache], [self.slots.value_cache],
                    to_device(block_mapping, torch.int64, self.slots.device))

    def free(self, seq) -> None:
        self.slots.free_sequence(seq.seq_id)
        self._num_live -= 1
        seq.num_slots = 0

    def row_of(self, seq) -> int:
        return self.slots.row_of(seq.seq_id)

    def slot_mapping(self, seq, start: int, num_tokens: int) -> torch.Tensor:
        return self.slots.slot_mapping(seq.seq_id, start, num_tokens)

    def num_unused_slots(self, seqs) -> int:
        return sum(self.max_seq_len - s.num_slots for s in seqs)

    @property
    def num_used_blocks(self) -> int:
        return self._num_live * self.slots.blocks_per_slot

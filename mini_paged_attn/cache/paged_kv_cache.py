"""PagedKVCache: every layer's K/V in blocks drawn from one pool, with the
block tables (``BlockTables``: fork, copy-on-write, prefix cache)."""
from __future__ import annotations

from typing import List, Optional

import torch

from .._C import PagedKVCacheConfig
from ..block_manager import BlockManager
from ..engine.host_to_device import to_device
from ..ops import copy_blocks
from .block_tables import BlockTables
from .kv_cache import KVCache
from .sizing import num_blocks_for


class PagedKVCache(KVCache):
    """``[num_layers, 2, num_blocks, block_size, num_kv_heads, head_size]``, as
    many blocks as ``config.max_kv_memory_bytes()`` holds. A block holds the
    same token positions in every layer, so one block table serves them all and
    a copy-on-write copies the block in every layer. ``with_blocks`` sizes it
    by a block count instead, optionally token-major (a token's K and V side by
    side, the layout of ``PagedAttentionManager``, its one-layer view)."""

    def __init__(self, config: PagedKVCacheConfig, num_layers: int, num_kv_heads: int,
                 head_size: int, dtype: torch.dtype, device: torch.device, max_num_seqs: int,
                 max_model_len: int):
        block_size = config.block_size()
        num_blocks = num_blocks_for(config, num_kv_heads, head_size, dtype, num_layers)
        self._allocate(num_blocks, block_size, num_layers, num_kv_heads, head_size, dtype, device,
                       max_num_seqs, min(-(-max_model_len // block_size), num_blocks),
                       token_major=False)

    @classmethod
    def with_blocks(cls, num_blocks: int, block_size: int, num_layers: int, num_kv_heads: int,
                    head_size: int, dtype: torch.dtype, device: torch.device, max_num_seqs: int,
                    max_blocks_per_seq: int, token_major: bool = False) -> "PagedKVCache":
        cache = cls.__new__(cls)
        cache._allocate(num_blocks, block_size, num_layers, num_kv_heads, head_size, dtype, device,
                        max_num_seqs, max_blocks_per_seq, token_major)
        return cache

    def _allocate(self, num_blocks: int, block_size: int, num_layers: int, num_kv_heads: int,
                  head_size: int, dtype: torch.dtype, device: torch.device, max_num_seqs: int,
                  max_blocks_per_seq: int, token_major: bool) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.block_manager = BlockManager(num_blocks)
        self.max_seq_len = max_blocks_per_seq * block_size
        self.tables = BlockTables(self.block_manager, max_num_seqs, max_blocks_per_seq, block_size)
        self.block_table = self.tables.block_table
        if token_major:  # [num_layers, num_blocks, block_size, 2, num_kv_heads, head_size]
            self.kv = torch.zeros(num_layers, num_blocks, block_size, 2, num_kv_heads, head_size,
                                  dtype=dtype, device=device)
            self.key_caches = list(self.kv[:, :, :, 0])
            self.value_caches = list(self.kv[:, :, :, 1])
        else:
            self.kv = torch.zeros(num_layers, 2, num_blocks, block_size, num_kv_heads, head_size,
                                  dtype=dtype, device=device)
            self.key_caches = list(self.kv[:, 0])
            self.value_caches = list(self.kv[:, 1])
        self._mirror_block_table()

    def _copy(self, block_mapping: torch.Tensor) -> None:
        copy_blocks(self.key_caches, self.value_caches,
                    to_device(block_mapping, torch.int64, self.kv.device), check=False)

    def can_add(self, seq) -> bool:
        return self.tables.can_allocate(num_tokens=seq.num_tokens)

    def add(self, seq, reuse_prefix: bool = True) -> int:
        if reuse_prefix:
            num_cached = self.tables.add_sequence(seq.seq_id, seq.num_tokens, seq.token_ids)
        else:
            # Added as its first token (too short for a prefix hit), then grown
            # with its ids known: its blocks still become cache entries once
            # written, for the requests after it.
            num_cached = self.tables.add_sequence(seq.seq_id, 1, seq.token_ids[:1])
            try:
                self.tables.append_slots(seq.seq_id, seq.num_tokens - 1, seq.token_ids[1:])
            except BaseException:
                self.tables.free_sequence(seq.seq_id)
                raise
        seq.num_slots = seq.num_tokens
        self._touch(self.row_of(seq))
        return num_cached

    def can_append(self, seq) -> bool:
        return self.tables.can_allocate(seq.seq_id, 1)

    def append(self, seq) -> None:
        _, block_mapping = self.tables.append_slots(seq.seq_id, 1, seq.token_ids[-1:])
        self.copy_blocks(block_mapping)
        seq.num_slots += 1
        self._touch(self.row_of(seq))

    def append_decodes(self, seqs, token_ids: Optional[List[int]]) -> torch.Tensor:
        # One C++ call for the whole step; it also marks the tokens the
        # sequences already hold as written (the last step computed them).
        slots, changed_rows, block_mapping = self.tables.decode_step(
            [s.seq_id for s in seqs], token_ids)
        self.copy_blocks(block_mapping)
        for s in seqs:
            s.num_slots += 1
        for row in changed_rows.tolist():
            self._touch(row)
        return slots

    def fork(self, parent, child) -> None:
        self.tables.fork(parent.seq_id, child.seq_id)
        self._touch(self.row_of(child))

    def free(self, seq) -> None:
        self.tables.free_sequence(seq.seq_id)
        seq.num_slots = 0

    def mark_written(self, seq, start: int, num_tokens: int) -> None:
        self.tables.mark_written(seq.seq_id, start, num_tokens)

    def row_of(self, seq) -> int:
        return self.tables.row_of(seq.seq_id)

    def slot_mapping(self, seq, start: int, num_tokens: int) -> torch.Tensor:
        return self.tables.slot_mapping(seq.seq_id, start, num_tokens)

    @property
    def num_used_blocks(self) -> int:
        # Evictable prefix-cache blocks count as free: any allocation may take them.
        return self.num_blocks - self.block_manager.num_free_blocks

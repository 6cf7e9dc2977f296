"""PagedAttentionManager: a physical paged KV cache and the block tables that
map each sequence's tokens onto it (one attention layer)."""
from __future__ import annotations

from typing import Hashable, Optional, Sequence, Tuple, Union

import torch

from .._C import PagedKVCacheConfig
from ..checks import positive
from ..ops import reshape_and_cache
from .block_tables import BlockTables, TokenIds
from .paged_kv_cache import PagedKVCache
from .sizing import num_blocks_for


class PagedAttentionManager:
    """Owns ``kv_cache [num_blocks, block_size, 2, num_kv_heads, head_size]`` and
    one ``block_table`` row per live sequence.

    Each sequence added gets the lowest free row of ``block_table`` /
    ``context_lens`` (``row_of(seq_id)``), so passing those two tensors with a
    batch of queries in row order runs ``paged_attention`` over every row.
    Sequences share blocks after ``fork`` and through the prefix cache
    (``add_sequence`` with ``token_ids``); a write into a shared block goes to a
    private copy made first with ``copy_blocks`` (copy-on-write), so no
    sequence ever sees another's writes. The bookkeeping is ``block_tables``
    (C++); a failed call changes nothing.
    """

    def __init__(self, num_sequences: int, num_heads: int, head_size: int, block_size: int,
                 num_blocks: int, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float16, num_kv_heads: Optional[int] = None,
                 max_blocks_per_seq: Optional[int] = None):
        self.num_sequences = positive("num_sequences", num_sequences)
        self.num_heads = positive("num_heads", num_heads)
        self.head_size = positive("head_size", head_size)
        self.block_size = positive("block_size", block_size)
        self.num_kv_heads = positive("num_kv_heads",
                                     num_heads if num_kv_heads is None else num_kv_heads)
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        self.max_blocks_per_seq = positive(
            "max_blocks_per_seq", num_blocks if max_blocks_per_seq is None else max_blocks_per_seq)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = torch.device(device)
        self.dtype = dtype
        # The engine's cache with one token-major layer: one implementation of
        # the storage, the block tables, their device mirror and the copies.
        self._cache = PagedKVCache.with_blocks(
            positive("num_blocks", num_blocks), block_size, 1, self.num_kv_heads, head_size, dtype,
            self.device, num_sequences, self.max_blocks_per_seq, token_major=True)
        self.block_manager = self._cache.block_manager
        self.block_tables = self._cache.tables
        self.kv_cache = self._cache.kv[0]
        self.key_cache = self._cache.key_caches[0]
        self.value_cache = self._cache.value_caches[0]
        # On the CPU these are the tables' own tensors; elsewhere device copies
        # of them, refreshed after each change.
        self.block_table = self._cache.device_block_table
        self.context_lens = self.block_tables.context_lens.to(self.device)

    @classmethod
    def from_config(cls, config: PagedKVCacheConfig, num_sequences: int, num_heads: int,
                    head_size: int, num_kv_heads: Optional[int] = None,
                    device: Union[str, torch.device] = "cpu",
                    dtype: torch.dtype = torch.float16,
                    max_blocks_per_seq: Optional[int] = None) -> "PagedAttentionManager":
        """Sizes the cache from a byte budget: as many blocks as fit."""
        if not isinstance(config, PagedKVCacheConfig):
            raise TypeError(f"config must be a PagedKVCacheConfig, got {type(config).__name__}")
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        num_blocks = num_blocks_for(config, kv_heads, head_size, dtype)
        return cls(num_sequences, num_heads, head_size, config.block_size(), num_blocks,
                   device=device, dtype=dtype, num_kv_heads=kv_heads,
                   max_blocks_per_seq=max_blocks_per_seq)

    # -- bookkeeping ---------------------------------------------------------------
    @property
    def seq_block_mapping(self) -> BlockTables:
        """Read-only mapping ``seq_id -> list of physical block ids``."""
        return self.block_tables

    def row_of(self, seq_id: Hashable) -> int:
        """Row of ``block_table`` and ``context_lens`` that holds ``seq_id``."""
        return self.block_tables.row_of(seq_id)

    def seq_len(self, seq_id: Hashable) -> int:
        return self.block_tables.seq_len(seq_id)

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can still be allocated (free or evictable cache entries)."""
        return self.block_manager.num_free_blocks

    def can_allocate(self, seq_id: Optional[Hashable] = None,
                     num_tokens: Optional[int] = None) -> bool:
        """Whether ``seq_id`` can grow by ``num_tokens`` (default 1), or, without
        ``seq_id``, whether a new sequence of ``num_tokens`` tokens fits."""
        return self.block_tables.can_allocate(seq_id, num_tokens)

    def _copy(self, block_mapping: torch.Tensor) -> None:
        """Makes the copy-on-write copies the block tables asked for."""
        self._cache.copy_blocks(block_mapping)

    def _sync(self, rows) -> None:
        """Mirrors changed rows of the host tables to the device copies."""
        for row in torch.as_tensor(rows, dtype=torch.int64).tolist():
            self._cache._touch(row)
        self._cache.sync_block_table()
        if self.context_lens is not self.block_tables.context_lens:
            self.context_lens.copy_(self.block_tables.context_lens)

    # -- public API ----------------------------------------------------------------
    def add_sequence(self, seq_id: Hashable, seq_len: int, token_ids: TokenIds = None) -> int:
        """Registers ``seq_id`` with room for ``seq_len`` tokens. Given its
        ``token_ids``, cached leading blocks are reused; returns how many leading
        tokens are already in the cache (skip computing them), 0 without ids."""
        num_cached = self.block_tables.add_sequence(seq_id, seq_len, token_ids)
        self._sync([self.row_of(seq_id)])
        return num_cached

    def fork(self, parent_seq_id: Hashable, child_seq_id: Hashable) -> None:
        """``child_seq_id`` shares every block of ``parent_seq_id`` (no copy)."""
        self.block_tables.fork(parent_seq_id, child_seq_id)
        self._sync([self.row_of(child_seq_id)])

    def append_slots(self, seq_id: Hashable, num_tokens: int = 1,
                     token_ids: TokenIds = None) -> torch.Tensor:
        """Grows ``seq_id`` by ``num_tokens`` (copying a shared last block first)
        and returns their int64 slots. ``MemoryError`` leaves everything as it was."""
        slots, block_mapping = self.block_tables.append_slots(seq_id, num_tokens, token_ids)
        self._copy(block_mapping)
        self._sync([self.row_of(seq_id)])
        return slots.to(self.device)

    def decode_step(self, seq_ids: Optional[Sequence[Hashable]] = None,
                    token_ids: TokenIds = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Advances ``seq_ids`` (every live sequence when None) by one token in
        one call; see ``BlockTables.decode_step``. Returns the int64
        ``slot_mapping`` (on the cache's device) and the rows of
        ``block_table`` that changed; copy-on-write copies are already made."""
        slots, changed_rows, block_mapping = self.block_tables.decode_step(seq_ids, token_ids)
        self._copy(block_mapping)
        self._sync(changed_rows)
        return slots.to(self.device), changed_rows

    def slot_mapping(self, seq_id: Hashable, start: int, num_tokens: int) -> torch.Tensor:
        """int64 slots (``block * block_size + offset``) of positions
        ``start .. start + num_tokens - 1`` of ``seq_id``, on the cache's device."""
        return self.block_tables.slot_mapping(seq_id, start, num_tokens).to(self.device)

    def mark_written(self, seq_id: Hashable, start: int, num_tokens: int) -> None:
        """Records K/V written by other means (e.g. a kernel through
        ``slot_mapping``); ``write_kv`` does this itself."""
        self.block_tables.mark_written(seq_id, start, num_tokens)

    def free_sequence(self, seq_id: Hashable) -> None:
        """Returns the sequence's blocks (last block first) and row."""
        row = self.row_of(seq_id)
        self.block_tables.free_sequence(seq_id)
        self._sync([row])

    def write_kv(self, seq_id: Hashable, key: torch.Tensor, value: torch.Tensor,
                 start: int = 0) -> None:
        """Stores ``[n, num_kv_heads, head_size]`` tokens at positions
        ``start .. start + n - 1`` of ``seq_id`` (through ``reshape_and_cache``),
        copying first any block it shares. Positions served by the prefix cache
        are already written: write from the count ``add_sequence`` returned."""
        n = key.size(0) if key.dim() == 3 else -1
        shape = (n, self.num_kv_heads, self.head_size)
        if tuple(key.shape) != shape or tuple(value.shape) != shape:
            raise ValueError(f"key and value must be [n, num_kv_heads={self.num_kv_heads}, "
                             f"head_size={self.head_size}], got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        self._copy(self.block_tables.make_writable(seq_id, start, n))
        self._sync([self.row_of(seq_id)])
        to = dict(device=self.device, dtype=self.dtype)
        reshape_and_cache(key.to(**to).contiguous(), value.to(**to).contiguous(),
                          self.key_cache, self.value_cache, self.slot_mapping(seq_id, start, n))
        self.block_tables.mark_written(seq_id, start, n)

    def gather_kv(self, seq_id: Hashable) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sequence's keys and values in token order, ``[seq_len, num_kv_heads,
        head_size]`` each (a copy, for tests and debugging)."""
        seq_len = self.seq_len(seq_id)
        blocks = torch.tensor(self.block_tables[seq_id], dtype=torch.int64, device=self.device)
        flat = (-1, self.num_kv_heads, self.head_size)
        # Index whole blocks first: reshaping the strided cache views would copy them.
        return (self.key_cache[blocks].reshape(flat)[:seq_len],
                self.value_cache[blocks].reshape(flat)[:seq_len])

    def __repr__(self) -> str:
        return (f"PagedAttentionManager(sequences={len(self.block_tables)}/{self.num_sequences}, "
                f"blocks_free={self.num_free_blocks}/{self.block_manager.num_blocks}, "
                f"block_size={self.block_size}, heads={self.num_heads}/{self.num_kv_heads}, "
                f"head_size={self.head_size}, dtype={self.dtype}, device={self.device})")

"""PagedAttentionManager: a physical paged KV cache and the block tables that
map each sequence's tokens onto it (one attention layer)."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch

from ._C import PagedKVCacheConfig
from .block_manager import BlockManager
from .config import num_blocks_for
from .ops import reshape_and_cache


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _non_negative(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


class PagedAttentionManager:
    """Owns ``kv_cache [num_blocks, block_size, 2, num_kv_heads, head_size]`` and
    one ``block_table`` row per live sequence.

    Each sequence added gets the lowest free row of ``block_table`` /
    ``context_lens`` (``row_of(seq_id)``), so passing those two tensors with a
    batch of queries in row order runs ``paged_attention`` over every row.
    Blocks come from a C++ ``BlockManager``; a failed call changes nothing.
    """

    def __init__(self, num_sequences: int, num_heads: int, head_size: int, block_size: int,
                 num_blocks: int, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float16, num_kv_heads: Optional[int] = None,
                 max_blocks_per_seq: Optional[int] = None):
        self.num_sequences = _positive("num_sequences", num_sequences)
        self.num_heads = _positive("num_heads", num_heads)
        self.head_size = _positive("head_size", head_size)
        self.block_size = _positive("block_size", block_size)
        self.num_kv_heads = _positive("num_kv_heads",
                                      num_heads if num_kv_heads is None else num_kv_heads)
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        self.max_blocks_per_seq = _positive(
            "max_blocks_per_seq", num_blocks if max_blocks_per_seq is None else max_blocks_per_seq)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_manager = BlockManager(_positive("num_blocks", num_blocks))

        self.kv_cache = torch.zeros(num_blocks, block_size, 2, self.num_kv_heads, head_size,
                                    dtype=dtype, device=self.device)
        self.key_cache = self.kv_cache[:, :, 0]
        self.value_cache = self.kv_cache[:, :, 1]
        self.block_table = torch.zeros(num_sequences, self.max_blocks_per_seq,
                                       dtype=torch.int32, device=self.device)
        self.context_lens = torch.zeros(num_sequences, dtype=torch.int32, device=self.device)
        self.seq_block_mapping: Dict[int, List[int]] = {}
        self._rows: Dict[int, int] = {}
        self._lens: Dict[int, int] = {}

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
    def _blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _check_known(self, seq_id: int) -> None:
        if seq_id not in self._rows:
            raise KeyError(f"unknown seq_id {seq_id!r}")

    def _check_capacity(self, seq_id: int, seq_len: int) -> None:
        if self._blocks_needed(seq_len) > self.max_blocks_per_seq:
            raise ValueError(f"sequence {seq_id!r} of {seq_len} tokens needs more than "
                             f"max_blocks_per_seq={self.max_blocks_per_seq} blocks of "
                             f"{self.block_size}")

    def row_of(self, seq_id: int) -> int:
        """Row of ``block_table`` and ``context_lens`` that holds ``seq_id``."""
        self._check_known(seq_id)
        return self._rows[seq_id]

    def seq_len(self, seq_id: int) -> int:
        self._check_known(seq_id)
        return self._lens[seq_id]

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    def _write_row(self, row: int, start: int, blocks: List[int], seq_len: int) -> None:
        if blocks:
            self.block_table[row, start:start + len(blocks)] = torch.tensor(blocks,
                                                                           dtype=torch.int32)
        self.context_lens[row] = seq_len

    # -- public API ----------------------------------------------------------------
    def add_sequence(self, seq_id: int, seq_len: int) -> None:
        """Registers ``seq_id`` with room for ``seq_len`` tokens."""
        if seq_id in self._rows:
            raise ValueError(f"seq_id {seq_id!r} is already present")
        _non_negative("seq_len", seq_len)
        self._check_capacity(seq_id, seq_len)
        if len(self._rows) == self.num_sequences:
            raise MemoryError(f"all {self.num_sequences} sequence rows are in use")
        blocks = self.block_manager.allocate_blocks(self._blocks_needed(seq_len))
        row = min(set(range(self.num_sequences)) - set(self._rows.values()))
        self._rows[seq_id] = row
        self._lens[seq_id] = seq_len
        self.seq_block_mapping[seq_id] = blocks
        self.block_table[row].zero_()
        self._write_row(row, 0, blocks, seq_len)

    def append_slots(self, seq_id: int, num_tokens: int = 1) -> torch.Tensor:
        """Grows ``seq_id`` by ``num_tokens`` and returns their int64 slots."""
        self._check_known(seq_id)
        _non_negative("num_tokens", num_tokens)
        old_len = self._lens[seq_id]
        new_len = old_len + num_tokens
        self._check_capacity(seq_id, new_len)
        blocks = self.seq_block_mapping[seq_id]
        new_blocks = self.block_manager.allocate_blocks(self._blocks_needed(new_len) - len(blocks))
        start = len(blocks)
        blocks.extend(new_blocks)
        self._lens[seq_id] = new_len
        self._write_row(self._rows[seq_id], start, new_blocks, new_len)
        return self.slot_mapping(seq_id, old_len, num_tokens)

    def slot_mapping(self, seq_id: int, start: int, num_tokens: int) -> torch.Tensor:
        """int64 slots (``block * block_size + offset``) of positions
        ``start .. start + num_tokens - 1`` of ``seq_id``, on the cache's device."""
        self._check_known(seq_id)
        if start < 0 or num_tokens < 0 or start + num_tokens > self._lens[seq_id]:
            raise ValueError(f"positions [{start}, {start + num_tokens}) are outside sequence "
                             f"{seq_id!r} of {self._lens[seq_id]} tokens")
        blocks = torch.tensor(self.seq_block_mapping[seq_id], dtype=torch.int64)
        pos = torch.arange(start, start + num_tokens, dtype=torch.int64)
        slots = blocks[pos // self.block_size] * self.block_size + pos % self.block_size
        return slots.to(self.device)

    def free_sequence(self, seq_id: int) -> None:
        """Returns the sequence's blocks and row."""
        self._check_known(seq_id)
        self.block_manager.free_blocks(self.seq_block_mapping[seq_id])
        row = self._rows.pop(seq_id)
        del self._lens[seq_id], self.seq_block_mapping[seq_id]
        self.context_lens[row] = 0

    def write_kv(self, seq_id: int, key: torch.Tensor, value: torch.Tensor,
                 start: int = 0) -> None:
        """Stores ``[n, num_kv_heads, head_size]`` tokens at positions
        ``start .. start + n - 1`` of ``seq_id`` (through ``reshape_and_cache``)."""
        if key.dim() != 3:
            raise ValueError(f"key must be [n, num_kv_heads, head_size], got {tuple(key.shape)}")
        slots = self.slot_mapping(seq_id, start, key.size(0))
        to = dict(device=self.device, dtype=self.dtype)
        reshape_and_cache(key.to(**to), value.to(**to), self.key_cache, self.value_cache, slots)

    def gather_kv(self, seq_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sequence's keys and values in token order, ``[seq_len, num_kv_heads,
        head_size]`` each (a copy, for tests and debugging)."""
        seq_len = self.seq_len(seq_id)
        blocks = torch.tensor(self.seq_block_mapping[seq_id], dtype=torch.int64,
                              device=self.device)
        flat = (-1, self.num_kv_heads, self.head_size)
        # Index whole blocks first: reshaping the strided cache views would copy them.
        return (self.key_cache[blocks].reshape(flat)[:seq_len],
                self.value_cache[blocks].reshape(flat)[:seq_len])

    def __repr__(self) -> str:
        return (f"PagedAttentionManager(sequences={len(self._rows)}/{self.num_sequences}, "
                f"blocks_free={self.num_free_blocks}/{self.block_manager.num_blocks}, "
                f"block_size={self.block_size}, heads={self.num_heads}/{self.num_kv_heads}, "
                f"head_size={self.head_size}, dtype={self.dtype}, device={self.device})")

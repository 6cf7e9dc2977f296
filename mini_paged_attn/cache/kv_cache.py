"""KVCache: the K/V tensors of every layer of a model, and which cache slots
each sequence owns. Two layouts share this interface: :class:`PagedKVCache`
(blocks from a shared pool, shared between sequences) and
:class:`SlottedKVCache` (one contiguous slot of ``max_cache_len`` tokens per
sequence, InfiniLM's static mode)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional, Set

import torch

from ..attention import PagedAttention


class KVCache(ABC):
    """Subclasses set ``key_caches`` / ``value_caches`` (one
    ``[num_blocks, block_size, num_kv_heads, head_size]`` view per layer),
    ``block_table`` (int32 ``[rows, max_blocks_per_seq]``, host) and
    ``num_blocks`` / ``block_size`` and ``max_seq_len`` (the most tokens one
    sequence can hold), then call :meth:`_mirror_block_table`. Sequences are
    ``Sequence`` objects; every method that fails raises with nothing changed.

    ``device_block_table`` is ``block_table`` on the caches' device; rows the
    host table changes are marked with :meth:`_touch` and copied by
    :meth:`sync_block_table` (through pinned memory, without a host sync)."""

    key_caches: List[torch.Tensor]
    value_caches: List[torch.Tensor]
    block_table: torch.Tensor
    device_block_table: torch.Tensor
    block_size: int
    num_blocks: int
    max_seq_len: int
    # A tensor-parallel driver logs its block copies here for the workers to
    # repeat on their caches (``parallel.cache_sync``); None: not logged.
    copy_log: Optional[List[torch.Tensor]] = None

    def _mirror_block_table(self) -> None:
        device = self.key_caches[0].device
        self.device_block_table = self.block_table if device.type == "cpu" else \
            self.block_table.to(device)
        self._dirty_rows: Set[int] = set()

    def _touch(self, row: int) -> None:
        if self.device_block_table is not self.block_table:
            self._dirty_rows.add(row)

    def sync_block_table(self) -> None:
        """Copies the host rows changed since the last call to the device table."""
        if not self._dirty_rows:
            return
        rows = torch.tensor(sorted(self._dirty_rows), dtype=torch.int64)
        self._dirty_rows.clear()
        device = self.device_block_table.device
        staged = self.block_table.index_select(0, rows).pin_memory()
        self.device_block_table.index_copy_(0, rows.pin_memory().to(device, non_blocking=True),
                                            staged.to(device, non_blocking=True))

    def copy_blocks(self, block_mapping: torch.Tensor) -> None:
        """Copies blocks ``block_mapping[:, 0]`` to ``block_mapping[:, 1]`` (int64
        host pairs) in every layer."""
        if block_mapping.numel():
            if self.copy_log is not None:
                self.copy_log.append(block_mapping)
            self._copy(block_mapping)

    @abstractmethod
    def _copy(self, block_mapping: torch.Tensor) -> None:
        """The device copy of :meth:`copy_blocks` (at least one pair)."""

    def bind(self, layers: List[PagedAttention]) -> None:
        """Hands each attention layer its cache views."""
        if len(layers) != len(self.key_caches):
            raise ValueError(f"the model has {len(layers)} attention layers but the cache was "
                             f"built for {len(self.key_caches)}")
        for layer, k, v in zip(layers, self.key_caches, self.value_caches):
            layer.bind_kv_cache(k, v)

    @property
    def reserved_bytes(self) -> int:
        """Bytes the K/V tensors take."""
        k = self.key_caches[0]
        return 2 * len(self.key_caches) * self.num_blocks * self.block_size * k[0, 0].numel() \
            * k.element_size()

    # -- sequences --------------------------------------------------------------------
    @abstractmethod
    def can_add(self, seq) -> bool:
        """Whether ``seq`` (with all its tokens) can be added now."""

    @abstractmethod
    def add(self, seq, reuse_prefix: bool = True) -> int:
        """Gives ``seq`` slots for all its tokens; returns how many leading ones
        already hold their K/V (prefix cache), to skip computing: none unless
        ``reuse_prefix``."""

    @abstractmethod
    def can_append(self, seq) -> bool:
        """Whether ``seq`` can get a slot for one more token."""

    @abstractmethod
    def append(self, seq) -> None:
        """A slot for the last token of ``seq`` (copying a shared block first)."""

    def append_decodes(self, seqs, token_ids: Optional[List[int]]) -> torch.Tensor:
        """A slot each for one more token of every sequence of ``seqs`` (one
        decode step), all or nothing: ``MemoryError`` if they do not all fit.
        ``token_ids`` are those tokens' ids, None while they are still on the
        GPU. Returns the int64 host slots, in ``seqs`` order."""
        if not all(self.can_append(s) for s in seqs):
            raise MemoryError("the KV cache cannot give every sequence of the decode step a slot")
        for s in seqs:
            self.append(s)
        return torch.cat([self.slot_mapping(s, s.num_slots - 1, 1) for s in seqs])

    @abstractmethod
    def fork(self, parent, child) -> None:
        """``child`` gets ``parent``'s K/V (shared where the layout allows)."""

    @abstractmethod
    def free(self, seq) -> None:
        """Releases every slot of ``seq``."""

    def mark_written(self, seq, start: int, num_tokens: int) -> None:
        """Positions ``start .. start + num_tokens - 1`` of ``seq`` now hold K/V."""

    @abstractmethod
    def row_of(self, seq) -> int:
        """The row of ``block_table`` that holds ``seq``."""

    @abstractmethod
    def slot_mapping(self, seq, start: int, num_tokens: int) -> torch.Tensor:
        """int64 slots of positions ``start .. start + num_tokens - 1``."""

    # -- statistics -------------------------------------------------------------------
    @property
    @abstractmethod
    def num_used_blocks(self) -> int:
        """Blocks that hold some sequence's tokens (reserved, from the pool's view)."""

    def num_logical_blocks(self, seqs) -> int:
        """Blocks ``seqs`` would use if none were shared."""
        return sum(-(-s.num_slots // self.block_size) for s in seqs)

    def num_unused_slots(self, seqs) -> int:
        """Slots reserved for ``seqs`` that hold no token: the rest of each last block."""
        return sum(-s.num_slots % self.block_size for s in seqs)

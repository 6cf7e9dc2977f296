"""BlockTables: which physical blocks hold each sequence's tokens.

The bookkeeping runs in C++ (``_C.BlockTables``): block tables, lengths, known
token ids, copy-on-write decisions and prefix-cache registration. This wrapper
maps sequence ids to rows of the int32 ``block_table`` and names arguments in
its errors. It moves no KV data: calls that need blocks copied return a
``block_mapping`` (int64 ``[num_pairs, 2]`` of ``(src, dst)``) for
``copy_blocks``, to run before anything is written.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Hashable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .. import _C
from ..block_manager import BlockManager
from ..checks import non_negative, positive

# A sequence of ints or a 1-D integer tensor (checked in C++, errors naming it).
TokenIds = Optional[Union[Sequence[int], torch.Tensor]]


def _locked(method):
    """Runs ``method`` under the tables' lock: the row map and the C++ tables
    change together, whichever threads call."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class BlockTables(Mapping):
    """The block table of every live sequence: ``tables[seq_id]`` is its list of
    block ids, token ``p`` living in block ``tables[seq_id][p // block_size]``.

    Blocks come from ``block_manager``. Sequences share blocks after ``fork``
    and through the prefix cache (``add_sequence`` with ``token_ids``); a
    sequence writes a block in place only if it holds the block alone and the
    block is no cache entry, otherwise the block is copied first. Each
    sequence has a row of ``block_table`` (int32 ``[num_sequences,
    max_blocks_per_seq]``) and ``context_lens`` (int32), host tensors updated in
    place; they mirror the C++ state, so writing into them changes nothing.
    Every call is all or nothing: ``MemoryError`` when blocks or rows run out,
    ``ValueError`` / ``KeyError`` / ``TypeError`` for bad arguments. Thread-safe
    like ``BlockManager``: each call runs under one lock. The blocks it holds
    for its sequences cannot be released with ``block_manager.free``.
    """

    def __init__(self, block_manager: BlockManager, num_sequences: int,
                 max_blocks_per_seq: int, block_size: int):
        if not isinstance(block_manager, BlockManager):
            raise TypeError(f"block_manager must be a BlockManager, got "
                            f"{type(block_manager).__name__}")
        self.block_manager = block_manager
        self.block_size = positive("block_size", block_size)
        self.cpp_tables = _C.BlockTables(block_manager.cpp_manager,
                                         positive("num_sequences", num_sequences),
                                         positive("max_blocks_per_seq", max_blocks_per_seq),
                                         block_size)
        self.block_table: torch.Tensor = self.cpp_tables.block_table
        self.context_lens: torch.Tensor = self.cpp_tables.context_lens
        self._rows: dict = {}
        self._lock = threading.RLock()

    # -- Mapping[seq_id, List[int]] ---------------------------------------------------
    @_locked
    def __getitem__(self, seq_id: Hashable) -> List[int]:
        return self.cpp_tables.blocks(self.row_of(seq_id))

    @_locked
    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._rows

    def row_of(self, seq_id: Hashable) -> int:
        """Row of ``block_table`` and ``context_lens`` that holds ``seq_id``."""
        try:
            return self._rows[seq_id]
        except KeyError:
            raise KeyError(f"unknown seq_id {seq_id!r}") from None

    @_locked
    def seq_len(self, seq_id: Hashable) -> int:
        return self.cpp_tables.seq_len(self.row_of(seq_id))

    def _check_new(self, seq_id: Hashable) -> None:
        if seq_id in self._rows:
            raise ValueError(f"seq_id {seq_id!r} is already present")

    # -- growing and sharing ------------------------------------------------------------
    @_locked
    def add_sequence(self, seq_id: Hashable, seq_len: int, token_ids: TokenIds = None) -> int:
        """Registers ``seq_id`` with room for ``seq_len`` tokens in the lowest free
        row. Given its ``token_ids``, the leading full blocks already in the prefix
        cache are reused; returns how many leading tokens are cached (a multiple
        of ``block_size``, at most ``seq_len - 1``: the last token is always
        recomputed), 0 without ``token_ids``."""
        self._check_new(seq_id)
        row, num_cached = self.cpp_tables.add(non_negative("seq_len", seq_len), token_ids)
        self._rows[seq_id] = row
        return num_cached

    @_locked
    def fork(self, parent_seq_id: Hashable, child_seq_id: Hashable) -> None:
        """``child_seq_id`` shares every block of ``parent_seq_id``: ref counts go
        up, nothing is copied or allocated."""
        parent_row = self.row_of(parent_seq_id)
        self._check_new(child_seq_id)
        self._rows[child_seq_id] = self.cpp_tables.fork(parent_row)

    @_locked
    def append_slots(self, seq_id: Hashable, num_tokens: int = 1,
                     token_ids: TokenIds = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Grows ``seq_id`` by ``num_tokens`` (with their ``token_ids``, if known).
        Returns the int64 slots of the new positions and the ``block_mapping``
        of the copy-on-write copy of a shared last block."""
        return self.cpp_tables.append(self.row_of(seq_id), non_negative("num_tokens", num_tokens),
                                      token_ids)

    @_locked
    def decode_step(self, seq_ids: Optional[Sequence[Hashable]] = None,
                    token_ids: TokenIds = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advances every sequence of ``seq_ids`` by one token, or every live
        sequence when it is None. The tokens they already hold count as written
        (a decode step follows the forward pass that wrote them), so full blocks
        among them become prefix-cache entries.

        ``token_ids`` are the ids of the new tokens, in ``seq_ids`` order (row
        order without ``seq_ids``). Returns ``(slot_mapping, changed_rows,
        block_mapping)``: int64 slots in ``seq_ids`` order, or one per row of
        ``block_table`` with -1 for free rows; the rows whose ``block_table``
        entries changed; the copy-on-write copies to make.
        """
        rows = None
        if seq_ids is not None:
            try:
                rows = list(map(self._rows.__getitem__, seq_ids))
            except KeyError as e:
                raise KeyError(f"unknown seq_id {e.args[0]!r}") from None
        return self.cpp_tables.decode_step(rows, token_ids)

    @_locked
    def free_sequence(self, seq_id: Hashable) -> None:
        """Releases the sequence's blocks, last block first, and its row."""
        self.cpp_tables.free(self.row_of(seq_id))
        del self._rows[seq_id]

    # -- writing ------------------------------------------------------------------------
    @_locked
    def make_writable(self, seq_id: Hashable, start: int, num_tokens: int) -> torch.Tensor:
        """Gives ``seq_id`` its own copy of every block holding positions
        ``start .. start + num_tokens - 1`` that it may not write in place;
        returns the ``block_mapping`` of those copies."""
        return self.cpp_tables.make_writable(self.row_of(seq_id), non_negative("start", start),
                                             non_negative("num_tokens", num_tokens))

    @_locked
    def mark_written(self, seq_id: Hashable, start: int, num_tokens: int) -> None:
        """Records that positions ``start .. start + num_tokens - 1`` now hold
        their K/V. A full block whose token ids are known becomes a prefix-cache
        entry once every position up to its end has been written."""
        self.cpp_tables.mark_written(self.row_of(seq_id), non_negative("start", start),
                                     non_negative("num_tokens", num_tokens))

    @_locked
    def slot_mapping(self, seq_id: Hashable, start: int, num_tokens: int) -> torch.Tensor:
        """int64 slots (``block * block_size + offset``) of positions
        ``start .. start + num_tokens - 1`` of ``seq_id``."""
        return self.cpp_tables.slot_mapping(self.row_of(seq_id), non_negative("start", start),
                                            non_negative("num_tokens", num_tokens))

    # -- scheduling -----------------------------------------------------------------------
    @_locked
    def can_allocate(self, seq_id: Optional[Hashable] = None,
                     num_tokens: Optional[int] = None) -> bool:
        """Whether ``seq_id`` can grow by ``num_tokens`` (default 1, counting a
        copy-on-write copy), or, without ``seq_id``, whether a new sequence of
        ``num_tokens`` tokens fits (counting no prefix-cache hit)."""
        if seq_id is None:
            if num_tokens is None:
                raise TypeError("can_allocate needs a seq_id or num_tokens")
            return self.cpp_tables.can_add(non_negative("num_tokens", num_tokens))
        n = 1 if num_tokens is None else non_negative("num_tokens", num_tokens)
        return self.cpp_tables.can_append(self.row_of(seq_id), n)

    def __repr__(self) -> str:
        return (f"BlockTables(sequences={len(self)}/{self.block_table.size(0)}, "
                f"block_size={self.block_size}, {self.block_manager!r})")

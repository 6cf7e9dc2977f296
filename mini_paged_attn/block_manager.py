"""Typed Python face of the C++ ``BlockManager`` (``mini_paged_attn._C``)."""
from __future__ import annotations

from typing import Iterable, List

from . import _C


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


class BlockManager:
    """Hands out physical KV-cache blocks and counts their references.

    A block is free (ref count 0) or held by one or more block tables; sharing a
    block (``increase_ref_count``) is how forks avoid copying. Every method is
    thread-safe (one mutex in C++). Failed calls change nothing.
    """

    def __init__(self, num_blocks: int):
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks <= 0:
            raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        self.cpp_manager = _C.BlockManager(num_blocks)

    def allocate(self) -> int:
        """Takes a free block (ref count 1). ``MemoryError`` when none is free."""
        return self.cpp_manager.allocate()

    def allocate_blocks(self, n: int) -> List[int]:
        """Takes ``n`` free blocks, or none (``MemoryError``) if fewer are free."""
        return self.cpp_manager.allocate_blocks(_check_int("n", n))

    def free(self, block_idx: int) -> None:
        """Drops one reference; the block is free again when none remain."""
        self.cpp_manager.free(_check_int("block_idx", block_idx))

    def free_blocks(self, block_ids: Iterable[int]) -> None:
        """Drops one reference per listed id, all or nothing."""
        self.cpp_manager.free_blocks([_check_int("block_ids[i]", b) for b in block_ids])

    def increase_ref_count(self, block_idx: int) -> None:
        """Adds a reference to an allocated block (``RuntimeError`` if it is free)."""
        self.cpp_manager.increase_ref_count(_check_int("block_idx", block_idx))

    def get_ref_count(self, block_idx: int) -> int:
        return self.cpp_manager.get_ref_count(_check_int("block_idx", block_idx))

    @property
    def num_free_blocks(self) -> int:
        return self.cpp_manager.get_num_free_blocks()

    @property
    def num_blocks(self) -> int:
        return self.cpp_manager.num_blocks

    def __repr__(self) -> str:
        return (f"BlockManager(num_blocks={self.num_blocks}, "
                f"num_free_blocks={self.num_free_blocks})")

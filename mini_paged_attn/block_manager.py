"""Typed Python face of the C++ ``BlockManager`` (``mini_paged_attn._C``)."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from . import _C
from .checks import check_int, positive

#: Parent hash of a sequence's first block in the chained prefix-cache keys.
ROOT_BLOCK_HASH: int = _C.ROOT_BLOCK_HASH


def _check_hash(name: str, value: object) -> int:
    if not 0 <= check_int(name, value) < 1 << 64:
        raise ValueError(f"{name} must be a 64-bit unsigned hash, got {value!r}")
    return value


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """Prefix-cache key of a full block: a 64-bit hash of the parent block's key
    (``ROOT_BLOCK_HASH`` for the first block) and the block's token ids, the
    same in every run and on every machine."""
    return _C.hash_block(_check_hash("parent_hash", parent_hash),
                         [check_int("token_ids[i]", t) for t in token_ids])


class BlockManager:
    """Hands out physical KV-cache blocks, counts their references and keeps a
    prefix cache of their contents.

    A block is free, evictable or used, never two at once. Used blocks have a
    ref count of 1 or more; sharing a block (``increase_ref_count``) is how
    forks avoid copying. A used block whose content is known can be registered
    under a content hash (``register_hash``, keys from ``hash_block``); when
    its last reference goes it becomes evictable instead of free, keeping its
    data until ``lookup`` revives it or allocation needs the block (free blocks
    go first, then the least recently freed evictable one). Every method is
    thread-safe (one mutex in C++). Failed calls change nothing.
    """

    def __init__(self, num_blocks: int):
        self.cpp_manager = _C.BlockManager(positive("num_blocks", num_blocks))

    def allocate(self) -> int:
        """Takes a block (ref count 1). ``MemoryError`` when none is free or evictable."""
        return self.cpp_manager.allocate()

    def allocate_blocks(self, n: int) -> List[int]:
        """Takes ``n`` blocks, or none (``MemoryError``) if fewer can be had."""
        return self.cpp_manager.allocate_blocks(check_int("n", n))

    def allocate_with_prefix(self, n: int, block_hashes: Sequence[int]) -> Tuple[List[int], int]:
        """Takes ``n`` blocks whose first ones are the cached blocks of the
        leading ``block_hashes`` (up to the first miss), all or nothing.
        Returns the blocks and how many of them came from the cache."""
        return self.cpp_manager.allocate_with_prefix(
            check_int("n", n), [_check_hash("block_hashes[i]", h) for h in block_hashes])

    def free(self, block_idx: int) -> None:
        """Drops one reference; with none left the block is free again, or
        evictable if it is registered."""
        self.cpp_manager.free(check_int("block_idx", block_idx))

    def free_blocks(self, block_ids: Iterable[int]) -> None:
        """Drops one reference per listed id, in order, all or nothing."""
        self.cpp_manager.free_blocks([check_int("block_ids[i]", b) for b in block_ids])

    def increase_ref_count(self, block_idx: int) -> None:
        """Adds a reference to a used block (``RuntimeError`` if it has none:
        an evictable block is revived with ``lookup``)."""
        self.cpp_manager.increase_ref_count(check_int("block_idx", block_idx))

    def register_hash(self, block_idx: int, block_hash: int) -> bool:
        """Makes a used block the cache entry of ``block_hash``. A hash has one
        block and a block one hash: returns False, changing nothing, if either
        is already taken by another."""
        return self.cpp_manager.register_hash(check_int("block_idx", block_idx),
                                              _check_hash("block_hash", block_hash))

    def lookup(self, block_hash: int) -> Optional[int]:
        """The block cached under ``block_hash`` with one more reference (an
        evictable one is revived), or None on a miss."""
        return self.cpp_manager.lookup(_check_hash("block_hash", block_hash))

    def get_block_hash(self, block_idx: int) -> Optional[int]:
        return self.cpp_manager.get_block_hash(check_int("block_idx", block_idx))

    def get_ref_count(self, block_idx: int) -> int:
        return self.cpp_manager.get_ref_count(check_int("block_idx", block_idx))

    def evictable_blocks(self) -> List[int]:
        """Evictable blocks, the next one to be evicted first."""
        return self.cpp_manager.get_evictable_blocks()

    @property
    def num_free_blocks(self) -> int:
        """Blocks that allocation can hand out: free plus evictable."""
        return self.cpp_manager.get_num_free_blocks()

    @property
    def num_evictable_blocks(self) -> int:
        return self.cpp_manager.get_num_evictable_blocks()

    @property
    def prefix_cache_stats(self) -> "_C.PrefixCacheStats":
        """Counters in blocks: ``hits``, ``misses`` and ``evictions``."""
        return self.cpp_manager.get_prefix_cache_stats()

    @property
    def num_blocks(self) -> int:
        return self.cpp_manager.num_blocks

    def __repr__(self) -> str:
        return (f"BlockManager(num_blocks={self.num_blocks}, "
                f"num_free_blocks={self.num_free_blocks}, "
                f"num_evictable_blocks={self.num_evictable_blocks})")

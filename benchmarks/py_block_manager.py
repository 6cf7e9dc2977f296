"""Pure-Python block manager, nano-vllm style: ref counts, a LIFO free list,
an LRU list of evictable prefix-cache blocks and chained blake2b block hashes
(another function than the C++ one; only equality matters). The same policy as
the C++ BlockManager, so both hand out the same block ids. Used by
py_block_tables.py.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from hashlib import blake2b
from typing import Dict, List, Optional, Sequence

ROOT_HASH = 0


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    data = parent_hash.to_bytes(8, "little") + array("q", token_ids).tobytes()
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


class PyBlockManager:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_count = [0] * num_blocks
        self.free_list = list(range(num_blocks - 1, -1, -1))
        self.block_hash: List[Optional[int]] = [None] * num_blocks
        self.hash_to_block: Dict[int, int] = {}
        self.evictable: "OrderedDict[int, None]" = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_list) + len(self.evictable)

    def take(self) -> int:
        if self.free_list:
            b = self.free_list.pop()
        else:
            b, _ = self.evictable.popitem(last=False)
            del self.hash_to_block[self.block_hash[b]]
            self.block_hash[b] = None
            self.evictions += 1
        self.ref_count[b] = 1
        return b

    def release(self, b: int) -> None:
        self.ref_count[b] -= 1
        if self.ref_count[b] == 0:
            if self.block_hash[b] is None:
                self.free_list.append(b)
            else:
                self.evictable[b] = None

    def writable(self, b: int) -> bool:
        return self.ref_count[b] == 1 and self.block_hash[b] is None

    def lookup(self, h: int) -> Optional[int]:
        b = self.hash_to_block.get(h)
        if b is None:
            self.misses += 1
            return None
        if self.ref_count[b] == 0:
            del self.evictable[b]
        self.ref_count[b] += 1
        self.hits += 1
        return b

    def register(self, b: int, h: int) -> None:
        if self.block_hash[b] is None and h not in self.hash_to_block:
            self.block_hash[b] = h
            self.hash_to_block[h] = b

    def allocate_with_prefix(self, n: int, hashes: List[int]):
        cached = []
        for h in hashes:
            b = self.hash_to_block.get(h)
            if b is None:
                break
            cached.append(b)
        revived = len({b for b in cached if self.ref_count[b] == 0})
        if n - len(cached) > self.num_free_blocks - revived:
            raise MemoryError(f"requested {n - len(cached)} blocks")
        for b in cached:
            if self.ref_count[b] == 0:
                del self.evictable[b]
            self.ref_count[b] += 1
        self.hits += len(cached)
        self.misses += len(hashes) - len(cached)
        return cached + [self.take() for _ in range(n - len(cached))], len(cached)

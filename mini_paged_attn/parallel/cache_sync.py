"""CacheSync: keeps the workers' KV caches laid out as the driver's.

Every rank holds the K/V of its own heads in a cache of the same blocks; only
the driver's holds the bookkeeping (the scheduler allocates there). What a
worker must repeat is what the driver does to its device state outside the
model: block copies (copy-on-write, forks of a slotted cache) and the rows of
the block table that changed. Both ride on the next step's message, which is
early enough: nothing reads the cache between scheduling and the forward pass.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..cache.kv_cache import KVCache

# (changed block-table rows, their contents, block copies as [n, 2] pairs or None)
CacheChanges = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]


class CacheSync:
    """Driver side: the changes since the last :meth:`take`."""

    def __init__(self, kv_cache: KVCache):
        self.kv_cache = kv_cache
        # The table as the workers have it: both start from the same empty cache.
        self.sent = kv_cache.block_table.clone()
        kv_cache.copy_log = []

    def take(self) -> CacheChanges:
        table = self.kv_cache.block_table
        rows = (table != self.sent).any(dim=1).nonzero().flatten()
        contents = table.index_select(0, rows)
        self.sent.index_copy_(0, rows, contents)
        log = self.kv_cache.copy_log
        copies = torch.cat(log).numpy() if log else None
        log.clear()
        return rows.numpy(), contents.numpy(), copies


def apply_changes(kv_cache: KVCache, changes: CacheChanges) -> None:
    """Worker side: repeats the driver's changes on this rank's cache."""
    rows, contents, copies = changes
    if copies is not None:
        kv_cache.copy_blocks(torch.from_numpy(copies))
    if len(rows):
        kv_cache.block_table[torch.from_numpy(rows)] = torch.from_numpy(contents)
        for row in rows.tolist():
            kv_cache._touch(row)
        kv_cache.sync_block_table()

"""Pure-Python block tables, nano-vllm style: the baseline of
bench_block_manager.py and the model that tests/cache/test_block_sharing_properties.py
checks the C++ ``BlockTables`` against, step by step.

Same semantics and the same policy as the C++ code, so both hand out the same
block ids: sequences take the lowest free row, a block is written in place
only if one sequence holds it and it is not a prefix-cache entry, blocks come
from py_block_manager.PyBlockManager.
"""
from __future__ import annotations

import heapq
from typing import Dict, List, Optional

import torch

from py_block_manager import ROOT_HASH, PyBlockManager, hash_block


class _Seq:
    __slots__ = ("row", "blocks", "len", "token_ids", "num_written", "num_hashed", "last_hash")

    def __init__(self, row, blocks, length, token_ids, num_written, num_hashed, last_hash):
        self.row, self.blocks, self.len, self.token_ids = row, blocks, length, token_ids
        self.num_written, self.num_hashed, self.last_hash = num_written, num_hashed, last_hash

    def copy(self, row: int) -> "_Seq":
        return _Seq(row, list(self.blocks), self.len, list(self.token_ids), self.num_written,
                    self.num_hashed, self.last_hash)


class PyBlockTables:
    """The Python API of ``mini_paged_attn.BlockTables``, in pure Python."""

    def __init__(self, block_manager: PyBlockManager, num_sequences: int,
                 max_blocks_per_seq: int, block_size: int):
        self.bm = block_manager
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.seqs: Dict[object, _Seq] = {}
        self.by_row: List[Optional[_Seq]] = [None] * num_sequences
        self.free_rows = list(range(num_sequences))
        self.block_table = torch.zeros(num_sequences, max_blocks_per_seq, dtype=torch.int32)
        self.context_lens = torch.zeros(num_sequences, dtype=torch.int32)

    def __getitem__(self, seq_id) -> List[int]:
        return list(self.seqs[seq_id].blocks)

    def _nblocks(self, n: int) -> int:
        return -(-n // self.block_size)

    def _check_fits(self, n: int) -> None:
        if self._nblocks(n) > self.max_blocks_per_seq:
            raise ValueError(f"{n} tokens need more than max_blocks_per_seq")

    def _take_row(self, seq: _Seq, seq_id) -> None:
        self.seqs[seq_id] = self.by_row[seq.row] = seq
        self.block_table[seq.row, :len(seq.blocks)] = torch.tensor(seq.blocks, dtype=torch.int32)
        self.context_lens[seq.row] = seq.len

    def add_sequence(self, seq_id, seq_len: int, token_ids=None) -> int:
        self._check_fits(seq_len)
        if not self.free_rows:
            raise MemoryError("all rows are in use")
        hashes, h, bs = [], ROOT_HASH, self.block_size
        if token_ids is not None:
            for i in range(max(seq_len - 1, 0) // bs):
                h = hash_block(h, token_ids[i * bs:(i + 1) * bs])
                hashes.append(h)
        blocks, k = self.bm.allocate_with_prefix(self._nblocks(seq_len), hashes)
        seq = _Seq(heapq.heappop(self.free_rows), blocks, seq_len,
                   [] if token_ids is None else list(token_ids), k * bs, k,
                   hashes[k - 1] if k else ROOT_HASH)
        self._take_row(seq, seq_id)
        return k * bs

    def fork(self, parent_seq_id, child_seq_id) -> None:
        parent = self.seqs[parent_seq_id]
        if not self.free_rows:
            raise MemoryError("all rows are in use")
        child = parent.copy(heapq.heappop(self.free_rows))
        for b in child.blocks:
            self.bm.ref_count[b] += 1
        self._take_row(child, child_seq_id)

    def free_sequence(self, seq_id) -> None:
        seq = self.seqs.pop(seq_id)
        for b in reversed(seq.blocks):
            self.bm.release(b)
        self.by_row[seq.row] = None
        self.block_table[seq.row] = 0
        self.context_lens[seq.row] = 0
        heapq.heappush(self.free_rows, seq.row)

    def _copy_on_write(self, seq: _Seq, i: int, copies: List[List[int]]) -> None:
        src, dst = seq.blocks[i], self.bm.take()
        self.bm.release(src)
        seq.blocks[i] = dst
        copies.append([src, dst])

    def _grow(self, seq: _Seq, n: int, token_ids, copies) -> bool:
        changed = False
        if n and seq.len % self.block_size and not self.bm.writable(seq.blocks[-1]):
            self._copy_on_write(seq, len(seq.blocks) - 1, copies)
            changed = True
        for _ in range(self._nblocks(seq.len + n) - len(seq.blocks)):
            seq.blocks.append(self.bm.take())
            changed = True
        if token_ids is not None and len(seq.token_ids) == seq.len:
            seq.token_ids.extend(token_ids)
        seq.len += n
        return changed

    def _slot(self, seq: _Seq, pos: int) -> int:
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    def append_slots(self, seq_id, num_tokens: int = 1, token_ids=None):
        seq = self.seqs[seq_id]
        self._check_fits(seq.len + num_tokens)
        bs, start = self.block_size, seq.len
        need = self._nblocks(start + num_tokens) - len(seq.blocks)
        need += bool(num_tokens and start % bs and not self.bm.writable(seq.blocks[-1]))
        if need > self.bm.num_free_blocks:
            raise MemoryError(f"appending needs {need} blocks")
        copies: List[List[int]] = []
        self._grow(seq, num_tokens, token_ids, copies)
        self._take_row(seq, seq_id)
        return self.slot_mapping(seq_id, start, num_tokens), _mapping(copies)

    def decode_step(self, seq_ids=None, token_ids=None):
        seqs = ([s for s in self.by_row if s is not None] if seq_ids is None
                else [self.seqs[s] for s in seq_ids])
        bm, bs = self.bm, self.block_size
        need, drops = 0, {}
        for seq in seqs:
            self._check_fits(seq.len + 1)
            if seq.len % bs == 0:
                need += 1
                continue
            b = seq.blocks[-1]
            if bm.ref_count[b] - drops.get(b, 0) > 1 or bm.block_hash[b] is not None:
                need += 1
                drops[b] = drops.get(b, 0) + 1
        if need > bm.num_free_blocks:
            raise MemoryError(f"the decode step needs {need} blocks")
        slots = [-1] * len(self.by_row) if seq_ids is None else [0] * len(seqs)
        changed, copies, cols, blocks = [], [], [], []
        for i, seq in enumerate(seqs):
            out = seq.row if seq_ids is None else i
            seq.num_written = seq.len
            self._register(seq)
            pos = seq.len
            if self._grow(seq, 1, None if token_ids is None else (token_ids[out],), copies):
                changed.append(seq.row)
                cols.append(pos // bs)
                blocks.append(seq.blocks[pos // bs])
            slots[out] = self._slot(seq, pos)
        if blocks:
            self.block_table[changed, cols] = torch.tensor(blocks, dtype=torch.int32)
        rows = [seq.row for seq in seqs]
        self.context_lens[rows] = torch.tensor([seq.len for seq in seqs], dtype=torch.int32)
        return (torch.tensor(slots, dtype=torch.int64), torch.tensor(changed, dtype=torch.int64),
                _mapping(copies))

    def make_writable(self, seq_id, start: int, num_tokens: int):
        seq = self.seqs[seq_id]
        span = range(start // self.block_size, (start + num_tokens - 1) // self.block_size + 1)
        todo = [i for i in span if num_tokens and not self.bm.writable(seq.blocks[i])]
        if len(todo) > self.bm.num_free_blocks:
            raise MemoryError(f"copy-on-write needs {len(todo)} blocks")
        copies: List[List[int]] = []
        for i in todo:
            self._copy_on_write(seq, i, copies)
        self._take_row(seq, seq_id)
        return _mapping(copies)

    def mark_written(self, seq_id, start: int, num_tokens: int) -> None:
        seq = self.seqs[seq_id]
        if start <= seq.num_written:
            seq.num_written = max(seq.num_written, start + num_tokens)
            self._register(seq)

    def _register(self, seq: _Seq) -> None:
        bs = self.block_size
        full = min(seq.num_written, len(seq.token_ids)) // bs
        while seq.num_hashed < full:
            i = seq.num_hashed
            seq.last_hash = hash_block(seq.last_hash, seq.token_ids[i * bs:(i + 1) * bs])
            self.bm.register(seq.blocks[i], seq.last_hash)
            seq.num_hashed += 1

    def slot_mapping(self, seq_id, start: int, num_tokens: int) -> torch.Tensor:
        seq = self.seqs[seq_id]
        return torch.tensor([self._slot(seq, p) for p in range(start, start + num_tokens)],
                            dtype=torch.int64)

    def seq_len(self, seq_id) -> int:
        return self.seqs[seq_id].len


def _mapping(copies: List[List[int]]) -> torch.Tensor:
    return torch.tensor(copies, dtype=torch.int64).reshape(-1, 2)

"""Property tests of block sharing: random interleavings of add / append / fork
/ decode / write / free / lookup over many sequences, run on a
PagedAttentionManager (C++ block tables) and on the pure-Python reference of
benchmarks/py_block_tables.py and py_block_manager.py, checked after every step.

K/V values stand for what a model would compute: at a position whose token
ids are known, a function of the token prefix (so a prefix-cache hit must
serve exactly those values); elsewhere a fresh value per write.
"""
import collections
import os
import sys

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mini_paged_attn.block_manager import ROOT_BLOCK_HASH, hash_block
from mini_paged_attn.manager import PagedAttentionManager
from mini_paged_attn.ops import reshape_and_cache

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from py_block_manager import ROOT_HASH, PyBlockManager  # noqa: E402
from py_block_manager import hash_block as py_hash_block  # noqa: E402
from py_block_tables import PyBlockTables  # noqa: E402

BLOCK_SIZE, NUM_BLOCKS, NUM_ROWS, MAX_BLOCKS = 4, 20, 6, 5
# Prompts sharing prefixes of 1, 2 and 0 blocks with the first one.
PROMPTS = [list(range(1, 17)), list(range(1, 9)) + [9] * 8, list(range(1, 5)) + [7] * 12,
           [3] * 16]
TOKEN = st.integers(1, 9)


def prefix_value(tokens) -> float:
    return float(hash_block(ROOT_BLOCK_HASH, tokens) % 100_003 + 1)


def outcome(fn, *args):
    """The call's result, or the class of the error it raised."""
    try:
        return fn(*args)
    except (MemoryError, ValueError) as e:
        return MemoryError if isinstance(e, MemoryError) else ValueError


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a.cpu(), b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return all(same(x, y) for x, y in zip(a, b))
    return a == b


class BlockSharing(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = PagedAttentionManager(NUM_ROWS, 1, 2, BLOCK_SIZE, NUM_BLOCKS,
                                       dtype=torch.float32, max_blocks_per_seq=MAX_BLOCKS)
        self.ref = PyBlockTables(PyBlockManager(NUM_BLOCKS), NUM_ROWS, MAX_BLOCKS, BLOCK_SIZE)
        self.expected = {}   # seq_id -> K/V value of each position, None if unwritten
        self.tokens = {}     # seq_id -> token ids of its leading positions
        self.external = []   # blocks held through BlockManager.lookup
        self.next_id = self.fresh = 0

    def _value(self, seq_id, pos) -> float:
        if pos < len(self.tokens[seq_id]):
            return prefix_value(self.tokens[seq_id][:pos + 1])
        self.fresh += 1
        return -float(self.fresh)

    def _grow_model(self, seq_id, n, token_ids) -> None:
        if token_ids is not None and len(self.tokens[seq_id]) == len(self.expected[seq_id]):
            self.tokens[seq_id] += list(token_ids)
        self.expected[seq_id] += [None] * n

    def _write(self, seq_id, start, n) -> bool:
        vals = [self._value(seq_id, p) for p in range(start, start + n)]
        kv = torch.tensor(vals).view(n, 1, 1).repeat(1, 1, 2)
        try:
            self.m.write_kv(seq_id, kv, -kv, start)
        except MemoryError:
            assert outcome(self.ref.make_writable, seq_id, start, n) is MemoryError
            return False
        self.ref.make_writable(seq_id, start, n)
        self.ref.mark_written(seq_id, start, n)
        self.expected[seq_id][start:start + n] = vals
        return True

    def _pick(self, data):
        return data.draw(st.sampled_from(sorted(self.expected)))

    # -- rules ----------------------------------------------------------------------
    @rule(prompt=st.sampled_from(PROMPTS), n=st.integers(0, 14), with_ids=st.booleans(),
          write=st.booleans())
    def add(self, prompt, n, with_ids, write):
        seq_id, self.next_id = self.next_id, self.next_id + 1
        ids = prompt[:n] if with_ids else None
        got = outcome(self.m.add_sequence, seq_id, n, ids)
        assert same(got, outcome(self.ref.add_sequence, seq_id, n, ids))
        if got in (MemoryError, ValueError):
            return
        assert got % BLOCK_SIZE == 0 and got <= max(n - 1, 0)
        self.tokens[seq_id] = list(ids or [])
        self.expected[seq_id] = [prefix_value(ids[:p + 1]) for p in range(got)]
        self.expected[seq_id] += [None] * (n - got)
        if write:
            self._write(seq_id, got, n - got)

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def fork(self, data):
        parent = self._pick(data)
        child, self.next_id = self.next_id, self.next_id + 1
        got = outcome(self.m.fork, parent, child)
        assert same(got, outcome(self.ref.fork, parent, child))
        if got is None:
            self.expected[child] = list(self.expected[parent])
            self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), n=st.integers(0, 5), with_ids=st.booleans(), write=st.booleans())
    def append(self, data, n, with_ids, write):
        seq_id = self._pick(data)
        ids = data.draw(st.lists(TOKEN, min_size=n, max_size=n)) if with_ids else None
        start = len(self.expected[seq_id])
        got = outcome(self.m.append_slots, seq_id, n, ids)
        want = outcome(self.ref.append_slots, seq_id, n, ids)
        assert same(got, want if isinstance(want, type) else want[0])
        if isinstance(got, torch.Tensor):
            self._grow_model(seq_id, n, ids)
            if write:
                self._write(seq_id, start, n)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), every_row=st.booleans())
    def decode(self, data, every_row):
        seq_ids = (None if every_row else
                   data.draw(st.lists(st.sampled_from(sorted(self.expected)), unique=True)))
        batch = sorted(self.expected, key=self.m.row_of) if every_row else seq_ids
        # A decode step follows the forward pass that wrote every earlier token.
        for s in batch:
            for p, v in enumerate(self.expected[s]):
                if v is None and not self._write(s, p, 1):
                    return
        ids = data.draw(st.lists(TOKEN, min_size=NUM_ROWS if every_row else len(batch),
                                 max_size=NUM_ROWS if every_row else len(batch)))
        got = outcome(self.m.decode_step, seq_ids, ids)
        want = outcome(self.ref.decode_step, seq_ids, ids)
        assert same(got, want if isinstance(want, type) else want[:2])
        if isinstance(got, type):
            return
        rows = [self.m.row_of(s) for s in batch] if every_row else range(len(batch))
        vals = torch.zeros(len(got[0]))
        for s, i in zip(batch, rows):
            self._grow_model(s, 1, [ids[i]])
            vals[i] = self.expected[s][-1] = self._value(s, len(self.expected[s]) - 1)
        kv = vals.view(-1, 1, 1).repeat(1, 1, 2)
        reshape_and_cache(kv, -kv, self.m.key_cache, self.m.value_cache, got[0])

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def rewrite(self, data):
        seq_id = self._pick(data)
        length = len(self.expected[seq_id])
        start = data.draw(st.integers(0, length))
        self._write(seq_id, start, data.draw(st.integers(0, length - start)))

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def free(self, data):
        seq_id = self._pick(data)
        self.m.free_sequence(seq_id)
        self.ref.free_sequence(seq_id)
        del self.expected[seq_id], self.tokens[seq_id]

    @rule(prompt=st.sampled_from(PROMPTS), num_blocks=st.integers(1, 3))
    def lookup(self, prompt, num_blocks):
        cpp_hash, py_hash = ROOT_BLOCK_HASH, ROOT_HASH
        for i in range(num_blocks):
            block = prompt[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
            cpp_hash, py_hash = hash_block(cpp_hash, block), py_hash_block(py_hash, block)
        got = self.m.block_manager.lookup(cpp_hash)
        assert got == self.ref.bm.lookup(py_hash)
        if got is not None:
            self.external.append(got)

    @precondition(lambda self: self.external)
    @rule(data=st.data())
    def release(self, data):
        block = self.external.pop(data.draw(st.integers(0, len(self.external) - 1)))
        self.m.block_manager.free(block)
        self.ref.bm.release(block)

    # -- checked after every step --------------------------------------------------------
    @invariant()
    def matches_the_reference(self):
        bm, tables = self.m.block_manager, self.m.block_tables
        assert {s: tables[s] for s in tables} == {s: self.ref[s] for s in self.expected}
        assert [bm.get_ref_count(b) for b in range(NUM_BLOCKS)] == self.ref.bm.ref_count
        assert bm.evictable_blocks() == list(self.ref.bm.evictable)
        stats, r = bm.prefix_cache_stats, self.ref.bm
        assert (stats.hits, stats.misses, stats.evictions) == (r.hits, r.misses, r.evictions)
        assert torch.equal(self.m.block_table, self.ref.block_table)
        assert torch.equal(self.m.context_lens, self.ref.context_lens)

    @invariant()
    def every_block_is_in_exactly_one_state(self):
        bm = self.m.block_manager
        holders = collections.Counter(self.external)
        for s in self.m.block_tables:
            holders.update(self.m.block_tables[s])
        refs = [bm.get_ref_count(b) for b in range(NUM_BLOCKS)]
        assert refs == [holders[b] for b in range(NUM_BLOCKS)]
        evictable = bm.evictable_blocks()
        assert len(set(evictable)) == len(evictable) == bm.num_evictable_blocks
        assert all(refs[b] == 0 and bm.get_block_hash(b) is not None for b in evictable)
        free = [b for b in range(NUM_BLOCKS) if refs[b] == 0 and b not in evictable]
        assert all(bm.get_block_hash(b) is None for b in free)
        used = sum(r > 0 for r in refs)
        assert len(free) + len(evictable) + used == NUM_BLOCKS
        assert bm.num_free_blocks == len(free) + len(evictable)

    @invariant()
    def each_sequence_reads_what_was_written_for_it(self):
        for s, values in self.expected.items():
            k, v = self.m.gather_kv(s)
            written = [p for p, x in enumerate(values) if x is not None]
            want = torch.tensor([values[p] for p in written])
            assert torch.equal(k[written, 0, 0], want) and torch.equal(v[written, 0, 1], -want)

    def teardown(self):
        for s in list(self.expected):
            self.m.free_sequence(s)
        self.m.block_manager.free_blocks(self.external)
        bm = self.m.block_manager
        assert bm.num_free_blocks == NUM_BLOCKS
        assert all(bm.get_ref_count(b) == 0 for b in range(NUM_BLOCKS))


BlockSharing.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_block_sharing = BlockSharing.TestCase

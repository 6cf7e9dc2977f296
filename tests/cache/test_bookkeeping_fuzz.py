"""Fuzz test of the public bookkeeping API (BlockManager and BlockTables):
random sequences of calls with random and partly invalid arguments. Every call
either succeeds or raises one of the documented Python exceptions, a failed
call changes nothing, and after every call the accounting holds: no ref count
below zero, free plus used blocks make the pool, and each block's ref count is
the number of table entries that map it plus the references taken through
the manager directly (so no block is handed to two owners unless shared)."""
import collections

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mini_paged_attn.block_manager import BlockManager
from mini_paged_attn.cache.block_tables import BlockTables

NUM_BLOCKS, NUM_ROWS, MAX_BLOCKS, BLOCK_SIZE = 12, 4, 6, 4
EXPECTED = (TypeError, ValueError, IndexError, KeyError, MemoryError, RuntimeError)

# Mostly valid values, sometimes not: one_of picks its branches evenly.
NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
SEQ = st.one_of(NAMES, NAMES, NAMES, st.sampled_from([None, 1.5, ["a"]]))
BLOCK = st.one_of(st.integers(0, NUM_BLOCKS - 1), st.integers(0, NUM_BLOCKS - 1),
                  st.integers(-2, NUM_BLOCKS + 1),
                  st.sampled_from([2**63 - 1, -(2**63), 2**70, "1", 1.0]))
SMALL = st.integers(0, 2 * BLOCK_SIZE + 1)
COUNT = st.one_of(SMALL, SMALL, SMALL, st.integers(-2, 2 * MAX_BLOCKS * BLOCK_SIZE),
                  st.sampled_from([2**31, 2**62, 2**63 - 3, 2**63 - 1, 2**64, -(2**63), "2", 2.0,
                                   None]))
TOKENS = st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=30),
                   st.lists(st.integers(-1, 5), max_size=30), st.just("abc"))


class Bookkeeping(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS)
        self.tables = BlockTables(self.bm, NUM_ROWS, MAX_BLOCKS, BLOCK_SIZE)
        self.direct = collections.Counter()  # references taken through self.bm

    def _state(self):
        t, bm = self.tables, self.bm
        return ({s: (t[s], t.seq_len(s)) for s in t},
                [bm.get_ref_count(b) for b in range(NUM_BLOCKS)], bm.evictable_blocks(),
                bm.num_free_blocks, t.block_table.clone().tolist(), t.context_lens.tolist())

    def _call(self, fn, *args):
        """fn(*args); on an exception, it must be an expected one that changed nothing."""
        before = self._state()
        try:
            return True, fn(*args)
        except EXPECTED:
            assert self._state() == before, f"{fn.__name__}{args} failed but changed the state"
            return False, None

    # -- the manager, directly ------------------------------------------------------------
    # Direct references stop at half the pool, which leaves the tables room to work.
    def _few_direct(self):
        return sum(self.direct.values()) < NUM_BLOCKS // 2

    @precondition(_few_direct)
    @rule()
    def allocate(self):
        ok, b = self._call(self.bm.allocate)
        if ok:
            self.direct[b] += 1

    @precondition(_few_direct)
    @rule(n=COUNT)
    def allocate_blocks(self, n):
        ok, blocks = self._call(self.bm.allocate_blocks, n)
        if ok:
            self.direct.update(blocks)

    @rule(b=BLOCK)
    def free(self, b):
        ok, _ = self._call(self.bm.free, b)
        if ok:
            assert self.direct[b] > 0, f"freed block {b}, which only tables hold"
            self.direct[b] -= 1

    @precondition(lambda self: +self.direct)
    @rule(data=st.data())
    def free_a_held_block(self, data):
        b = data.draw(st.sampled_from(sorted(+self.direct)))
        ok, _ = self._call(self.bm.free, b)
        assert ok, f"could not free block {b}, held through the manager"
        self.direct[b] -= 1

    @rule(blocks=st.lists(BLOCK, max_size=4))
    def free_blocks(self, blocks):
        ok, _ = self._call(self.bm.free_blocks, blocks)
        if ok:
            self.direct.subtract(blocks)
            assert min(self.direct.values(), default=0) >= 0

    @precondition(_few_direct)
    @rule(b=BLOCK)
    def increase_ref_count(self, b):
        ok, _ = self._call(self.bm.increase_ref_count, b)
        if ok:
            self.direct[b] += 1

    @rule(b=BLOCK, h=st.integers(0, 3))
    def register_hash(self, b, h):
        self._call(self.bm.register_hash, b, h)

    # -- block tables -------------------------------------------------------------------
    def _seq(self, data):
        """A live sequence half the time, else any id (valid or not)."""
        live = sorted(self.tables, key=str)
        return data.draw(st.one_of(st.sampled_from(live), SEQ) if live else SEQ)

    @staticmethod
    def _tokens(data, n):
        """No ids, the n ids the call needs, or random (mostly wrong) ones."""
        fits = isinstance(n, int) and 0 <= n <= 100
        return data.draw(st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=n, max_size=n),
                                   TOKENS) if fits else TOKENS)

    @rule(seq=SEQ, n=COUNT, data=st.data())
    def add_sequence(self, seq, n, data):
        self._call(self.tables.add_sequence, seq, n, self._tokens(data, n))

    @rule(child=SEQ, data=st.data())
    def fork(self, child, data):
        self._call(self.tables.fork, self._seq(data), child)

    @rule(n=COUNT, data=st.data())
    def append_slots(self, n, data):
        self._call(self.tables.append_slots, self._seq(data), n, self._tokens(data, n))

    @rule(data=st.data())
    def decode_step(self, data):
        seqs = data.draw(st.none() | st.lists(st.builds(self._seq, st.just(data)), max_size=5))
        n = NUM_ROWS if seqs is None else len(seqs)
        self._call(self.tables.decode_step, seqs, self._tokens(data, n))

    @rule(data=st.data())
    def free_sequence(self, data):
        self._call(self.tables.free_sequence, self._seq(data))

    @rule(start=COUNT, n=COUNT, data=st.data())
    def make_writable(self, start, n, data):
        self._call(self.tables.make_writable, self._seq(data), start, n)

    @rule(start=COUNT, n=COUNT, data=st.data())
    def mark_written(self, start, n, data):
        self._call(self.tables.mark_written, self._seq(data), start, n)

    @rule(start=COUNT, n=COUNT, data=st.data())
    def slot_mapping(self, start, n, data):
        self._call(self.tables.slot_mapping, self._seq(data), start, n)

    @invariant()
    def accounting_holds(self):
        bm, t = self.bm, self.tables
        refs = [bm.get_ref_count(b) for b in range(NUM_BLOCKS)]
        assert min(refs) >= 0
        assert bm.num_free_blocks == refs.count(0)
        mapped = collections.Counter(b for s in t for b in t[s])
        for b in range(NUM_BLOCKS):
            assert refs[b] == mapped[b] + self.direct[b], (
                f"block {b}: ref count {refs[b]}, mapped {mapped[b]} times, "
                f"{self.direct[b]} direct references")
        assert sorted(t.context_lens.tolist()) == sorted(
            [t.seq_len(s) for s in t] + [0] * (NUM_ROWS - len(t)))


TestBookkeeping = Bookkeeping.TestCase
TestBookkeeping.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                    derandomize=True,  # the same calls in every CI run
                                    suppress_health_check=[HealthCheck.too_slow])

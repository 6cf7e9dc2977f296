import pytest
import torch

from mini_paged_attn.block_manager import BlockManager
from mini_paged_attn.cache.block_tables import BlockTables


def _tables(num_blocks=16, num_sequences=4, max_blocks_per_seq=8, block_size=4):
    return BlockTables(BlockManager(num_blocks), num_sequences, max_blocks_per_seq, block_size)


def _state(t):
    """Everything a failed call must leave as it was."""
    bm = t.block_manager
    return ({s: t[s] for s in t}, t.block_table.clone(), t.context_lens.clone(),
            [bm.get_ref_count(b) for b in range(bm.num_blocks)], bm.evictable_blocks())


def test_rows_tables_and_mapping_api():
    t = _tables()
    assert t.add_sequence("a", 6) == 0
    assert t.add_sequence("b", 0) == 0
    assert t.row_of("a") == 0 and t.row_of("b") == 1 and t.seq_len("a") == 6
    assert t["a"] == [0, 1] and t["b"] == [] and len(t) == 2 and list(t) == ["a", "b"]
    assert "a" in t and "z" not in t
    assert t.block_table[0, :2].tolist() == [0, 1] and t.context_lens.tolist() == [6, 0, 0, 0]
    assert t.slot_mapping("a", 3, 3).tolist() == [3, 4, 5]
    t.free_sequence("a")
    assert t.context_lens[0] == 0 and t.block_table[0].tolist() == [0] * 8
    t.add_sequence("c", 1)
    assert t.row_of("c") == 0


def test_prefix_blocks_are_reused_once_written():
    t = _tables(num_sequences=5)
    ids = list(range(10))
    assert t.add_sequence("a", 10, ids) == 0
    assert t.add_sequence("b", 10, ids) == 0        # a's K/V is not written yet
    t.mark_written("a", 0, 10)
    assert t.add_sequence("c", 10, ids) == 8        # two full blocks; the rest is new
    assert t["c"][:2] == t["a"][:2] and t["c"][2] != t["a"][2]
    assert t.add_sequence("d", 8, ids[:8]) == 4     # the last token is recomputed
    assert t.add_sequence("e", 9, [0, 1, 2, 3, 9, 9, 9, 9, 9]) == 4
    assert t.block_manager.get_ref_count(t["a"][0]) == 4
    stats = t.block_manager.prefix_cache_stats
    assert (stats.hits, stats.misses) == (4, 5)


def test_written_prefix_must_be_contiguous():
    t = _tables()
    t.add_sequence("a", 9, list(range(9)))
    t.mark_written("a", 4, 4)                       # a gap before it: not counted
    t.mark_written("a", 0, 4)
    bm = t.block_manager
    assert bm.get_block_hash(t["a"][0]) is not None and bm.get_block_hash(t["a"][1]) is None
    t.mark_written("a", 2, 7)
    assert bm.get_block_hash(t["a"][1]) is not None and bm.get_block_hash(t["a"][2]) is None


def test_tokens_appended_without_ids_end_caching():
    t = _tables()
    t.add_sequence("a", 2, [1, 2])
    t.append_slots("a", 2, [3, 4])
    t.append_slots("a", 4)                          # ids unknown from here on
    t.append_slots("a", 4, [5, 6, 7, 8])
    t.mark_written("a", 0, 12)
    bm = t.block_manager
    assert [bm.get_block_hash(b) is not None for b in t["a"]] == [True, False, False]


def test_free_releases_tail_blocks_first():
    t = _tables()
    t.add_sequence("a", 13, list(range(13)))
    t.mark_written("a", 0, 13)
    blocks = t["a"]
    t.free_sequence("a")
    assert t.block_manager.evictable_blocks() == blocks[2::-1]  # the partial one is free


def test_fork_shares_then_copy_on_write_on_append():
    t = _tables()
    t.add_sequence("p", 6)
    free = t.block_manager.num_free_blocks
    t.fork("p", "c")
    assert t["c"] == t["p"] and t.block_manager.num_free_blocks == free
    assert t.block_manager.get_ref_count(t["p"][1]) == 2
    old = t["p"]
    slots, block_mapping = t.append_slots("p")
    assert block_mapping.tolist() == [[old[1], t["p"][1]]] and t["p"][0] == old[0]
    assert t["c"] == old and slots.tolist() == [t["p"][1] * 4 + 2]
    _, block_mapping = t.append_slots("c")          # c holds old[1] alone now
    assert block_mapping.shape == (0, 2) and t["c"] == old


def test_append_after_a_full_shared_block_needs_no_copy():
    t = _tables()
    t.add_sequence("p", 8)
    t.fork("p", "c")
    _, block_mapping = t.append_slots("p", 3)
    assert block_mapping.numel() == 0 and t["p"][:2] == t["c"] and len(t["p"]) == 3


def test_decode_step_copies_for_all_but_the_last_sharer():
    t = _tables(num_sequences=5)
    t.add_sequence("p", 5)
    for c in "abc":
        t.fork("p", c)
    t.add_sequence("x", 4)
    shared = t["p"][1]
    free = t.block_manager.num_free_blocks
    slots, changed, block_mapping = t.decode_step(["a", "p", "b", "x"], [1, 2, 3, 4])
    # c still holds the shared block, so a, p and b each copy it; x opens a block.
    assert block_mapping[:, 0].tolist() == [shared] * 3
    assert changed.tolist() == [t.row_of(s) for s in ["a", "p", "b", "x"]]
    assert t.block_manager.num_free_blocks == free - 4 and t["c"][1] == shared
    assert slots.tolist() == [t[s][-1] * 4 + (t.seq_len(s) - 1) % 4 for s in "apbx"]
    slots, changed, block_mapping = t.decode_step()
    assert block_mapping.numel() == 0 and changed.tolist() == []
    assert slots[t.row_of("c")] == shared * 4 + 1 and slots.tolist().count(-1) == 0


def test_decode_step_pads_free_rows_and_registers_written_blocks():
    t = _tables()
    t.add_sequence("a", 4, [1, 2, 3, 4])
    t.add_sequence("b", 1)
    t.free_sequence("b")
    slots, _, _ = t.decode_step(token_ids=[5, 0, 0, 0])
    assert slots.tolist()[1:] == [-1, -1, -1] and t.seq_len("a") == 5
    assert t.block_manager.get_block_hash(t["a"][0]) is not None


def test_failed_calls_change_nothing():
    t = _tables(num_blocks=4)
    t.add_sequence("p", 6)
    t.fork("p", "c")
    t.add_sequence("x", 8)
    before = _state(t)
    assert t.block_manager.num_free_blocks == 0
    with pytest.raises(MemoryError, match="needs 1 blocks"):
        t.append_slots("p")                         # copy-on-write needs a block
    with pytest.raises(MemoryError, match="decode step"):
        t.decode_step(["x", "p"])
    with pytest.raises(MemoryError):
        t.make_writable("p", 0, 6)
    with pytest.raises(MemoryError):
        t.add_sequence("y", 1)
    with pytest.raises(ValueError, match="max_blocks_per_seq"):
        t.append_slots("x", 100)
    with pytest.raises(ValueError, match="token_ids"):
        t.append_slots("x", 2, [1])
    with pytest.raises(TypeError):
        t.add_sequence("y", 2, ["a", "b"])
    with pytest.raises(ValueError, match="entry 1 of the decode step .row 2. repeats"):
        t.decode_step(["x", "x"])
    with pytest.raises(KeyError, match="unknown seq_id 'q'"):
        t.decode_step(["x", "q"])
    with pytest.raises(ValueError, match="already present"):
        t.fork("p", "x")
    with pytest.raises(ValueError, match="outside"):
        t.make_writable("p", 4, 3)
    after = _state(t)
    assert before[0] == after[0] and before[3:] == after[3:]
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])


def test_rows_run_out():
    t = _tables(num_sequences=2)
    t.add_sequence("a", 1)
    t.fork("a", "b")
    with pytest.raises(MemoryError, match="rows"):
        t.fork("a", "c")
    with pytest.raises(MemoryError, match="rows"):
        t.add_sequence("c", 0)


def test_make_writable_copies_shared_and_cached_blocks():
    t = _tables()
    t.add_sequence("a", 8, list(range(8)))
    t.mark_written("a", 0, 8)
    t.fork("a", "b")
    old = t["a"]
    block_mapping = t.make_writable("a", 2, 4)      # both blocks are shared
    assert block_mapping[:, 0].tolist() == old and t["b"] == old
    t.free_sequence("b")
    assert t.block_manager.evictable_blocks() == old[::-1]  # still cache entries
    block_mapping = t.make_writable("a", 0, 8)      # a's new copies are private
    assert block_mapping.numel() == 0


def test_can_allocate():
    t = _tables(num_blocks=4, max_blocks_per_seq=3)
    assert t.can_allocate(num_tokens=12) and not t.can_allocate(num_tokens=13)
    t.add_sequence("a", 6)
    t.fork("a", "b")
    assert t.can_allocate("a")                      # the copy of block 1
    assert t.can_allocate("a", 6) and not t.can_allocate("a", 7)
    t.add_sequence("c", 5)
    assert not t.can_allocate("a") and t.can_allocate("c", 3)
    assert t.can_allocate("a", 0)
    with pytest.raises(TypeError):
        t.can_allocate()
    with pytest.raises(KeyError):
        t.can_allocate("z")


def test_writing_the_exposed_tensors_changes_nothing():
    """block_table / context_lens are a mirror: ids a caller writes into them
    are never used (before, a bad id crashed free_sequence and a valid one
    freed another sequence's block)."""
    bm = BlockManager(16)
    tables = BlockTables(bm, 4, 8, 4)
    tables.add_sequence("a", 10)
    tables.add_sequence("b", 6)
    owned_b = tables["b"]
    tables.block_table[0, :3] = torch.tensor([2**30, -5, owned_b[0]], dtype=torch.int32)
    tables.context_lens[0] = 10**6
    tables.free_sequence("a")
    assert bm.num_free_blocks == 16 - len(owned_b)
    assert tables["b"] == owned_b and all(bm.get_ref_count(b) == 1 for b in owned_b)
    # The mirror is rewritten on the next change of the row.
    tables.add_sequence("c", 5)
    assert tables.block_table[tables.row_of("c"), :2].tolist() == tables["c"]
    assert tables.context_lens[tables.row_of("c")] == 5


def test_lengths_that_would_wrap_int32_are_refused():
    with pytest.raises(ValueError, match="max_blocks_per_seq"):
        BlockTables(BlockManager(4), 1, 2**28, 16)


def test_a_huge_append_is_refused_before_anything_changes():
    bm = BlockManager(16)
    tables = BlockTables(bm, 2, 8, 4)
    tables.add_sequence("a", 5)
    before = (tables.seq_len("a"), tables["a"], bm.num_free_blocks)
    for n in (2**63 - 3, 2**62, 28):
        with pytest.raises(ValueError, match="max_blocks_per_seq"):
            tables.append_slots("a", n)
        assert (tables.seq_len("a"), tables["a"], bm.num_free_blocks) == before


def test_block_manager_cannot_free_blocks_a_table_holds():
    t = _tables()
    t.add_sequence("a", 6)
    bm, (b0, b1) = t.block_manager, t["a"]
    before = _state(t)
    with pytest.raises(RuntimeError, match="belong to block tables"):
        bm.free(b0)
    with pytest.raises(RuntimeError, match="belong to block tables"):
        bm.free_blocks([b1])
    after = _state(t)
    assert before[0] == after[0] and before[3:] == after[3:]
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    # A reference taken through the manager is the caller's to drop.
    bm.increase_ref_count(b0)
    bm.free(b0)
    with pytest.raises(RuntimeError, match="belong to block tables"):
        bm.free(b0)
    t.free_sequence("a")
    assert bm.num_free_blocks == bm.num_blocks


def test_threads_share_one_block_tables():
    import random
    import sys
    import threading

    t = _tables(num_blocks=64, num_sequences=16, max_blocks_per_seq=8)
    errors = []

    def worker(w):
        # Threads race on the same few ids: two may add, fork or free one at once.
        rng = random.Random(w)
        try:
            for _ in range(2000):
                a, b = rng.sample(range(6), 2)
                try:
                    op = rng.randrange(4)
                    if op == 0:
                        t.add_sequence(a, rng.randrange(9))
                    elif op == 1:
                        t.fork(a, b)
                    elif op == 2:
                        t.decode_step([a])
                    else:
                        t.free_sequence(a)
                except (KeyError, ValueError, MemoryError):
                    pass
        except Exception as e:  # reported below: a thread's exception is otherwise lost
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert len(t) == int((t.context_lens > 0).sum()) + sum(t.seq_len(s) == 0 for s in t)
    for s in list(t):
        t.free_sequence(s)
    bm = t.block_manager
    assert len(t) == 0 and bm.num_free_blocks == bm.num_blocks
    assert t.context_lens.tolist() == [0] * 16

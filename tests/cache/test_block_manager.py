import collections
import random
import threading

import pytest

from mini_paged_attn import _C
from mini_paged_attn.block_manager import ROOT_BLOCK_HASH, BlockManager, hash_block


# -- the seed's tests ----------------------------------------------------------------

def test_initialization():
    manager = BlockManager(num_blocks=10)
    assert manager.num_free_blocks == 10
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0)


def test_allocation():
    manager = BlockManager(num_blocks=5)
    allocated = []
    for i in range(5):
        block = manager.allocate()
        allocated.append(block)
        assert manager.num_free_blocks == 5 - (i + 1)
        assert manager.get_ref_count(block) == 1
    assert len(set(allocated)) == 5
    with pytest.raises(MemoryError):
        manager.allocate()


def test_free():
    manager = BlockManager(num_blocks=3)
    b0 = manager.allocate()
    manager.allocate()
    assert manager.num_free_blocks == 1
    manager.free(b0)
    assert manager.num_free_blocks == 2
    assert manager.get_ref_count(b0) == 0
    with pytest.raises(RuntimeError):
        manager.cpp_manager.free(b0)


def test_reference_counting():
    manager = BlockManager(num_blocks=2)
    b0 = manager.allocate()
    assert manager.num_free_blocks == 1
    manager.increase_ref_count(b0)
    assert manager.get_ref_count(b0) == 2
    manager.free(b0)
    assert manager.get_ref_count(b0) == 1
    assert manager.num_free_blocks == 1
    manager.free(b0)
    assert manager.get_ref_count(b0) == 0
    assert manager.num_free_blocks == 2


# -- beyond the seed -----------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 0, 2.5, "3", True, None])
def test_bad_num_blocks(bad):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(bad)


def test_allocate_blocks_is_all_or_nothing():
    manager = BlockManager(4)
    assert manager.allocate_blocks(3) == [0, 1, 2]
    with pytest.raises(MemoryError, match="requested 2"):
        manager.allocate_blocks(2)
    assert manager.num_free_blocks == 1
    assert manager.allocate_blocks(0) == []
    with pytest.raises(ValueError):
        manager.allocate_blocks(-1)


def test_out_of_blocks_is_a_memory_error_subclass():
    manager = BlockManager(1)
    manager.allocate()
    with pytest.raises(_C.OutOfBlocksError):
        manager.allocate()
    assert issubclass(_C.OutOfBlocksError, MemoryError)


def test_double_free_and_sharing_a_free_block_change_nothing():
    manager = BlockManager(3)
    b = manager.allocate()
    manager.free(b)
    with pytest.raises(RuntimeError, match="double free"):
        manager.free(b)
    with pytest.raises(RuntimeError, match="free"):
        manager.increase_ref_count(b)
    assert manager.num_free_blocks == 3
    assert manager.get_ref_count(b) == 0


@pytest.mark.parametrize("method", ["free", "increase_ref_count", "get_ref_count"])
@pytest.mark.parametrize("idx", [-1, 3, 1 << 40])
def test_out_of_range_index(method, idx):
    manager = BlockManager(3)
    with pytest.raises(IndexError, match="out of range"):
        getattr(manager, method)(idx)
    assert manager.num_free_blocks == 3


def test_index_must_be_int():
    manager = BlockManager(3)
    with pytest.raises(TypeError, match="block_idx"):
        manager.free(1.0)


def test_free_blocks_is_validated_as_a_whole():
    manager = BlockManager(4)
    a, b = manager.allocate_blocks(2)
    manager.increase_ref_count(a)
    # b listed twice but holds one reference: nothing may be freed.
    with pytest.raises(RuntimeError, match="double free"):
        manager.free_blocks([a, b, b])
    assert manager.get_ref_count(a) == 2 and manager.get_ref_count(b) == 1
    with pytest.raises(IndexError):
        manager.free_blocks([a, 99])
    assert manager.get_ref_count(a) == 2
    manager.free_blocks([a, a, b])
    assert manager.num_free_blocks == 4


def test_properties_and_repr():
    manager = BlockManager(7)
    manager.allocate()
    assert manager.num_blocks == 7 and manager.num_free_blocks == 6
    assert "num_blocks=7" in repr(manager) and "num_free_blocks=6" in repr(manager)
    assert "num_free_blocks=6" in repr(manager.cpp_manager)


def test_freed_blocks_are_reused():
    manager = BlockManager(2)
    a = manager.allocate()
    manager.allocate()
    manager.free(a)
    assert manager.allocate() == a


def _run_in_threads(worker, num_threads):
    """Runs worker(tid) on num_threads threads at once; a thread must not die
    silently, so its error fails the test."""
    errors = []

    def guarded(tid):
        try:
            worker(tid)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(num_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_concurrent_allocate_and_free_never_lose_or_duplicate_blocks():
    num_blocks, num_threads, rounds = 64, 8, 2000
    manager = BlockManager(num_blocks)
    owned = [[] for _ in range(num_threads)]

    def worker(tid):
        for r in range(rounds):
            if (r + tid) % 3 != 2:
                try:
                    owned[tid].extend(manager.allocate_blocks(1 + r % 2))
                except MemoryError:
                    pass
            elif owned[tid]:
                manager.free(owned[tid].pop())

    _run_in_threads(worker, num_threads)
    held = [b for blocks in owned for b in blocks]
    assert len(held) == len(set(held)), "a block was handed out twice"
    assert manager.num_free_blocks == num_blocks - len(held)
    assert all(manager.get_ref_count(b) == 1 for b in held)
    manager.free_blocks(held)
    assert manager.num_free_blocks == num_blocks


# -- prefix cache ----------------------------------------------------------------------

def _cached_block(manager, block_hash):
    """A block registered under block_hash and then released: evictable."""
    b = manager.allocate()
    assert manager.register_hash(b, block_hash)
    manager.free(b)
    return b


def test_hash_block_is_chained_and_deterministic():
    h0 = hash_block(ROOT_BLOCK_HASH, [1, 2, 3, 4])
    assert h0 == hash_block(ROOT_BLOCK_HASH, [1, 2, 3, 4])
    assert h0 == 0x32d71687f4dd31b8  # the same in every run and on every machine
    assert h0 != hash_block(ROOT_BLOCK_HASH, [1, 2, 3, 5])
    assert hash_block(h0, [5, 6]) != hash_block(ROOT_BLOCK_HASH, [5, 6])
    assert hash_block(0, [7]) != hash_block(0, [7, 0])
    with pytest.raises(ValueError, match="parent_hash"):
        hash_block(-1, [1])
    with pytest.raises(TypeError, match="token_ids"):
        hash_block(0, [1.5])


def test_released_registered_block_stays_cached_until_evicted():
    manager = BlockManager(3)
    b = _cached_block(manager, 42)
    assert manager.num_free_blocks == 3 and manager.num_evictable_blocks == 1
    assert manager.evictable_blocks() == [b] and manager.get_block_hash(b) == 42
    # Never-used blocks go first; then the cached one is evicted and forgets its hash.
    others = manager.allocate_blocks(2)
    assert b not in others and manager.get_block_hash(b) == 42
    assert manager.allocate() == b
    assert manager.get_block_hash(b) is None and manager.lookup(42) is None
    assert manager.prefix_cache_stats.evictions == 1


def test_lookup_revives_or_shares_and_counts():
    manager = BlockManager(4)
    b = _cached_block(manager, 7)
    assert manager.lookup(7) == b and manager.get_ref_count(b) == 1
    assert manager.num_evictable_blocks == 0 and manager.num_free_blocks == 3
    assert manager.lookup(7) == b and manager.get_ref_count(b) == 2  # in use: shared
    assert manager.lookup(8) is None
    stats = manager.prefix_cache_stats
    assert (stats.hits, stats.misses, stats.evictions) == (2, 1, 0)
    manager.free_blocks([b, b])
    assert manager.evictable_blocks() == [b]


def test_evicts_least_recently_freed_first():
    manager = BlockManager(4)
    blocks = manager.allocate_blocks(4)
    for i, b in enumerate(blocks):
        manager.register_hash(b, 100 + i)
    manager.free_blocks([blocks[2], blocks[0], blocks[3], blocks[1]])
    assert manager.evictable_blocks() == [blocks[2], blocks[0], blocks[3], blocks[1]]
    assert manager.lookup(100) == blocks[0]  # revived: no longer evictable
    assert manager.allocate_blocks(2) == [blocks[2], blocks[3]]
    assert manager.lookup(102) is None and manager.lookup(101) == blocks[1]


def test_one_owner_per_hash_and_one_hash_per_block():
    manager = BlockManager(3)
    a, b = manager.allocate_blocks(2)
    assert manager.register_hash(a, 5)
    assert manager.register_hash(a, 5)          # again: already so
    assert not manager.register_hash(b, 5)      # the hash keeps its owner
    assert not manager.register_hash(a, 6)      # the block keeps its hash
    assert manager.get_block_hash(b) is None and manager.lookup(6) is None
    manager.free_blocks([a, b])
    assert manager.evictable_blocks() == [a]    # b had no content to keep
    with pytest.raises(RuntimeError, match="no reference"):
        manager.register_hash(b, 9)
    with pytest.raises(ValueError, match="block_hash"):
        manager.register_hash(a, 1 << 64)


def test_cached_block_cannot_be_freed_or_shared_without_a_reference():
    manager = BlockManager(2)
    b = _cached_block(manager, 3)
    with pytest.raises(RuntimeError, match="double free.*cached"):
        manager.free(b)
    with pytest.raises(RuntimeError, match="lookup"):
        manager.increase_ref_count(b)
    assert manager.evictable_blocks() == [b] and manager.get_ref_count(b) == 0


def test_allocate_with_prefix_is_all_or_nothing():
    manager = BlockManager(4)
    x = _cached_block(manager, 1)
    y = _cached_block(manager, 2)
    # Hits stop at the first miss (3); reviving x and y leaves 2 blocks for the rest.
    with pytest.raises(MemoryError, match="requested 3"):
        manager.allocate_with_prefix(5, [1, 2, 3, 2])
    assert manager.evictable_blocks() == [x, y] and manager.prefix_cache_stats.hits == 0
    blocks, num_cached = manager.allocate_with_prefix(4, [1, 2, 3])
    assert blocks[:2] == [x, y] and num_cached == 2 and len(set(blocks)) == 4
    stats = manager.prefix_cache_stats
    assert (stats.hits, stats.misses) == (2, 1)
    with pytest.raises(ValueError, match="block_hashes"):
        manager.allocate_with_prefix(1, [1, 2])


def test_concurrent_allocate_free_and_lookup_account_for_every_block():
    num_blocks, num_threads, rounds = 48, 6, 1500
    manager = BlockManager(num_blocks)
    held = [[] for _ in range(num_threads)]
    lookups = [0] * num_threads

    def worker(tid):
        rng = random.Random(tid)
        for _ in range(rounds):
            op = rng.random()
            if op < 0.35:
                try:
                    b = manager.allocate()
                except MemoryError:
                    continue
                manager.register_hash(b, rng.randrange(64))  # keys shared by threads
                held[tid].append(b)
            elif op < 0.6:
                lookups[tid] += 1
                b = manager.lookup(rng.randrange(64))
                if b is not None:
                    held[tid].append(b)
            elif held[tid]:
                manager.free(held[tid].pop(rng.randrange(len(held[tid]))))

    _run_in_threads(worker, num_threads)
    refs = collections.Counter(b for blocks in held for b in blocks)
    assert all(manager.get_ref_count(b) == refs[b] for b in range(num_blocks))
    stats = manager.prefix_cache_stats
    assert stats.hits + stats.misses == sum(lookups)
    manager.free_blocks([b for blocks in held for b in blocks])
    assert manager.num_free_blocks == num_blocks
    evictable = manager.evictable_blocks()
    assert len(evictable) == len(set(evictable)) == manager.num_evictable_blocks
    assert all(manager.get_block_hash(b) is not None for b in evictable)
    assert all(manager.get_block_hash(b) is None
               for b in set(range(num_blocks)) - set(evictable))

import threading

import pytest

from mini_paged_attn import _C
from mini_paged_attn.block_manager import BlockManager


# -- the seed's tests (seed 000) -----------------------------------------------------

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


def test_concurrent_allocate_and_free_never_lose_or_duplicate_blocks():
    num_blocks, num_threads, rounds = 64, 8, 2000
    manager = BlockManager(num_blocks)
    owned = [[] for _ in range(num_threads)]
    errors = []

    def worker(tid):
        try:
            for r in range(rounds):
                if (r + tid) % 3 != 2:
                    try:
                        owned[tid].extend(manager.allocate_blocks(1 + r % 2))
                    except MemoryError:
                        pass
                elif owned[tid]:
                    manager.free(owned[tid].pop())
        except Exception as e:  # surfaced below: a thread must not die silently
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(num_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = [b for blocks in owned for b in blocks]
    assert len(held) == len(set(held)), "a block was handed out twice"
    assert manager.num_free_blocks == num_blocks - len(held)
    assert all(manager.get_ref_count(b) == 1 for b in held)
    manager.free_blocks(held)
    assert manager.num_free_blocks == num_blocks

import pytest
import torch
import torch.nn.functional as F

from mini_paged_attn import PagedKVCacheConfig
from mini_paged_attn.manager import PagedAttentionManager
from mini_paged_attn.ops import paged_attention, paged_attention_v1


def _shuffle_free_list(manager, seed):
    """Drains the block manager and frees blocks in random order, so the next
    sequences get scattered, non-monotonic physical blocks."""
    blocks = manager.block_manager.allocate_blocks(manager.block_manager.num_free_blocks)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    for i in order.tolist():
        manager.block_manager.free(blocks[i])


# -- the seed's end-to-end test, on every device -------------------------------------

@pytest.mark.parametrize("head_size", [64])
@pytest.mark.parametrize("block_size", [8])
@pytest.mark.parametrize("num_sequences", [2])
@pytest.mark.parametrize("num_heads", [4])
def test_paged_attention_correctness(device, num_sequences, num_heads, head_size, block_size):
    torch.manual_seed(0)
    seq_len = 100
    num_blocks = (num_sequences * seq_len + block_size - 1) // block_size + 10
    dtype = torch.float16

    query = torch.randn(num_sequences, num_heads, head_size, dtype=dtype, device=device)
    key = torch.randn(num_sequences, seq_len, num_heads, head_size, dtype=dtype, device=device)
    value = torch.randn(num_sequences, seq_len, num_heads, head_size, dtype=dtype, device=device)
    ground_truth = F.scaled_dot_product_attention(
        query.unsqueeze(2).float(), key.transpose(1, 2).float(), value.transpose(1, 2).float(),
    ).to(dtype).squeeze(2)

    manager = PagedAttentionManager(num_sequences=num_sequences, num_heads=num_heads,
                                    head_size=head_size, block_size=block_size,
                                    num_blocks=num_blocks, device=device)
    _shuffle_free_list(manager, seed=1)
    context_lens = torch.tensor([seq_len] * num_sequences, dtype=torch.int32, device=device)
    for i in range(num_sequences):
        manager.add_sequence(i, seq_len)
    for i in range(num_sequences):
        physical_blocks = manager.seq_block_mapping[i]
        assert physical_blocks != sorted(physical_blocks) or len(physical_blocks) == 1
        for logical_idx, physical_idx in enumerate(physical_blocks):
            start = logical_idx * block_size
            end = min(start + block_size, seq_len)
            manager.kv_cache[physical_idx, :(end - start), 0] = key[i, start:end]
            manager.kv_cache[physical_idx, :(end - start), 1] = value[i, start:end]

    # The interleaved cache is passed as strided views: no copy.
    my_out = torch.empty_like(query, dtype=torch.float32)
    paged_attention_v1(my_out, query.float(), manager.key_cache, manager.value_cache,
                       manager.block_table, context_lens)
    assert torch.allclose(ground_truth, my_out.to(dtype), atol=1e-2, rtol=1e-2)
    assert torch.equal(manager.context_lens, context_lens)


# -- the manager's API ----------------------------------------------------------------

def _manager(device="cpu", **kw):
    args = dict(num_sequences=4, num_heads=8, head_size=32, block_size=4, num_blocks=16,
                device=device, dtype=torch.float32, num_kv_heads=2)
    args.update(kw)
    return PagedAttentionManager(**args)


def test_layout_and_views(device):
    m = _manager(device)
    assert m.kv_cache.shape == (16, 4, 2, 2, 32)
    assert m.key_cache.data_ptr() == m.kv_cache.data_ptr()
    assert m.key_cache.shape == m.value_cache.shape == (16, 4, 2, 32)
    assert m.block_table.dtype == torch.int32 and m.block_table.device.type == device
    assert m.block_table.shape == (4, 16) and m.context_lens.shape == (4,)
    assert isinstance(m.block_manager.num_free_blocks, int)


def test_write_gather_and_attend_through_growth(device):
    g = torch.Generator().manual_seed(0)
    m = _manager(device)
    keys, values = {}, {}
    for seq_id, n in [(10, 5), (11, 0), (12, 9)]:
        m.add_sequence(seq_id, n)
        keys[seq_id] = torch.randn(n, 2, 32, generator=g)
        values[seq_id] = torch.randn(n, 2, 32, generator=g)
        m.write_kv(seq_id, keys[seq_id], values[seq_id])
    for step in range(7):  # decode: one token at a time, crossing block borders
        for seq_id in keys:
            slots = m.append_slots(seq_id)
            assert slots.dtype == torch.int64 and slots.numel() == 1
            k, v = torch.randn(1, 2, 32, generator=g), torch.randn(1, 2, 32, generator=g)
            m.write_kv(seq_id, k, v, start=m.seq_len(seq_id) - 1)
            keys[seq_id] = torch.cat([keys[seq_id], k])
            values[seq_id] = torch.cat([values[seq_id], v])
    q = torch.randn(4, 8, 32, generator=g).to(device)
    out = paged_attention(q, m.key_cache, m.value_cache, m.block_table, m.context_lens)
    for seq_id in keys:
        k, v = m.gather_kv(seq_id)
        assert torch.equal(k.cpu(), keys[seq_id]) and torch.equal(v.cpu(), values[seq_id])
        row = m.row_of(seq_id)
        assert int(m.context_lens[row]) == len(keys[seq_id])
        ref = F.scaled_dot_product_attention(
            q[row].cpu().unsqueeze(1), keys[seq_id].transpose(0, 1), values[seq_id].transpose(0, 1),
            enable_gqa=True).squeeze(1)
        assert torch.allclose(out[row].cpu(), ref, atol=1e-5)


def test_append_returns_slots_of_new_positions():
    m = _manager(block_size=4)
    m.add_sequence(0, 3)
    slots = m.append_slots(0, num_tokens=6)
    blocks = m.seq_block_mapping[0]
    assert len(blocks) == 3
    expected = [blocks[p // 4] * 4 + p % 4 for p in range(3, 9)]
    assert slots.tolist() == expected


def test_free_sequence_returns_blocks_and_row():
    m = _manager()
    m.add_sequence(0, 10)
    m.add_sequence(1, 4)
    assert m.num_free_blocks == 16 - 3 - 1
    m.free_sequence(0)
    assert m.num_free_blocks == 15 and int(m.context_lens[0]) == 0
    m.add_sequence(2, 1)
    assert m.row_of(2) == 0
    with pytest.raises(KeyError):
        m.free_sequence(0)


def test_errors_leave_state_unchanged():
    m = _manager(num_blocks=4, max_blocks_per_seq=3)
    m.add_sequence(0, 8)
    with pytest.raises(ValueError, match="already present"):
        m.add_sequence(0, 1)
    with pytest.raises(KeyError):
        m.append_slots(99)
    with pytest.raises(ValueError, match="max_blocks_per_seq"):
        m.append_slots(0, 5)
    m.add_sequence(1, 4)
    snapshot = (m.num_free_blocks, {k: list(v) for k, v in m.seq_block_mapping.items()},
                m.block_table.clone(), m.context_lens.clone())
    with pytest.raises(MemoryError):
        m.append_slots(1, 5)
    with pytest.raises(MemoryError):
        m.add_sequence(2, 5)
    assert snapshot[0] == m.num_free_blocks and snapshot[1] == m.seq_block_mapping
    assert torch.equal(snapshot[2], m.block_table) and torch.equal(snapshot[3], m.context_lens)
    with pytest.raises(ValueError, match="outside"):
        m.write_kv(0, torch.zeros(2, 2, 32), torch.zeros(2, 2, 32), start=7)
    with pytest.raises(ValueError, match="seq_len"):
        m.add_sequence(3, -1)


def test_rows_run_out():
    m = _manager(num_sequences=2)
    m.add_sequence("a", 1)
    m.add_sequence("b", 1)
    with pytest.raises(MemoryError, match="rows"):
        m.add_sequence("c", 1)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(num_heads=6, num_kv_heads=4), ValueError),
    (dict(block_size=0), ValueError),
    (dict(num_blocks=-1), ValueError),
    (dict(dtype=torch.int8), TypeError),
])
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        _manager(**kwargs)


def test_from_config_sizes_the_cache_from_the_byte_budget():
    config = PagedKVCacheConfig(max_kv_memory_bytes=1 << 20, block_size=32)
    m = PagedAttentionManager.from_config(config, num_sequences=8, num_heads=8, head_size=64,
                                          num_kv_heads=2, dtype=torch.bfloat16)
    per_block = 32 * 2 * 2 * 64 * 2
    assert m.block_size == 32 and m.block_manager.num_blocks == (1 << 20) // per_block
    assert m.kv_cache.numel() * m.kv_cache.element_size() <= 1 << 20
    with pytest.raises(TypeError):
        PagedAttentionManager.from_config("1MB", 8, 8, 64)

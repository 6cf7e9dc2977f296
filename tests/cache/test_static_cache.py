import pytest
import torch

from mini_paged_attn import StaticKVCache, StaticKVCacheConfig
from mini_paged_attn.ops import paged_attention
from reference import ref_paged_attention, rel_err


def test_static_cache_reserves_slots_and_attends(device):
    cache = StaticKVCache(StaticKVCacheConfig(max_batch_size=3, max_cache_len=40), num_kv_heads=2,
                          head_size=32, device=device, dtype=torch.float32)
    assert cache.max_cache_len == 48  # rounded up to whole blocks
    assert cache.reserved_bytes == 2 * 3 * 48 * 2 * 32 * 4
    g = torch.Generator().manual_seed(0)
    for seq_id, n in [(7, 5), (8, 30)]:
        cache.add_sequence(seq_id, n)
        cache.write_kv(seq_id, torch.randn(n, 2, 32, generator=g), torch.randn(n, 2, 32, generator=g))
    slot = cache.append_slots(7)
    assert slot.tolist() == [cache.row_of(7) * 48 + 5]
    q = torch.randn(3, 4, 32, generator=g).to(device)
    out = paged_attention(q, cache.key_cache, cache.value_cache, cache.block_table,
                          cache.context_lens)
    ref = ref_paged_attention(q, cache.key_cache, cache.value_cache, cache.block_table,
                              cache.context_lens)
    assert rel_err(out, ref) < 1e-5


def test_static_cache_limits():
    with pytest.raises(ValueError, match="max_seq_len"):
        StaticKVCache(StaticKVCacheConfig(), 2, 32)
    cache = StaticKVCache(StaticKVCacheConfig(1), 2, 32, max_seq_len=16)
    cache.add_sequence(0, 16)
    with pytest.raises(MemoryError):
        cache.append_slots(0)
    with pytest.raises(MemoryError):
        cache.add_sequence(1, 1)
    cache.free_sequence(0)
    cache.add_sequence(1, 1)
    with pytest.raises(KeyError):
        cache.free_sequence(0)

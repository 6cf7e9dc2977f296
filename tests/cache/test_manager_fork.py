"""PagedAttentionManager with shared blocks: fork, copy-on-write, prefix cache,
decode steps and a beam search, on every device."""
import random

import pytest
import torch

from mini_paged_attn.manager import PagedAttentionManager
from mini_paged_attn.ops import reshape_and_cache

KV_HEADS, HEAD_SIZE = 2, 8


def _manager(device, **kw):
    args = dict(num_sequences=8, num_heads=4, head_size=HEAD_SIZE, block_size=4, num_blocks=32,
                device=device, dtype=torch.float32, num_kv_heads=KV_HEADS)
    args.update(kw)
    return PagedAttentionManager(**args)


def _kv(g, n):
    return torch.randn(n, KV_HEADS, HEAD_SIZE, generator=g), torch.randn(n, KV_HEADS, HEAD_SIZE,
                                                                         generator=g)


def _assert_kv(m, seq_id, keys, values):
    k, v = m.gather_kv(seq_id)
    assert torch.equal(k.cpu(), keys) and torch.equal(v.cpu(), values)


def _assert_device_tables(m):
    assert torch.equal(m.block_table.cpu(), m.block_tables.block_table)
    assert torch.equal(m.context_lens.cpu(), m.block_tables.context_lens)


def test_fork_shares_blocks_and_writes_never_leak(device):
    g = torch.Generator().manual_seed(0)
    m = _manager(device)
    k, v = _kv(g, 6)
    m.add_sequence("p", 6)
    m.write_kv("p", k, v)
    used = m.num_free_blocks
    m.fork("p", "c")
    assert m.seq_block_mapping["c"] == m.seq_block_mapping["p"] and m.num_free_blocks == used
    kc, vc = _kv(g, 1)
    m.write_kv("c", kc, vc, start=5)  # rewrites position 5, in a shared block
    assert m.seq_block_mapping["c"][1] != m.seq_block_mapping["p"][1]
    _assert_kv(m, "p", k, v)
    _assert_kv(m, "c", torch.cat([k[:5], kc]), torch.cat([v[:5], vc]))
    kp, vp = _kv(g, 1)
    slots = m.append_slots("p")
    reshape_and_cache(kp.to(device), vp.to(device), m.key_cache, m.value_cache, slots)
    _assert_kv(m, "p", torch.cat([k, kp]), torch.cat([v, vp]))
    _assert_kv(m, "c", torch.cat([k[:5], kc]), torch.cat([v[:5], vc]))
    _assert_device_tables(m)


def test_append_into_a_shared_block_copies_it_first(device):
    g = torch.Generator().manual_seed(1)
    m = _manager(device)
    k, v = _kv(g, 5)
    m.add_sequence(0, 5)
    m.write_kv(0, k, v)
    m.fork(0, 1)
    for seq_id in (1, 0):
        kn, vn = _kv(g, 2)
        m.append_slots(seq_id, 2)
        m.write_kv(seq_id, kn, vn, start=5)
        _assert_kv(m, seq_id, torch.cat([k, kn]), torch.cat([v, vn]))
    assert len(set(m.seq_block_mapping[0][1:]) & set(m.seq_block_mapping[1][1:])) == 0
    assert m.seq_block_mapping[0][0] == m.seq_block_mapping[1][0]
    _assert_device_tables(m)


def test_prefix_cache_serves_written_blocks(device):
    g = torch.Generator().manual_seed(2)
    m = _manager(device)
    prompt = list(range(100, 110))
    k, v = _kv(g, 10)
    assert m.add_sequence("a", 10, token_ids=prompt) == 0
    m.write_kv("a", k, v)
    m.free_sequence("a")
    assert m.block_manager.num_evictable_blocks == 2
    num_cached = m.add_sequence("b", 10, token_ids=prompt)
    assert num_cached == 8
    m.write_kv("b", k[8:], v[8:], start=num_cached)
    _assert_kv(m, "b", k, v)
    assert m.add_sequence("c", 3, token_ids=prompt[:3]) == 0
    assert m.block_manager.prefix_cache_stats.hits == 2
    _assert_device_tables(m)


def test_decode_step_advances_every_row(device):
    g = torch.Generator().manual_seed(3)
    m = _manager(device, num_sequences=4)
    keys = {"a": _kv(g, 3)[0], "b": _kv(g, 4)[0]}
    for s in "ab":
        m.add_sequence(s, len(keys[s]))
        m.write_kv(s, keys[s], keys[s])
    m.fork("a", "c")
    keys["c"] = keys["a"]
    slots, changed = m.decode_step()
    assert slots.device.type == device and slots.shape == (4,) and int(slots[3]) == -1
    assert sorted(changed.tolist()) == [m.row_of("a"), m.row_of("b")]  # c kept the block
    new = _kv(g, 4)[0]
    reshape_and_cache(new.to(device), new.to(device), m.key_cache, m.value_cache, slots)
    for s in "abc":
        _assert_kv(m, s, torch.cat([keys[s], new[m.row_of(s)][None]]),
                   torch.cat([keys[s], new[m.row_of(s)][None]]))
    assert m.context_lens.tolist() == [4, 5, 4, 0]
    _assert_device_tables(m)


def test_failed_append_changes_nothing(device):
    m = _manager(device, num_blocks=3)
    m.add_sequence("p", 6)
    m.fork("p", "c")
    m.add_sequence("x", 3)
    kv = m.kv_cache.clone()
    with pytest.raises(MemoryError):
        m.append_slots("c")
    with pytest.raises(MemoryError):
        m.decode_step()
    assert not m.can_allocate("c") and m.can_allocate("x")
    assert torch.equal(kv, m.kv_cache) and m.seq_block_mapping["c"] == m.seq_block_mapping["p"]
    assert m.seq_len("c") == 6 and m.context_lens.tolist()[:3] == [6, 6, 3]
    _assert_device_tables(m)


def test_beam_search_memory_is_far_below_independent_copies(device):
    """One prompt forked into 8 beams, 100 decode steps; every step the worse
    half of the beams is pruned and the survivors are forked back to 8."""
    rng = random.Random(0)
    g = torch.Generator().manual_seed(4)
    prompt_len, steps, width, block_size = 256, 100, 8, 16
    independent = width * -(-(prompt_len + steps) // block_size)
    m = _manager(device, num_sequences=2 * width, block_size=block_size,
                 num_blocks=independent + width)
    keys = {0: _kv(g, prompt_len)[0]}
    m.add_sequence(0, prompt_len)
    m.write_kv(0, keys[0], keys[0])
    beams, next_id = [0], 1
    peak = 0
    for _ in range(steps):
        for parent in [beams[i % len(beams)] for i in range(width - len(beams))]:
            m.fork(parent, next_id)
            keys[next_id] = keys[parent]
            beams.append(next_id)
            next_id += 1
        slots, _ = m.decode_step(beams)
        new = _kv(g, width)[0]
        reshape_and_cache(new.to(device), new.to(device), m.key_cache, m.value_cache, slots)
        for i, b in enumerate(beams):
            keys[b] = torch.cat([keys[b], new[i][None]])
        peak = max(peak, m.block_manager.num_blocks - m.num_free_blocks)
        rng.shuffle(beams)
        for b in beams[width // 2:]:
            m.free_sequence(b)
            del keys[b]
        beams = beams[:width // 2]
    for b in beams:
        _assert_kv(m, b, keys[b], keys[b])
    assert peak * 4 < independent, (peak, independent)
    for b in beams:
        m.free_sequence(b)
    assert m.num_free_blocks == m.block_manager.num_blocks

"""CUDA-only tests of the kernels in csrc/kernels; skipped without a GPU.

References are computed in float64 on the GPU from the very cache the kernel
reads (gathered through the block tables), so the only differences are the
kernel's own rounding. Unused cache slots hold NaN and block-table entries past
a sequence's last block hold garbage: neither may leak into the output.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mini_paged_attn import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = "cuda"
HEAD_SIZES = [32, 64, 80, 96, 128, 256]
BLOCK_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# (query dtype, cache dtype)
DTYPES = [
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float32, torch.float32),
    (torch.float32, torch.float16),
    (torch.float32, torch.bfloat16),
]
# ||out - ref|| / ||ref||, by output dtype: float32 outputs carry the kernel's
# own error only (hi/lo split operands, fp32 accumulation).
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
GARBAGE_BLOCK = 2**30  # far out of range: reading it would fault or show


def dtype_id(pair):
    q, c = pair
    return f"q{str(q)[6:]}-c{str(c)[6:]}"


def ref_attention(query, key_cache, value_cache, block_tables, context_lens, scale=None):
    """Decode attention in float64: each sequence's tokens gathered through its block table."""
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.size(1), key_cache.size(2)
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    out = torch.zeros(num_seqs, num_heads, head_size, dtype=torch.float64, device=query.device)
    for s, n in enumerate(context_lens.tolist()):
        if n == 0:
            continue
        pos = torch.arange(n, device=query.device)
        blocks = block_tables[s].long()[pos // block_size]
        k = key_cache[blocks, pos % block_size].double()  # [n, kv_heads, d]
        v = value_cache[blocks, pos % block_size].double()
        q = query[s].double().view(num_kv_heads, group, head_size)
        p = torch.softmax(torch.einsum("kgd,nkd->kgn", q, k) * scale, dim=-1)
        out[s] = torch.einsum("kgn,nkd->kgd", p, v).reshape(num_heads, head_size)
    return out


def rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def make_caches(num_blocks, block_size, num_kv_heads, head_size, dtype, layout):
    """NaN-filled K and V caches in one of three memory layouts (never copied)."""
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    if layout == "plain":
        kv = torch.full((2, *shape), float("nan"), dtype=dtype, device=DEV)
        return kv[0], kv[1]
    if layout == "interleaved":  # [num_blocks, block_size, 2, kv_heads, head_size]
        kv = torch.full((num_blocks, block_size, 2, num_kv_heads, head_size), float("nan"),
                        dtype=dtype, device=DEV)
        return kv[:, :, 0], kv[:, :, 1]
    assert layout == "head_major"  # [num_blocks, kv_heads, block_size, head_size] storage
    kv = torch.full((2, num_blocks, num_kv_heads, block_size, head_size), float("nan"),
                    dtype=dtype, device=DEV)
    return kv[0].transpose(1, 2), kv[1].transpose(1, 2)


def make_paged(context_lens, num_kv_heads, head_size, block_size, dtype, layout="plain",
               max_blocks=None, extra_blocks=3):
    """Random K/V for each sequence in shuffled physical blocks; the rest is NaN."""
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    max_blocks = max_blocks or max(blocks_per_seq + [0]) + 1
    num_blocks = sum(blocks_per_seq) + extra_blocks
    key_cache, value_cache = make_caches(num_blocks, block_size, num_kv_heads, head_size, dtype,
                                         layout)
    perm = torch.randperm(num_blocks).int()
    tables = torch.full((len(context_lens), max_blocks), GARBAGE_BLOCK, dtype=torch.int32)
    used = 0
    for s, nb in enumerate(blocks_per_seq):
        tables[s, :nb] = perm[used:used + nb]
        used += nb
    tables = tables.to(DEV)
    for s, n in enumerate(context_lens):
        pos = torch.arange(n, device=DEV)
        blocks = tables[s].long()[pos // block_size]
        key_cache[blocks, pos % block_size] = torch.randn(n, num_kv_heads, head_size,
                                                          device=DEV).to(dtype)
        value_cache[blocks, pos % block_size] = torch.randn(n, num_kv_heads, head_size,
                                                            device=DEV).to(dtype)
    lens = torch.tensor(context_lens, dtype=torch.int32, device=DEV)
    return key_cache, value_cache, tables, lens


def run_and_check(context_lens, num_heads, num_kv_heads, head_size, block_size, q_dtype,
                  cache_dtype, layout="plain", max_blocks=None, scale=None, strided_q=False):
    key_cache, value_cache, tables, lens = make_paged(context_lens, num_kv_heads, head_size,
                                                      block_size, cache_dtype, layout, max_blocks)
    num_seqs = len(context_lens)
    if strided_q:  # rows padded: only the last dim is contiguous
        query = torch.randn(num_seqs, num_heads, head_size + 24, device=DEV).to(q_dtype)
        query = query[:, :, 8:8 + head_size]
        out = torch.full((num_seqs, num_heads + 3, head_size), float("nan"), dtype=q_dtype,
                         device=DEV)[:, 1:1 + num_heads]
    else:
        query = torch.randn(num_seqs, num_heads, head_size, device=DEV).to(q_dtype)
        out = torch.full_like(query, float("nan"))  # every element must be written
    ops.paged_attention(query, key_cache, value_cache, tables, lens, scale=scale, out=out)
    ref = ref_attention(query, key_cache, value_cache, tables, lens, scale)
    assert not out.isnan().any()
    err = rel_err(out, ref)
    assert err < TOL[q_dtype], f"relative error {err:.2e}"
    for s, n in enumerate(context_lens):
        if n == 0:
            assert (out[s] == 0).all()
    return out


# ---------------------------------------------------------------------------
# paged_attention
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtypes", DTYPES, ids=dtype_id)
def test_paged_attention_dtypes_blocks_heads(dtypes, block_size, head_size):
    torch.manual_seed(block_size * 1000 + head_size)
    q_dtype, cache_dtype = dtypes
    run_and_check([0, 1, 37, 300, 700], 8, 2, head_size, block_size, q_dtype, cache_dtype)


@pytest.mark.parametrize("num_heads,num_kv_heads",
                         [(4, 4), (8, 4), (12, 4), (16, 2), (24, 2), (32, 8), (32, 1), (64, 4),
                          (7, 1)])
@pytest.mark.parametrize("context", [1, 900, 5000])
def test_paged_attention_gqa_and_mqa(num_heads, num_kv_heads, context):
    torch.manual_seed(num_heads * 7 + num_kv_heads + context)
    run_and_check([context, max(1, context // 3)], num_heads, num_kv_heads, 128, 16,
                  torch.bfloat16, torch.bfloat16)


@pytest.mark.parametrize("layout", ["plain", "interleaved", "head_major"])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 8), (12, 4), (32, 4), (6, 3)])
def test_paged_attention_head_size_64_pairs(num_heads, num_kv_heads, layout):
    # Head size 64 reads two adjacent KV heads as one row when a block can hold
    # both heads' queries (group size <= 4, an even number of adjacent heads):
    # paired (8/8, 12/4 with plain or interleaved caches) or not (32/4, 6/3,
    # head-major caches), every case matches the reference, splits included.
    torch.manual_seed(num_heads * 3 + num_kv_heads)
    run_and_check([0, 1, 300, 2000], num_heads, num_kv_heads, 64, 16, torch.bfloat16,
                  torch.bfloat16, layout=layout, strided_q=True)


@pytest.mark.parametrize("layout", ["plain", "interleaved", "head_major"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=dtype_id)
def test_paged_attention_strided_caches_and_query(layout, dtypes):
    torch.manual_seed(3)
    run_and_check([5, 129, 2000], 16, 4, 128, 16, *dtypes, layout=layout, strided_q=True,
                  scale=0.37)


@pytest.mark.parametrize("dtypes", [DTYPES[0], DTYPES[4]], ids=dtype_id)
def test_paged_attention_split_kv_long_mixed(dtypes):
    """A 32k context next to short ones: split over the context, then merged."""
    torch.manual_seed(11)
    run_and_check([32768, 17, 20000, 4097, 0], 32, 8, 128, 16, *dtypes)


@pytest.mark.parametrize("context", [1, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4095,
                                     8191, 8192])
def test_paged_attention_split_boundaries(context):
    """One sequence in a wide block table: many splits, most of them empty."""
    torch.manual_seed(context)
    run_and_check([context], 8, 1, 64, 16, torch.float32, torch.bfloat16, max_blocks=1024)


@pytest.mark.parametrize("dtypes,head_size,num_heads,num_kv_heads",
                         [(DTYPES[2], 256, 8, 1), (DTYPES[0], 128, 16, 2)],
                         ids=["f32-d256", "bf16-d128"])
def test_paged_attention_split_merge_batches(dtypes, head_size, num_heads, num_kv_heads):
    """More split outputs than the merging block holds in shared memory at once
    (eight query heads, many splits): it merges them in batches."""
    torch.manual_seed(head_size)
    run_and_check([32768, 5], num_heads, num_kv_heads, head_size, 16, *dtypes)


def test_paged_attention_split_merge_repeats():
    """The last block of each split row merges and resets its arrival counter: every
    launch merges (launches with other grids in between), with identical results."""
    torch.manual_seed(13)
    key_cache, value_cache, tables, lens = make_paged([20000, 3000, 0], 4, 128, 16,
                                                      torch.bfloat16)
    query = torch.randn(3, 16, 128, device=DEV, dtype=torch.bfloat16)
    other = make_paged([9000], 1, 64, 16, torch.float16)
    other_query = torch.randn(1, 8, 64, device=DEV, dtype=torch.float16)
    first = None
    for _ in range(4):
        ops.paged_attention(other_query, *other)
        out = torch.full_like(query, float("nan"))
        ops.paged_attention(query, key_cache, value_cache, tables, lens, out=out)
        if first is None:
            ref = ref_attention(query, key_cache, value_cache, tables, lens)
            assert rel_err(out, ref) < TOL[torch.bfloat16]
            first = out
        assert torch.equal(out, first)


def test_paged_attention_functional_form():
    torch.manual_seed(5)
    key_cache, value_cache, tables, lens = make_paged([10, 3000], 2, 64, 32, torch.float16)
    query = torch.randn(2, 8, 64, device=DEV, dtype=torch.float16)
    out = ops.paged_attention(query, key_cache, value_cache, tables, lens)
    assert out.shape == query.shape and out.dtype == query.dtype
    assert rel_err(out, ref_attention(query, key_cache, value_cache, tables, lens)) < 2e-3


@pytest.mark.parametrize("head_size", [16, 72, 112, 192])
def test_paged_attention_unsupported_head_size(head_size):
    key_cache, value_cache, tables, lens = make_paged([10], 2, head_size, 16, torch.float16)
    query = torch.randn(1, 4, head_size, device=DEV, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="Unsupported head_size"):
        ops.paged_attention(query, key_cache, value_cache, tables, lens, check=False)


def test_paged_attention_unsupported_block_size():
    key_cache, value_cache, tables, lens = make_paged([10], 2, 64, 24, torch.float16)
    query = torch.randn(1, 4, 64, device=DEV, dtype=torch.float16)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        ops.paged_attention(query, key_cache, value_cache, tables, lens, check=False)


# ---------------------------------------------------------------------------
# paged_attention_v1 (the seed's kernel)
# ---------------------------------------------------------------------------
def test_v1_seed_end_to_end():
    """The seed's test: float32 query, fp16 cache in shuffled physical blocks of an
    interleaved [num_blocks, block_size, 2, heads, head_size] cache, against SDPA."""
    torch.manual_seed(0)
    num_seqs, num_heads, head_size, block_size, seq_len = 2, 4, 64, 8, 100
    dtype = torch.float16
    query = torch.randn(num_seqs, num_heads, head_size, dtype=dtype, device=DEV)
    key = torch.randn(num_seqs, seq_len, num_heads, head_size, dtype=dtype, device=DEV)
    value = torch.randn(num_seqs, seq_len, num_heads, head_size, dtype=dtype, device=DEV)
    ground_truth = F.scaled_dot_product_attention(
        query.unsqueeze(2).float(), key.transpose(1, 2).float(), value.transpose(1, 2).float(),
    ).squeeze(2)

    blocks_per_seq = -(-seq_len // block_size)
    num_blocks = num_seqs * blocks_per_seq + 10
    kv_cache = torch.full((num_blocks, block_size, 2, num_heads, head_size), float("nan"),
                          dtype=dtype, device=DEV)
    physical = torch.randperm(num_blocks)[:num_seqs * blocks_per_seq].view(num_seqs, -1)
    for i in range(num_seqs):
        for logical, phys in enumerate(physical[i].tolist()):
            start, end = logical * block_size, min((logical + 1) * block_size, seq_len)
            kv_cache[phys, :end - start, 0] = key[i, start:end]
            kv_cache[phys, :end - start, 1] = value[i, start:end]
    block_table = physical.to(torch.int32).to(DEV)
    context_lens = torch.full((num_seqs,), seq_len, dtype=torch.int32, device=DEV)

    my_out = torch.empty_like(query, dtype=torch.float32)
    ops.paged_attention_v1(my_out, query.float(), kv_cache[:, :, 0], kv_cache[:, :, 1],
                           block_table, context_lens)
    torch.testing.assert_close(my_out, ground_truth, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("dtypes", DTYPES, ids=dtype_id)
def test_v1_vs_reference(dtypes, head_size):
    torch.manual_seed(head_size)
    q_dtype, cache_dtype = dtypes
    key_cache, value_cache, tables, lens = make_paged([0, 1, 33, 1500], 2, head_size, 16,
                                                      cache_dtype)
    query = torch.randn(4, 8, head_size, device=DEV).to(q_dtype)
    out = torch.full_like(query, float("nan"))
    ops.paged_attention_v1(out, query, key_cache, value_cache, tables, lens)
    err = rel_err(out, ref_attention(query, key_cache, value_cache, tables, lens))
    assert err < TOL[q_dtype], f"relative error {err:.2e}"


def test_v1_context_limit():
    key_cache, value_cache, _, _ = make_paged([16], 1, 64, 16, torch.float16)
    query = torch.randn(1, 1, 64, device=DEV, dtype=torch.float16)
    out = torch.empty_like(query)
    wide = torch.zeros(1, 32768 // 16 + 1, dtype=torch.int32, device=DEV)
    lens = torch.tensor([16], dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="paged_attention_v1 keeps every score"):
        torch.ops.mini_paged_attn.paged_attention_v1(out, query, key_cache, value_cache, wide,
                                                     lens)


# ---------------------------------------------------------------------------
# reshape_and_cache and copy_blocks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "interleaved", "head_major"])
@pytest.mark.parametrize("head_size", [3, 4, 64, 80, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reshape_and_cache(dtype, head_size, layout):
    torch.manual_seed(head_size)
    num_blocks, block_size, num_kv_heads, num_tokens = 9, 16, 3, 70
    key_cache, value_cache = make_caches(num_blocks, block_size, num_kv_heads, head_size, dtype,
                                         layout)
    key_cache.copy_(torch.randn(key_cache.shape, device=DEV))
    value_cache.copy_(torch.randn(value_cache.shape, device=DEV))
    key = torch.randn(num_tokens, num_kv_heads, head_size + 5, device=DEV).to(dtype)
    key = key[..., :head_size]  # strided rows
    value = torch.randn(num_tokens, num_kv_heads, head_size, device=DEV).to(dtype)
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[::7] = -1  # padding tokens are skipped
    slots = slots.to(DEV)
    expected_k, expected_v = key_cache.clone(), value_cache.clone()
    valid = slots >= 0
    expected_k[slots[valid] // block_size, slots[valid] % block_size] = key[valid]
    expected_v[slots[valid] // block_size, slots[valid] % block_size] = value[valid]
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache, expected_k)
    assert torch.equal(value_cache, expected_v)


@pytest.mark.parametrize("num_layers", [1, 3, 70])
@pytest.mark.parametrize("layout", ["plain", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_blocks(dtype, layout, num_layers):
    torch.manual_seed(num_layers)
    num_blocks, block_size, num_kv_heads, head_size = 24, 8, 2, 80
    key_caches, value_caches = [], []
    for _ in range(num_layers):
        k, v = make_caches(num_blocks, block_size, num_kv_heads, head_size, dtype, layout)
        k.copy_(torch.randn(k.shape, device=DEV))
        v.copy_(torch.randn(v.shape, device=DEV))
        key_caches.append(k)
        value_caches.append(v)
    perm = torch.randperm(num_blocks)
    mapping = torch.stack([perm[:6], perm[6:12]], dim=1).to(DEV)  # (src, dst), all distinct
    expected_k = [k.clone() for k in key_caches]
    expected_v = [v.clone() for v in value_caches]
    for ek, ev in zip(expected_k, expected_v):
        ek[mapping[:, 1]] = ek[mapping[:, 0]]
        ev[mapping[:, 1]] = ev[mapping[:, 0]]
    ops.copy_blocks(key_caches, value_caches, mapping)
    for got, want in zip(key_caches + value_caches, expected_k + expected_v):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------
# opcheck, CUDA graphs, no synchronisation
# ---------------------------------------------------------------------------
def _finite_paged(context_lens, num_kv_heads=2, head_size=64, block_size=16,
                  dtype=torch.float16):
    key_cache, value_cache, tables, lens = make_paged(context_lens, num_kv_heads, head_size,
                                                      block_size, dtype)
    # opcheck compares tensors across runs; NaN never equals itself.
    key_cache.nan_to_num_(0.0)
    value_cache.nan_to_num_(0.0)
    tables[tables == GARBAGE_BLOCK] = 0
    return key_cache, value_cache, tables, lens


def test_opcheck_attention_ops():
    torch.manual_seed(0)
    key_cache, value_cache, tables, lens = _finite_paged([5, 300])
    query = torch.randn(2, 8, 64, device=DEV, dtype=torch.float16)
    out = torch.empty_like(query)
    lib = torch.ops.mini_paged_attn
    torch.library.opcheck(lib.paged_attention.default,
                          (query, key_cache, value_cache, tables, lens, 0.125))
    torch.library.opcheck(lib.paged_attention_out.default,
                          (out, query, key_cache, value_cache, tables, lens, 0.125))
    torch.library.opcheck(lib.paged_attention_v1.default,
                          (out, query, key_cache, value_cache, tables, lens))


def test_opcheck_cache_ops():
    torch.manual_seed(0)
    key_cache, value_cache, _, _ = _finite_paged([40])
    key = torch.randn(4, 2, 64, device=DEV, dtype=torch.float16)
    value = torch.randn(4, 2, 64, device=DEV, dtype=torch.float16)
    slots = torch.tensor([3, -1, 17, 40], dtype=torch.int64, device=DEV)
    lib = torch.ops.mini_paged_attn
    torch.library.opcheck(lib.reshape_and_cache.default,
                          (key, value, key_cache, value_cache, slots))
    mapping = torch.tensor([[0, 3], [1, 4]], dtype=torch.int64, device=DEV)
    torch.library.opcheck(lib.copy_blocks.default, ([key_cache], [value_cache], mapping))


def test_check_false_does_not_synchronize():
    torch.manual_seed(0)
    key_cache, value_cache, tables, lens = make_paged([100, 9000], 2, 128, 16, torch.bfloat16)
    query = torch.randn(2, 8, 128, device=DEV, dtype=torch.bfloat16)
    new = torch.randn(2, 2, 128, device=DEV, dtype=torch.bfloat16)
    slots = torch.tensor([99, -1], dtype=torch.int64, device=DEV)
    mapping = torch.tensor([[0, 1]], dtype=torch.int64, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.reshape_and_cache(new, new, key_cache, value_cache, slots, check=False)
        ops.paged_attention(query, key_cache, value_cache, tables, lens, check=False)
        ops.copy_blocks([key_cache], [value_cache], mapping, check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture_and_replay():
    """reshape_and_cache + paged_attention (split-KV and merge included) captured
    once, replayed with new tokens, block tables and context lengths."""
    torch.manual_seed(0)
    num_seqs, num_heads, num_kv_heads, head_size, block_size = 4, 16, 4, 128, 16
    max_blocks = 1024  # 16k tokens a sequence: a few (sequence, kv head) pairs, so splits
    num_blocks = num_seqs * max_blocks
    dtype = torch.bfloat16
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, device=DEV).to(dtype)
    value_cache = torch.randn_like(key_cache)
    query = torch.empty(num_seqs, num_heads, head_size, device=DEV, dtype=dtype)
    new_key = torch.empty(num_seqs, num_kv_heads, head_size, device=DEV, dtype=dtype)
    new_value = torch.empty_like(new_key)
    tables = torch.zeros(num_seqs, max_blocks, dtype=torch.int32, device=DEV)
    lens = torch.ones(num_seqs, dtype=torch.int32, device=DEV)
    slots = torch.zeros(num_seqs, dtype=torch.int64, device=DEV)
    out = torch.empty_like(query)

    def step():
        ops.reshape_and_cache(new_key, new_value, key_cache, value_cache, slots, check=False)
        ops.paged_attention(query, key_cache, value_cache, tables, lens, out=out, check=False)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for trial in range(3):
        context = torch.randint(1, max_blocks * block_size + 1, (num_seqs,))
        context[trial] = max_blocks * block_size  # one full-length sequence each time
        lens.copy_(context.int())
        tables.copy_(torch.randperm(num_blocks).view(num_seqs, max_blocks).int())
        last = (context - 1).to(DEV)  # the token being appended
        slots.copy_(tables.long().gather(1, (last // block_size).view(-1, 1)).view(-1) *
                    block_size + last % block_size)
        query.copy_(torch.randn_like(query, dtype=torch.float32))
        new_key.copy_(torch.randn_like(new_key, dtype=torch.float32))
        new_value.copy_(torch.randn_like(new_value, dtype=torch.float32))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(key_cache[slots // block_size, slots % block_size], new_key)
        assert torch.equal(value_cache[slots // block_size, slots % block_size], new_value)
        err = rel_err(out, ref_attention(query, key_cache, value_cache, tables, lens))
        assert err < TOL[dtype], f"replay {trial}: relative error {err:.2e}"

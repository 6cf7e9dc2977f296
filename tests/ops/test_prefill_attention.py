"""paged_prefill_attention against a float64 reference, on every available device:
random shapes, GQA, partial and shuffled blocks, NaN in unused slots, and
chunked prefill (a prefix already cached, only the last tokens queried)."""
import random

import pytest
import torch

from mini_paged_attn import ops
from reference import random_paged_kv, ref_paged_prefill_attention, rel_err

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _case(seed, device, dtype, num_heads, num_kv_heads, head_size, block_size, lens, q_lens,
          interleaved=True, repeat_blocks=False):
    g = torch.Generator().manual_seed(seed)
    k, v, tables, ctx = random_paged_kv(len(lens), lens, num_kv_heads, head_size, block_size,
                                        dtype, device, interleaved=interleaved,
                                        repeat_blocks=repeat_blocks, generator=g)
    loc = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q = torch.randn(sum(q_lens), num_heads, head_size, generator=g).to(dtype).to(device)
    return q, k, v, tables, ctx, loc.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (12, 4), (8, 1)], ids=str)
@pytest.mark.parametrize("head_size", [64, 80, 128])
@pytest.mark.parametrize("block_size", [1, 16, 32])
def test_prefill_matches_reference(device, dtype, heads, head_size, block_size):
    num_heads, num_kv_heads = heads
    rng = random.Random(hash((str(dtype), heads, head_size, block_size)))
    # A whole prompt, a chunk after a cached prefix, one token, no token, and
    # partial last blocks.
    lens = [rng.randint(1, 90), rng.randint(40, 200), block_size + 1, rng.randint(1, 50),
            rng.randint(2, 70)]
    q_lens = [lens[0], rng.randint(2, 39), 1, 0, lens[4] - 1]
    order = list(range(len(lens)))
    rng.shuffle(order)
    lens, q_lens = [lens[i] for i in order], [q_lens[i] for i in order]
    q, k, v, tables, ctx, loc = _case(rng.randrange(1 << 30), device, dtype, num_heads,
                                      num_kv_heads, head_size, block_size, lens, q_lens,
                                      interleaved=rng.random() < 0.5,
                                      repeat_blocks=rng.random() < 0.5)
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    ref = ref_paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert not out.isnan().any(), "NaN from an unused slot leaked into the output"
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
def test_float32_query_with_half_cache(device, cache_dtype):
    q, k, v, tables, ctx, loc = _case(5, device, cache_dtype, 8, 2, 64, 16, [40, 70], [40, 9])
    q = q.float()
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert out.dtype == torch.float32
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < 1e-5


def test_long_prompt_and_scale_and_out(device):
    q, k, v, tables, ctx, loc = _case(1, device, torch.float32, 8, 2, 64, 16, [700, 300],
                                      [650, 300])
    out = torch.full_like(q, float("nan"))
    res = ops.paged_prefill_attention(q, k, v, tables, ctx, loc, scale=0.3, out=out)
    assert res is out
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc, scale=0.3)) < 1e-5


def test_one_token_queries_equal_decode(device):
    # A prefill of one new token per sequence is decode attention.
    q, k, v, tables, ctx, loc = _case(2, device, torch.float32, 8, 2, 64, 16, [33, 5, 80],
                                      [1, 1, 1])
    prefill = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    decode = ops.paged_attention(q, k, v, tables, ctx)
    assert rel_err(prefill, decode.double().cpu()) < 1e-5


def test_chunks_equal_whole_prompt(device):
    # Attending chunk by chunk over a growing cached prefix gives the rows of
    # one whole-prompt call.
    q, k, v, tables, ctx, loc = _case(3, device, torch.float32, 4, 2, 64, 8, [57], [57])
    whole = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    for start, end in [(0, 20), (20, 21), (21, 57)]:
        chunk_loc = torch.tensor([0, end - start], dtype=torch.int32, device=device)
        chunk_ctx = torch.tensor([end], dtype=torch.int32, device=device)
        part = ops.paged_prefill_attention(q[start:end], k, v, tables, chunk_ctx, chunk_loc)
        assert rel_err(part, whole[start:end].double().cpu()) < 1e-6


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# The CUDA prefill kernels MINI_PAGED_ATTN_CUDA_PREFILL selects: auto (the
# default: wgmma where it exists, else mma.sync), mma.sync
# tensor cores, wgmma (Hopper, head sizes 64 and 128; elsewhere it falls back
# to mma.sync), and the float32 CUDA-core fallback.
KERNELS = ["auto", "tensor-core", "wgmma", "cuda-core"]


@CUDA
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_size", [32, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("heads", [(4, 4), (16, 4), (16, 2), (14, 2)], ids=str)
def test_cuda_prefill_long_prompts(monkeypatch, kernel, dtype, head_size, heads):
    # Prompts over many query and key tiles, a chunk after a long cached
    # prefix, partial last blocks and block sizes 8 and 16 (GQA ratios 1, 4, 8,
    # 7), on every CUDA kernel (the CUDA-core one has no head size 32).
    if kernel == "cuda-core" and head_size == 32:
        pytest.skip("the CUDA-core kernel has no head size 32")
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", kernel)
    rng = random.Random(hash((str(dtype), head_size, heads)))
    block_size = rng.choice([8, 16])
    lens = [rng.randint(300, 700), rng.randint(500, 900), rng.randint(1, 70), 129]
    q_lens = [lens[0], rng.randint(60, 200), lens[2], 0]
    q, k, v, tables, ctx, loc = _case(rng.randrange(1 << 30), "cuda", dtype, heads[0], heads[1],
                                      head_size, block_size, lens, q_lens,
                                      interleaved=rng.random() < 0.5)
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    ref = ref_paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert not out.isnan().any(), "NaN from an unused slot leaked into the output"
    assert rel_err(out, ref) < TOL[dtype]


@CUDA
@pytest.mark.parametrize("head_size", [64, 128])
def test_cuda_prefill_auto_on_long_contexts(monkeypatch, head_size):
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", "auto")
    q, k, v, tables, ctx, loc = _case(11, "cuda", torch.bfloat16, 16, 4, head_size, 16,
                                      [2300, 700], [400, 700])
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert not out.isnan().any()
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[torch.bfloat16]


@CUDA
@pytest.mark.parametrize("head_size", [64, 128])
def test_cuda_prefill_many_tiles_per_cta(monkeypatch, head_size):
    # Far more tiles than SMs, so the persistent wgmma kernel's CTAs walk many
    # tiles each (its shared-memory rings wrap around across tiles), with
    # sequences of mixed length and some of a single token. The result is
    # bitwise the same from run to run.
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", "wgmma")
    rng = random.Random(head_size)
    lens = [rng.choice([1, rng.randint(2, 140), rng.randint(200, 400)]) for _ in range(96)]
    q, k, v, tables, ctx, loc = _case(13, "cuda", torch.bfloat16, 32, 8, head_size, 16, lens,
                                      lens)
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert not out.isnan().any()
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[torch.bfloat16]
    assert torch.equal(out, ops.paged_prefill_attention(q, k, v, tables, ctx, loc))


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_head_sizes_are_served(dtype):
    # ops.cuda_head_sizes (what LLM checks a model against at load) names sizes
    # that both CUDA attention ops take, decode and prefill.
    for head_size in ops.cuda_head_sizes(dtype):
        q, k, v, tables, ctx, loc = _case(14, "cuda", dtype, 4, 2, head_size, 16, [40], [40])
        out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
        assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[dtype]
        ops.paged_attention(q[-1:], k, v, tables, ctx)


@CUDA
def test_cuda_prefill_key_and_value_layouts_differ():
    # The tensor-core kernels read a K row and its V row at one offset; a value
    # cache laid out otherwise takes the CUDA-core kernel, with the same result.
    q, k, v, tables, ctx, loc = _case(12, "cuda", torch.float16, 8, 2, 64, 16, [300, 90],
                                      [300, 40])
    v_other = v.transpose(1, 2).contiguous().transpose(1, 2)  # [blocks, heads, slots, d] in memory
    assert v_other.stride() != k.stride()
    out = ops.paged_prefill_attention(q, k, v_other, tables, ctx, loc)
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[torch.float16]


@CUDA
def test_cuda_prefill_kernel_variable_checked(monkeypatch):
    q, k, v, tables, ctx, loc = _case(6, "cuda", torch.bfloat16, 8, 2, 64, 16, [20], [20])
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", "fast")
    with pytest.raises(ValueError, match="MINI_PAGED_ATTN_CUDA_PREFILL"):
        ops.paged_prefill_attention(q, k, v, tables, ctx, loc)


@CUDA
@pytest.mark.parametrize("offset", [0, 1], ids=["strided", "misaligned"])
def test_tensor_core_prefill_strided_query(offset):
    # A query that is a view of a fused qkv projection; with an odd element
    # offset its rows are not 16-byte aligned and the CUDA-core kernel runs.
    q, k, v, tables, ctx, loc = _case(6, "cuda", torch.bfloat16, 8, 2, 64, 16, [150, 90],
                                      [150, 40])
    qkv = torch.randn(q.size(0), 12 * 64 + offset, dtype=q.dtype, device="cuda")
    qv = qkv[:, offset:offset + 8 * 64].view(q.size(0), 8, 64)
    qv.copy_(q)
    out = torch.empty(q.size(0), 16, 64, dtype=q.dtype, device="cuda")[:, ::2]
    ops.paged_prefill_attention(qv, k, v, tables, ctx, loc, out=out)
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < 1e-2


@pytest.mark.parametrize("scale", [-0.2, 0.0, 2.0])
def test_any_scale(device, scale):
    # Scales that are not positive take the CUDA-core kernel on the GPU.
    q, k, v, tables, ctx, loc = _case(8, device, torch.bfloat16, 8, 2, 64, 16, [130, 70],
                                      [130, 20])
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc, scale=scale)
    ref = ref_paged_prefill_attention(q, k, v, tables, ctx, loc, scale=scale)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("kernel", KERNELS[:3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scores_growing_away_from_the_diagonal(monkeypatch, device, kernel, dtype):
    # Keys far from the diagonal score highest, so every key tile raises the
    # running max (kernels walk the keys from the diagonal down) and the
    # output is rescaled again and again.
    if device == "cpu" and kernel != KERNELS[0]:
        pytest.skip("one CPU kernel")
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", kernel)
    q, k, v, tables, ctx, loc = _case(9, device, dtype, 8, 2, 64, 16, [700], [300])
    pos = torch.arange(700, device=device)
    blocks = tables[0].long()[pos // 16]
    k[blocks, pos % 16] *= (1 + (700 - pos) / 50).to(dtype)[:, None, None]
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[dtype]


@CUDA
@pytest.mark.parametrize("kernel", KERNELS[:3])
def test_tensor_core_prefill_in_cuda_graph(monkeypatch, kernel):
    monkeypatch.setenv("MINI_PAGED_ATTN_CUDA_PREFILL", kernel)
    q, k, v, tables, ctx, loc = _case(7, "cuda", torch.float16, 16, 4, 128, 16, [300, 200],
                                      [300, 50])
    out = torch.empty_like(q)
    ops.paged_prefill_attention(q, k, v, tables, ctx, loc, out=out)  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.paged_prefill_attention(q, k, v, tables, ctx, loc, out=out, check=False)
    # Twice: state the launch keeps on the device (the wgmma kernel's tile
    # counter) must start afresh at each replay.
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < 2e-3


def _valid(device):
    return _case(4, device, torch.float32, 8, 2, 64, 16, [20, 9], [5, 9])


def _set(name, index, value):
    return lambda a: a[name].__setitem__(index, value)


@pytest.mark.parametrize("mutate,exc,name", [
    (lambda a: a.update(query=a["query"][0]), ValueError, "query"),
    (lambda a: a.update(query=a["query"].double()), TypeError, "query"),
    (lambda a: a.update(query=a["query"][:, :5]), ValueError, "num_heads"),
    (lambda a: a.update(key_cache=a["key_cache"].half()), TypeError, "key_cache"),
    (lambda a: a.update(block_tables=a["block_tables"][:1]), ValueError, "block_tables"),
    (lambda a: a.update(context_lens=a["context_lens"].long()), TypeError, "context_lens"),
    (lambda a: a.update(query_start_loc=a["query_start_loc"].long()), TypeError,
     "query_start_loc"),
    (lambda a: a.update(query_start_loc=a["query_start_loc"][:2]), ValueError,
     "query_start_loc"),
    (_set("query_start_loc", 0, 1), ValueError, "query_start_loc"),
    (_set("query_start_loc", 1, 15), ValueError, "query_start_loc"),
    (_set("query_start_loc", 2, 13), ValueError, "query_start_loc"),
    (_set("context_lens", 1, 8), ValueError, "context_lens"),
    (_set("block_tables", (0, 0), 10**6), IndexError, "block_tables"),
    (lambda a: a.update(out=torch.full((14, 8, 32), 7.0, device=a["query"].device)),
     ValueError, "out"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input(device, mutate, exc, name):
    q, k, v, tables, ctx, loc = _valid(device)
    args = dict(query=q, key_cache=k, value_cache=v, block_tables=tables, context_lens=ctx,
                query_start_loc=loc)
    mutate(args)
    args.setdefault("out", torch.full_like(args["query"], 7.0))
    out_before = args["out"].clone()
    with pytest.raises(exc, match=name):
        ops.paged_prefill_attention(**args)
    assert torch.equal(args["out"], out_before)


def test_opcheck_and_compile(device):
    q, k, v, tables, ctx, loc = _valid(device)
    # opcheck compares outputs across runs, and NaN never equals itself.
    k, v = k.nan_to_num(), v.nan_to_num()
    lib = torch.ops.mini_paged_attn
    torch.library.opcheck(lib.paged_prefill_attention.default,
                          (q, k, v, tables, ctx, loc, 0.125))
    torch.library.opcheck(lib.paged_prefill_attention_out.default,
                          (torch.empty_like(q), q, k, v, tables, ctx, loc, 0.125))
    # Strided query and out (every other head of wider tensors).
    wide = torch.randn(q.size(0), 2 * q.size(1), q.size(2), device=q.device)
    torch.library.opcheck(lib.paged_prefill_attention.default,
                          (wide[:, ::2], k, v, tables, ctx, loc, 0.125))
    torch.library.opcheck(lib.paged_prefill_attention_out.default,
                          (torch.empty_like(wide)[:, 1::2], wide[:, ::2], k, v, tables, ctx, loc,
                           0.125))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(q):
        return ops.paged_prefill_attention(q * 2, k, v, tables, ctx, loc, check=False) + 1

    expected = ops.paged_prefill_attention(q * 2, k, v, tables, ctx, loc) + 1
    assert torch.allclose(step(q), expected)

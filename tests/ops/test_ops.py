"""paged_attention, paged_attention_v1, reshape_and_cache and copy_blocks
against naive float64 references, on every available device."""
import math
import random

import pytest
import torch

from mini_paged_attn import ops
from reference import random_paged_kv, ref_paged_attention, rel_err

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _case(seed, device, dtype, num_heads, num_kv_heads, head_size, block_size, lens,
          interleaved=True, repeat_blocks=False, query_dtype=None):
    g = torch.Generator().manual_seed(seed)
    k, v, tables, ctx = random_paged_kv(len(lens), lens, num_kv_heads, head_size, block_size,
                                        dtype, device, interleaved=interleaved,
                                        repeat_blocks=repeat_blocks, generator=g)
    q = torch.randn(len(lens), num_heads, head_size, generator=g)
    return q.to(query_dtype or dtype).to(device), k, v, tables, ctx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [(8, 8), (16, 4), (32, 4), (8, 1)], ids=str)
@pytest.mark.parametrize("head_size", [64, 80, 128, 256])
@pytest.mark.parametrize("block_size", [1, 8, 16, 32])
def test_paged_attention_matches_reference(device, dtype, heads, head_size, block_size):
    num_heads, num_kv_heads = heads
    rng = random.Random(hash((str(dtype), heads, head_size, block_size)))
    # Partial last blocks, the empty and one-token contexts, and a long one.
    lens = [0, 1, block_size + 1, rng.randint(2, 300), rng.randint(300, 700)]
    rng.shuffle(lens)
    q, k, v, tables, ctx = _case(rng.randrange(1 << 30), device, dtype, num_heads, num_kv_heads,
                                 head_size, block_size, lens,
                                 interleaved=rng.random() < 0.5, repeat_blocks=rng.random() < 0.5)
    out = ops.paged_attention(q, k, v, tables, ctx)
    ref = ref_paged_attention(q, k, v, tables, ctx)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert not out.isnan().any(), "NaN from an unused slot leaked into the output"
    assert rel_err(out, ref) < TOL[dtype]
    assert (out[ctx.cpu() == 0] == 0).all()


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
def test_float32_query_with_half_cache(device, cache_dtype):
    q, k, v, tables, ctx = _case(1, device, cache_dtype, 8, 2, 64, 16, [5, 40, 33],
                                 query_dtype=torch.float32)
    out = ops.paged_attention(q, k, v, tables, ctx)
    assert out.dtype == torch.float32
    assert rel_err(out, ref_paged_attention(q, k, v, tables, ctx)) < 1e-5


def test_scale_and_out(device):
    q, k, v, tables, ctx = _case(2, device, torch.float32, 4, 4, 64, 8, [9, 17])
    out = torch.full_like(q, float("nan"))
    res = ops.paged_attention(q, k, v, tables, ctx, scale=0.3, out=out)
    assert res is out
    assert rel_err(out, ref_paged_attention(q, k, v, tables, ctx, scale=0.3)) < 1e-5


def test_strided_query_out_and_block_tables(device):
    q, k, v, tables, ctx = _case(3, device, torch.float32, 8, 2, 64, 16, [20, 70, 3])
    wide_q = torch.randn(3, 16, 64, device=device)[:, ::2]
    wide_q.copy_(q)
    wide_tables = torch.zeros(3, tables.size(1) * 2, dtype=torch.int32, device=device)
    wide_tables[:, :tables.size(1)] = tables
    out = torch.empty(3, 8, 128, device=device)[..., :64]
    ops.paged_attention(wide_q, k, v, wide_tables[:, :tables.size(1)], ctx, out=out)
    assert rel_err(out, ref_paged_attention(q, k, v, tables, ctx)) < 1e-5


def test_long_context_is_split_and_merged(device):
    # One long sequence and one short: the CPU kernel splits the long one into
    # partitions and merges them; the result must not depend on that.
    q, k, v, tables, ctx = _case(4, device, torch.float32, 8, 2, 64, 16, [5000, 3])
    out = ops.paged_attention(q, k, v, tables, ctx)
    assert rel_err(out, ref_paged_attention(q, k, v, tables, ctx)) < 1e-5


def test_paged_attention_v1_seed_signature(device):
    q, k, v, tables, ctx = _case(5, device, torch.float16, 4, 4, 64, 8, [100, 57],
                                 query_dtype=torch.float32)
    out = torch.empty_like(q)
    assert ops.paged_attention_v1(out, q, k, v, tables, ctx) is None
    ref = ref_paged_attention(q, k, v, tables, ctx, scale=1 / math.sqrt(64))
    assert rel_err(out, ref) < 1e-5


def test_reshape_and_cache(device):
    g = torch.Generator().manual_seed(6)
    num_blocks, block_size, kv_heads, head_size = 6, 4, 2, 32
    kv = torch.randn(num_blocks, block_size, 2, kv_heads, head_size, generator=g).to(device)
    key_cache, value_cache = kv[:, :, 0], kv[:, :, 1]
    before = kv.clone()
    key = torch.randn(5, kv_heads, head_size, generator=g).to(device)
    value = torch.randn(5, kv_heads, head_size, generator=g).to(device)
    slots = torch.tensor([7, -1, 0, 23, 12], device=device)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots)
    expected = before.clone()
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            expected[s // block_size, s % block_size, 0] = key[i]
            expected[s // block_size, s % block_size, 1] = value[i]
    assert torch.equal(kv, expected)


def test_copy_blocks(device):
    g = torch.Generator().manual_seed(7)
    layers = [torch.randn(2, 5, 4, 2, 16, generator=g).to(device) for _ in range(3)]
    before = [t.clone() for t in layers]
    mapping = torch.tensor([[0, 3], [2, 4]], device=device)
    ops.copy_blocks([t[0] for t in layers], [t[1] for t in layers], mapping)
    for t, b in zip(layers, before):
        expected = b.clone()
        expected[:, 3], expected[:, 4] = b[:, 0], b[:, 2]
        assert torch.equal(t, expected)


# -- bad input: a clear exception naming the argument, nothing written --------------

def _valid(device):
    return _case(8, device, torch.float32, 8, 2, 64, 16, [20, 9])


@pytest.mark.parametrize("mutate,exc,name", [
    (lambda a: a.update(query=a["query"][0]), ValueError, "query"),
    (lambda a: a.update(query=a["query"].double()), TypeError, "query"),
    (lambda a: a.update(query=a["query"].to(torch.int32)), TypeError, "query"),
    (lambda a: a.update(query=a["query"].transpose(1, 2).contiguous().transpose(1, 2)),
     ValueError, "query"),
    (lambda a: a.update(query=a["query"][:, :5]), ValueError, "num_heads"),
    (lambda a: a.update(query=a["query"][:, :, :32]), ValueError, "head_size"),
    (lambda a: a.update(key_cache=a["key_cache"][..., 0]), ValueError, "key_cache"),
    (lambda a: a.update(key_cache=a["key_cache"].half()), TypeError, "key_cache"),
    (lambda a: a.update(value_cache=a["value_cache"][:3]), ValueError, "value_cache"),
    (lambda a: a.update(block_tables=a["block_tables"].long()), TypeError, "block_tables"),
    (lambda a: a.update(block_tables=a["block_tables"][:1]), ValueError, "block_tables"),
    (lambda a: a.update(context_lens=a["context_lens"].long()), TypeError, "context_lens"),
    (lambda a: a.update(context_lens=a["context_lens"][:1]), ValueError, "context_lens"),
    (lambda a: a["block_tables"].__setitem__((0, 0), 10**6), IndexError, "block_tables"),
    (lambda a: a["block_tables"].__setitem__((1, 0), -1), IndexError, "block_tables"),
    (lambda a: a["context_lens"].__setitem__(0, 10**6), ValueError, "context_lens"),
    (lambda a: a["context_lens"].__setitem__(1, -1), ValueError, "context_lens"),
    (lambda a: a.update(out=torch.full((2, 8, 32), 7.0, device=a["query"].device)),
     ValueError, "out"),
    (lambda a: a.update(out=torch.full((2, 8, 64), 7.0, dtype=torch.half,
                                       device=a["query"].device)), TypeError, "out"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_paged_attention_bad_input(device, mutate, exc, name):
    q, k, v, tables, ctx = _valid(device)
    args = dict(query=q, key_cache=k, value_cache=v, block_tables=tables, context_lens=ctx)
    mutate(args)
    args.setdefault("out", torch.full_like(args["query"], 7.0))
    out_before = args["out"].clone()
    with pytest.raises(exc, match=name):
        ops.paged_attention(**args)
    assert torch.equal(args["out"], out_before)


def test_paged_attention_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    q, k, v, tables, ctx = _valid("cuda")
    with pytest.raises(ValueError, match="context_lens"):
        ops.paged_attention(q, k, v, tables, ctx.cpu())


def test_reshape_and_cache_bad_input(device):
    kv = torch.zeros(4, 4, 2, 2, 8, device=device)
    kc, vc = kv[:, :, 0], kv[:, :, 1]
    key = torch.randn(3, 2, 8, device=device)
    slots = torch.tensor([0, 1, 2], device=device)
    cases = [
        (dict(slot_mapping=slots.int()), TypeError, "slot_mapping"),
        (dict(slot_mapping=slots[:2]), ValueError, "slot_mapping"),
        (dict(slot_mapping=torch.tensor([0, 1, 16], device=device)), IndexError, "slot_mapping"),
        (dict(key=key.half()), TypeError, "key"),
        (dict(key=key[:, :1]), ValueError, "key"),
        (dict(value=key[:2]), ValueError, "value"),
        (dict(key_cache=kc[..., :4]), ValueError, "value_cache"),
    ]
    for override, exc, name in cases:
        args = dict(key=key, value=key.clone(), key_cache=kc, value_cache=vc, slot_mapping=slots)
        args.update(override)
        with pytest.raises(exc, match=name):
            ops.reshape_and_cache(**args)
    assert (kv == 0).all(), "a rejected call wrote into the cache"


def test_copy_blocks_bad_input(device):
    kc = torch.zeros(4, 2, 1, 8, device=device)
    vc = torch.zeros(4, 2, 1, 8, device=device)
    pairs = torch.tensor([[0, 1]], device=device)
    cases = [
        (([kc], [vc], torch.tensor([[0, 4]], device=device)), IndexError, "block_mapping"),
        (([kc], [vc], torch.tensor([[0, 1], [2, 1]], device=device)), ValueError,
         "block_mapping"),
        (([kc], [vc], torch.tensor([[0, 1], [1, 2]], device=device)), ValueError,
         "block_mapping"),
        (([kc], [vc], pairs.int()), TypeError, "block_mapping"),
        (([kc], [vc], pairs.view(2)), ValueError, "block_mapping"),
        (([kc], [vc, vc], pairs), ValueError, "value_caches"),
        (([kc, kc[:2]], [vc, vc[:2]], pairs), ValueError, "key_caches"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc, match=name):
            ops.copy_blocks(*args)


# -- torch.library contract (schemas, fake tensors, torch.compile) ------------------

def test_opcheck(device):
    q, k, v, tables, ctx = _case(9, device, torch.float32, 8, 2, 64, 16, [20, 9])
    # A strided query (every other head of a wider tensor): the fake output must
    # have the real op's (contiguous) strides.
    wide = torch.randn(q.size(0), 2 * q.size(1), q.size(2), device=device)[:, ::2]
    torch.library.opcheck(torch.ops.mini_paged_attn.paged_attention,
                          (wide, k, v, tables, ctx, 0.125))
    torch.library.opcheck(torch.ops.mini_paged_attn.paged_attention,
                          (q, k, v, tables, ctx, 0.125))
    torch.library.opcheck(torch.ops.mini_paged_attn.paged_attention_out,
                          (torch.empty_like(q), q, k, v, tables, ctx, 0.125))
    torch.library.opcheck(torch.ops.mini_paged_attn.paged_attention_v1,
                          (torch.empty_like(q), q, k, v, tables, ctx))
    key = torch.randn(3, 2, 64, device=device)
    torch.library.opcheck(torch.ops.mini_paged_attn.reshape_and_cache,
                          (key, key.clone(), k.clone(), v.clone(),
                           torch.tensor([0, 5, -1], device=device)))
    # Key and value as views of one fused [tokens, 2, kv_heads, head_size] projection.
    kv = torch.randn(3, 2, 2, 64, device=device)
    torch.library.opcheck(torch.ops.mini_paged_attn.reshape_and_cache,
                          (kv[:, 0], kv[:, 1], k.clone(), v.clone(),
                           torch.tensor([0, 5, -1], device=device)))
    torch.library.opcheck(torch.ops.mini_paged_attn.paged_attention_out,
                          (torch.empty_like(wide), wide, k, v, tables, ctx, 0.125))
    torch.library.opcheck(torch.ops.mini_paged_attn.copy_blocks,
                          ([k.clone()], [v.clone()], torch.tensor([[0, 1]], device=device)))


def test_torch_compile(device):
    q, k, v, tables, ctx = _case(10, device, torch.float32, 8, 2, 64, 16, [20, 9])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(q, k, v, tables, ctx):
        return ops.paged_attention(q * 2, k, v, tables, ctx, check=False) + 1

    expected = ops.paged_attention(q * 2, k, v, tables, ctx) + 1
    assert torch.allclose(step(q, k, v, tables, ctx), expected)


@pytest.mark.parametrize("name", ["query", "key_cache", "block_tables", "context_lens", "out"])
def test_meta_mixed_with_real_tensors_is_refused(name):
    # Any meta argument dispatches to the fake implementation, which must
    # check devices as the real op does rather than return uninitialised memory.
    q, k, v, tables, ctx = _case(11, "cpu", torch.float32, 8, 2, 64, 16, [20, 9])
    args = dict(query=q, key_cache=k, value_cache=v, block_tables=tables, context_lens=ctx,
                out=torch.zeros_like(q))
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match="meta"):
        ops.paged_attention(**args, check=False)
    with pytest.raises(ValueError, match="meta"):
        ops.reshape_and_cache(q[:, :2], q[:, :2], k.to("meta"), v.to("meta"),
                              torch.arange(q.size(0)))


def test_all_meta_gives_shapes():
    q, k, v, tables, ctx = (t.to("meta") for t in _case(12, "cpu", torch.float32, 8, 2, 64, 16,
                                                        [20, 9]))
    out = ops.paged_attention(q, k, v, tables, ctx, check=False)
    assert out.device.type == "meta" and out.shape == q.shape


def test_traced_calls_run_the_real_checks():
    # Under torch.compile the fake implementation sees a bad head count first.
    q, k, v, tables, ctx = _case(13, "cpu", torch.float32, 8, 2, 64, 16, [20, 9])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(q):
        return ops.paged_attention(q[:, :5], k, v, tables, ctx, check=False)

    with pytest.raises(Exception, match="num_heads"):
        step(q)

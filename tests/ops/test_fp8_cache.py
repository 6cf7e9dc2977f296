"""fp8 KV caches (float8_e4m3fn, float8_e5m2) with per-tensor scales:
reshape_and_cache's quantization bit for bit against torch's cast, decode and
prefill attention against a float64 reference on the dequantized cache, under
every CPU instruction-set variant, and the argument checks.

Tolerance (relative Frobenius error against float64 on the dequantized cache):
1e-5 for a float32 query, 1e-2 for a bfloat16 one (its output rounding), as for
16-bit caches: the kernels decode every fp8 code exactly and compute in float32.
"""
import functools
import zlib

import pytest
import torch

from mini_paged_attn import ops
from reference import (FP8_DTYPES, dequantize_fp8, quantize_fp8, random_fp8_paged_kv,
                       ref_paged_attention, ref_paged_prefill_attention, rel_err)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
SCALES = (0.37, 2.5)  # k_scale, v_scale


def _seed(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(" ".join(map(str, parts)).encode()))


@pytest.mark.parametrize("fp8", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("query_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads,head_size,block_size", [((8, 2), 64, 16), ((4, 4), 80, 8),
                                                        ((16, 2), 128, 32), ((6, 1), 96, 1)])
def test_decode_matches_reference(isa, fp8, query_dtype, heads, head_size, block_size):
    g = _seed(isa, fp8, query_dtype, heads, head_size)
    lens = torch.randint(1, 300, (5,), generator=g).tolist()
    k, v, tables, ctx = random_fp8_paged_kv(5, lens, heads[1], head_size, block_size, fp8,
                                            *SCALES, generator=g, repeat_blocks=True)
    q = torch.randn(5, heads[0], head_size, generator=g).to(query_dtype)
    out = ops.paged_attention(q, k, v, tables, ctx, k_scale=SCALES[0], v_scale=SCALES[1])
    assert out.dtype == query_dtype
    ref = ref_paged_attention(q, dequantize_fp8(k, SCALES[0]), dequantize_fp8(v, SCALES[1]),
                              tables, ctx)
    assert rel_err(out, ref) < TOL[query_dtype]


@pytest.mark.parametrize("fp8", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("query_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prefill_matches_reference(isa, fp8, query_dtype):
    g = _seed(isa, fp8, query_dtype)
    lens, q_lens = [70, 130, 17], [70, 33, 1]
    k, v, tables, ctx = random_fp8_paged_kv(3, lens, 2, 64, 8, fp8, *SCALES, generator=g)
    q = torch.randn(sum(q_lens), 8, 64, generator=g).to(query_dtype)
    loc = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc, k_scale=torch.tensor(SCALES[0]),
                                      v_scale=SCALES[1])
    ref = ref_paged_prefill_attention(q, dequantize_fp8(k, SCALES[0]),
                                      dequantize_fp8(v, SCALES[1]), tables, ctx, loc)
    assert rel_err(out, ref) < TOL[query_dtype]


@pytest.mark.parametrize("fp8", FP8_DTYPES, ids=str)
def test_every_code_decodes_exactly(isa, fp8):
    # One cached token: the output is that token's value row times v_scale, so
    # the 256 codes (NaN and, for e5m2, inf included) are checked bit for bit.
    codes = torch.arange(256, dtype=torch.uint8).view(fp8).view(1, 1, 2, 128)
    k = torch.zeros_like(codes)
    q = torch.randn(1, 4, 128)
    tables, ctx = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    expected = (codes.float() * 0.75).view(2, 1, 128).expand(2, 2, 128).reshape(1, 4, 128)
    out = ops.paged_attention(q, k, codes, tables, ctx, v_scale=0.75)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    loc = torch.tensor([0, 1], dtype=torch.int32)
    out = ops.paged_prefill_attention(q, k, codes, tables, ctx, loc, v_scale=0.75)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("fp8", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reshape_and_cache_quantizes_like_torch(fp8, src_dtype):
    g = _seed(fp8, src_dtype)
    key = (torch.randn(40, 2, 64, generator=g) * 3000).to(src_dtype)
    value = torch.randn(40, 2, 64, generator=g).to(src_dtype)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-9, 230.0,
                             231.9, -232.1, 1e30]).to(src_dtype)
    key[0, 0, :10] = specials  # 230..232 / 0.5 straddle e4m3fn's 448..464 rounding edge
    slots = torch.randperm(8 * 16, generator=g)[:40]
    slots[3] = -1  # padding: skipped
    k_cache = torch.full((8, 16, 2, 64), float("nan")).to(fp8)
    v_cache = k_cache.clone()
    ops.reshape_and_cache(key, value, k_cache, v_cache, slots, k_scale=0.5, v_scale=0.01)
    expected_k = torch.full_like(k_cache, float("nan")).view(-1, 2, 64)
    expected_v = expected_k.clone()
    keep = slots >= 0
    expected_k[slots[keep]] = quantize_fp8(key[keep], 0.5, fp8)
    expected_v[slots[keep]] = quantize_fp8(value[keep], 0.01, fp8)
    assert torch.equal(k_cache.view(torch.uint8).view(-1, 2, 64), expected_k.view(torch.uint8))
    assert torch.equal(v_cache.view(torch.uint8).view(-1, 2, 64), expected_v.view(torch.uint8))
    assert not torch.isnan(k_cache.view(-1, 2, 64)[slots[keep]][1:].float()).any()


def test_scales_are_ignored_by_other_caches():
    g = _seed("ignored")
    k = torch.randn(4, 16, 2, 64, generator=g).bfloat16()
    v = torch.randn(4, 16, 2, 64, generator=g).bfloat16()
    q = torch.randn(2, 4, 64, generator=g).bfloat16()
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    ctx = torch.tensor([20, 31], dtype=torch.int32)
    plain = ops.paged_attention(q, k, v, tables, ctx)
    assert torch.equal(ops.paged_attention(q, k, v, tables, ctx, k_scale=3.0, v_scale=0.1), plain)
    k2 = k.clone()
    ops.reshape_and_cache(q[:, :2], q[:, :2], k2, v.clone(), torch.tensor([0, 1]), k_scale=4.0)
    assert torch.equal(k2[0, :2], q[:, :2])


def _fp8_case():
    k = torch.zeros(2, 16, 2, 64, dtype=torch.float8_e4m3fn)
    q = torch.randn(1, 4, 64)
    tables, ctx = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    return q, k, tables, ctx


@pytest.mark.parametrize("name", ["k_scale", "v_scale"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scales(name, bad):
    q, k, tables, ctx = _fp8_case()
    loc = torch.tensor([0, 1], dtype=torch.int32)
    calls = [lambda **s: ops.paged_attention(q, k, k, tables, ctx, **s),
             lambda **s: ops.paged_prefill_attention(q, k, k, tables, ctx, loc, **s),
             lambda **s: ops.reshape_and_cache(q[:, :2], q[:, :2], k, k, torch.tensor([0]), **s)]
    for call in calls:
        with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
            call(**{name: bad})
        with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
            call(**{name: torch.tensor(bad)})  # a 0-d tensor is checked alike
    with pytest.raises(ValueError, match=f"{name} must be a float or a 0-d tensor"):
        calls[0](**{name: torch.ones(1)})
    with pytest.raises(TypeError, match=f"{name} must be a float"):
        calls[0](**{name: "1.0"})


def test_dtype_rules():
    q, k, tables, ctx = _fp8_case()
    with pytest.raises(TypeError, match="query must be float32, float16 or bfloat16"):
        ops.paged_attention(q.to(torch.float8_e4m3fn), k, k, tables, ctx)
    with pytest.raises(TypeError, match="value_cache dtype"):
        ops.paged_attention(q, k, k.to(torch.float8_e5m2), tables, ctx)
    with pytest.raises(TypeError, match="key must be float32, float16 or bfloat16"):
        ops.reshape_and_cache(k[0, :1], k[0, :1], k, k, torch.tensor([0]))
    with pytest.raises(TypeError, match="value dtype"):
        ops.reshape_and_cache(q[:, :2], q[:, :2].half(), k, k, torch.tensor([0]))


def _fake_cuda_case():
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    with mode:
        k = torch.empty(2, 16, 2, 64, dtype=torch.float8_e4m3fn, device="cuda")
        q = torch.empty(1, 4, 64, dtype=torch.bfloat16, device="cuda")
        tables = torch.zeros(1, 1, dtype=torch.int32, device="cuda")
        ctx = torch.ones(1, dtype=torch.int32, device="cuda")
        loc = torch.zeros(2, dtype=torch.int32, device="cuda")
        slots = torch.zeros(1, dtype=torch.int64, device="cuda")
        key = torch.empty(1, 2, 64, dtype=torch.bfloat16, device="cuda")
    return mode, q, k, tables, ctx, loc, slots, key


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="fake CUDA tensors are for machines without one; see the next test")
def test_fp8_on_cuda_is_a_clear_error():
    # The shared checks reject fp8 caches on CUDA before any launcher runs;
    # fake CUDA tensors go through those same checks, so this runs without a GPU.
    mode, q, k, tables, ctx, loc, slots, key = _fake_cuda_case()
    with mode:
        calls = [lambda: ops.paged_attention(q, k, k, tables, ctx, check=False),
                 lambda: ops.paged_prefill_attention(q, k, k, tables, ctx, loc, check=False),
                 lambda: ops.reshape_and_cache(key, key, k, k, slots, check=False)]
        for call in calls:
            with pytest.raises(NotImplementedError,
                               match="key_cache is Float8_e4m3fn: fp8 KV cache is not "
                                     "implemented on CUDA yet"):
                call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_on_a_real_gpu_is_a_clear_error():
    q, k, tables, ctx = (t.cuda() for t in _fp8_case())
    with pytest.raises(NotImplementedError, match="fp8 KV cache is not implemented on CUDA"):
        ops.paged_attention(q, k, k, tables, ctx)


@pytest.mark.parametrize("fp8", FP8_DTYPES, ids=str)
def test_opcheck(fp8):
    g = _seed("opcheck", fp8)
    k, v, tables, ctx = random_fp8_paged_kv(2, [20, 9], 2, 64, 16, fp8, *SCALES, generator=g)
    q = torch.randn(2, 8, 64, generator=g)
    scales = {"k_scale": SCALES[0], "v_scale": SCALES[1]}
    # Not test_schema: torch's SchemaCheckMode compares the inputs with ops that
    # fp8 lacks on the CPU. test_ops.py's opcheck checks the same schemas.
    opcheck = functools.partial(torch.library.opcheck, test_utils=(
        "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    mpa = torch.ops.mini_paged_attn
    opcheck(mpa.paged_attention, (q, k, v, tables, ctx, 0.125), scales)
    opcheck(mpa.paged_attention_out, (torch.empty_like(q), q, k, v, tables, ctx, 0.125), scales)
    loc = torch.tensor([0, 3, 5], dtype=torch.int32)
    qp = torch.randn(5, 8, 64, generator=g).bfloat16()
    opcheck(mpa.paged_prefill_attention, (qp, k, v, tables, ctx, loc, 0.125), scales)
    opcheck(mpa.paged_prefill_attention_out,
            (torch.empty_like(qp), qp, k, v, tables, ctx, loc, 0.125), scales)
    key = torch.randn(3, 2, 64, generator=g).half()
    opcheck(mpa.reshape_and_cache, (key, key.clone(), k.clone(), v.clone(),
                                    torch.tensor([0, 5, -1])), scales)

"""Naive float64 references and random paged-cache builders shared by the tests."""
from __future__ import annotations

import math
from typing import List, Optional

import torch


def ref_paged_attention(query, key_cache, value_cache, block_tables, context_lens,
                        scale: Optional[float] = None) -> torch.Tensor:
    """Gathers each sequence's tokens and attends in float64, one sequence at a time."""
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads = key_cache.size(2)
    block_size = key_cache.size(1)
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    out = torch.zeros(num_seqs, num_heads, head_size, dtype=torch.float64)
    for s in range(num_seqs):
        n = int(context_lens[s])
        if n == 0:
            continue
        pos = torch.arange(n)
        blocks = block_tables[s].long().cpu()[pos // block_size]
        k = key_cache.cpu()[blocks, pos % block_size].double()    # [n, kv_heads, d]
        v = value_cache.cpu()[blocks, pos % block_size].double()
        group = num_heads // num_kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        q = query[s].cpu().double()                                 # [heads, d]
        p = torch.softmax(torch.einsum("hd,nhd->hn", q, k) * scale, dim=-1)
        out[s] = torch.einsum("hn,nhd->hd", p, v)
    return out


def ref_paged_prefill_attention(query, key_cache, value_cache, block_tables, context_lens,
                                query_start_loc, scale: Optional[float] = None) -> torch.Tensor:
    """Causal attention of each sequence's last ``q_len`` tokens in float64, the
    whole context gathered through the block table."""
    num_heads, head_size = query.shape[1:]
    block_size, num_kv_heads = key_cache.size(1), key_cache.size(2)
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    out = torch.zeros(query.shape, dtype=torch.float64)
    loc = query_start_loc.tolist()
    for s, n in enumerate(context_lens.tolist()):
        q_len = loc[s + 1] - loc[s]
        if q_len == 0:
            continue
        pos = torch.arange(n)
        blocks = block_tables[s].long().cpu()[pos // block_size]
        k = key_cache.cpu()[blocks, pos % block_size].double().repeat_interleave(group, dim=1)
        v = value_cache.cpu()[blocks, pos % block_size].double().repeat_interleave(group, dim=1)
        q = query[loc[s]:loc[s + 1]].cpu().double()                # [q_len, heads, d]
        scores = torch.einsum("thd,nhd->htn", q, k) * scale
        q_pos = torch.arange(n - q_len, n)
        scores.masked_fill_(pos[None, :] > q_pos[:, None], float("-inf"))
        out[loc[s]:loc[s + 1]] = torch.einsum("htn,nhd->thd", torch.softmax(scores, -1), v)
    return out


def random_paged_kv(num_seqs: int, context_lens: List[int], num_kv_heads: int, head_size: int,
                    block_size: int, dtype: torch.dtype, device, extra_blocks: int = 3,
                    interleaved: bool = False, repeat_blocks: bool = False,
                    generator: Optional[torch.Generator] = None):
    """A random cache whose unused slots hold NaN, and shuffled block tables
    (optionally sharing blocks between sequences) covering ``context_lens``."""
    g = generator
    blocks_per_seq = [max(1, -(-n // block_size)) for n in context_lens]
    max_blocks = max(blocks_per_seq) + 1
    num_blocks = sum(blocks_per_seq) + extra_blocks
    shape = (num_blocks, block_size, 2, num_kv_heads, head_size) if interleaved else \
        (2, num_blocks, block_size, num_kv_heads, head_size)
    kv = torch.full(shape, float("nan"), dtype=dtype, device=device)
    key_cache = kv[:, :, 0] if interleaved else kv[0]
    value_cache = kv[:, :, 1] if interleaved else kv[1]
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.randint(0, num_blocks, (num_seqs, max_blocks), generator=g, dtype=torch.int32)
    start = 0
    for s, nb in enumerate(blocks_per_seq):
        if repeat_blocks and s > 0:
            # Later sequences reuse the physical blocks of sequence 0 (a shared prefix).
            shared = min(nb, blocks_per_seq[0]) // 2
            tables[s, :shared] = tables[0, :shared]
            tables[s, shared:nb] = perm[start:start + nb - shared].int()
            start += nb - shared
        else:
            tables[s, :nb] = perm[start:start + nb].int()
            start += nb
    for s, n in enumerate(context_lens):
        pos = torch.arange(n)
        blocks = tables[s].long()[pos // block_size]
        shape_tok = (n, num_kv_heads, head_size)
        key_cache[blocks.to(device), (pos % block_size).to(device)] = torch.randn(
            shape_tok, generator=g).to(dtype).to(device)
        value_cache[blocks.to(device), (pos % block_size).to(device)] = torch.randn(
            shape_tok, generator=g).to(dtype).to(device)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return key_cache, value_cache, tables.to(device), lens.to(device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]


def quantize_fp8(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """vLLM's fp8 cache store: ``x / scale`` in float32, saturated to the finite
    range (torch's own cast does not saturate), rounded by torch's cast."""
    limit = torch.finfo(dtype).max
    return (x.float() / scale).clamp(-limit, limit).to(dtype)


def dequantize_fp8(cache: torch.Tensor, scale: float) -> torch.Tensor:
    """An fp8 cache's values in float64, ``fp8 * scale`` (what attention reads)."""
    return cache.cpu().double() * scale


def random_fp8_paged_kv(num_seqs: int, context_lens: List[int], num_kv_heads: int,
                        head_size: int, block_size: int, dtype: torch.dtype,
                        k_scale: float, v_scale: float,
                        generator: Optional[torch.Generator] = None, **kwargs):
    """:func:`random_paged_kv` in float32, quantized: values spread over the fp8
    range at these scales, unused slots NaN codes."""
    k, v, tables, lens = random_paged_kv(num_seqs, context_lens, num_kv_heads, head_size,
                                         block_size, torch.float32, "cpu", generator=generator,
                                         **kwargs)
    return (quantize_fp8(k * 4 * k_scale, k_scale, dtype),
            quantize_fp8(v * 4 * v_scale, v_scale, dtype), tables, lens)

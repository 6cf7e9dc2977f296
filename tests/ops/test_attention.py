"""PagedAttention as a user would use it in their own model: one layer, a
batch mixing whole prompts, a chunk after a cached prefix and decode tokens,
against causal SDPA over each sequence's full history."""
import pytest
import torch
import torch.nn.functional as F

from mini_paged_attn import AttentionMetadata, PagedAttention

HEADS, KV_HEADS, D, BLOCK = 8, 2, 64, 16


def _sdpa(q, k, v):
    """Causal attention of the last q.size(0) positions over k/v ([n, heads, d])."""
    n = k.size(0)
    mask = torch.ones(q.size(0), n, dtype=torch.bool).tril(n - q.size(0))
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                         v.transpose(0, 1), attn_mask=mask, enable_gqa=True)
    return out.transpose(0, 1)


def test_mixed_batch_matches_sdpa(device):
    g = torch.Generator().manual_seed(0)
    layer = PagedAttention(HEADS, D, KV_HEADS)
    kv = torch.full((2, 40, BLOCK, KV_HEADS, D), float("nan"), device=device)
    layer.bind_kv_cache(kv[0], kv[1])
    # (cached tokens, new tokens): a whole prompt, a chunk after a prefix, two decodes.
    shapes = [(0, 37), (20, 13), (50, 1), (7, 1)]
    perm = torch.randperm(40, generator=g).tolist()
    tables = [perm[i * 10:(i + 1) * 10] for i in range(4)]
    full = [[torch.randn(c + n, h, D, generator=g) for h in (HEADS, KV_HEADS, KV_HEADS)]
            for c, n in shapes]

    def slots(s, start, end):
        return [tables[s][p // BLOCK] * BLOCK + p % BLOCK for p in range(start, end)]

    # The cached prefixes are written by earlier steps.
    for s, (c, _) in enumerate(shapes):
        if c:
            prefix = AttentionMetadata.build([c] if c > 1 else [1], [c], [tables[s]],
                                             slots(s, 0, c), device=device)
            q, k, v = (t[:c].to(device) for t in full[s])
            layer(q, k, v, prefix)
    metadata = AttentionMetadata.build([n for _, n in shapes], [c + n for c, n in shapes],
                                       tables, sum((slots(s, c, c + n) for s, (c, n)
                                                    in enumerate(shapes)), []), device=device)
    assert (metadata.num_prefills, metadata.num_prefill_tokens,
            metadata.num_decode_tokens) == (2, 50, 2)
    q, k, v = (torch.cat([t[i][c:] for t, (c, _) in zip(full, shapes)]).to(device)
               for i in range(3))
    out = layer(q, k, v, metadata).cpu()
    expected = torch.cat([_sdpa(t[0][c:], t[1], t[2]) for t, (c, _) in zip(full, shapes)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_kv_heads"):
        PagedAttention(8, 64, 3)
    with pytest.raises(ValueError, match="head_size"):
        PagedAttention(8, 0)
    layer = PagedAttention(HEADS, D, KV_HEADS)
    metadata = AttentionMetadata.build([2], [2], [[0]], [0, 1])
    q, kv = torch.randn(2, HEADS, D), torch.randn(2, KV_HEADS, D)
    with pytest.raises(RuntimeError, match="bind_kv_cache"):
        layer(q, kv, kv, metadata)
    with pytest.raises(ValueError, match="key_cache"):
        layer.bind_kv_cache(torch.zeros(4, BLOCK, HEADS, D), torch.zeros(4, BLOCK, HEADS, D))
    cache = torch.zeros(4, BLOCK, KV_HEADS, D)
    layer.bind_kv_cache(cache, cache.clone())
    with pytest.raises(ValueError, match="tokens"):
        layer(q[:1], kv[:1], kv[:1], metadata)
    with pytest.raises(ValueError, match="query_lens"):
        AttentionMetadata.build([1, 2], [1, 2], [[0], [1]], [0, 16, 17])
    with pytest.raises(ValueError, match="slot_mapping"):
        AttentionMetadata.build([2], [2], [[0]], [0])

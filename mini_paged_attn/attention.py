"""PagedAttention: the attention layer of a model served from a paged KV cache."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .checks import positive
from .layers.attention_metadata import AttentionMetadata
from .ops import default_scale, paged_attention, paged_prefill_attention, reshape_and_cache


class PagedAttention(nn.Module):
    """Writes a batch's new keys and values into this layer's cache and attends.

    Prefill tokens (sequences with several new tokens: whole prompts, prompt
    chunks after a cached prefix) go through ``paged_prefill_attention``, decode
    tokens through ``paged_attention``. The cache is bound with
    :meth:`bind_kv_cache` (an engine allocates one for all layers and hands each
    layer its view); it is not a parameter or buffer, so it never enters a
    ``state_dict``.

    Args:
        num_heads: query heads.
        head_size: size of one head.
        num_kv_heads: key/value heads (GQA when fewer than ``num_heads``).
        scale: softmax scale, ``1/sqrt(head_size)`` by default.
        check: validate the metadata against the cache on every call (on a GPU
            this copies it to the host, a synchronisation).

    ``k_scale`` / ``v_scale`` (floats, 1.0 unless a checkpoint provides them) are
    the per-tensor scales of an fp8 cache (``ops`` module docstring); caches of
    other dtypes ignore them.
    """

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: Optional[int] = None,
                 scale: Optional[float] = None, check: bool = False):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        num_heads, head_size = positive("num_heads", num_heads), positive("head_size", head_size)
        num_kv_heads = positive("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = default_scale(head_size) if scale is None else float(scale)
        self.check = check
        self.k_scale = 1.0
        self.v_scale = 1.0
        self.key_cache: Optional[torch.Tensor] = None
        self.value_cache: Optional[torch.Tensor] = None

    def bind_kv_cache(self, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
        """Uses ``[num_blocks, block_size, num_kv_heads, head_size]`` caches (any
        strides with a contiguous last dim, e.g. views of one larger tensor)."""
        expected = (self.num_kv_heads, self.head_size)
        for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
            if cache.dim() != 4 or tuple(cache.shape[2:]) != expected:
                raise ValueError(f"{name} must be [num_blocks, block_size, {expected[0]}, "
                                 f"{expected[1]}], got {tuple(cache.shape)}")
        self.key_cache = key_cache
        self.value_cache = value_cache

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        """``query [num_tokens, num_heads, head_size]``, ``key`` and ``value``
        ``[num_tokens, num_kv_heads, head_size]`` in batch order; returns the
        attention output shaped like ``query``."""
        if self.key_cache is None:
            raise RuntimeError("PagedAttention has no KV cache: call bind_kv_cache first")
        if query.size(0) != metadata.num_tokens:
            raise ValueError(f"query has {query.size(0)} tokens but metadata describes "
                             f"{metadata.num_tokens}")
        kc, vc = self.key_cache, self.value_cache
        scales = {"k_scale": self.k_scale, "v_scale": self.v_scale}
        reshape_and_cache(key, value, kc, vc, metadata.slot_mapping, check=self.check, **scales)
        out = torch.empty_like(query)
        n, p = metadata.num_prefills, metadata.num_prefill_tokens
        if p:
            paged_prefill_attention(query[:p], kc, vc, metadata.block_tables[:n],
                                    metadata.context_lens[:n], metadata.query_start_loc,
                                    scale=self.scale, out=out[:p], check=self.check, **scales)
        if metadata.num_decode_tokens:
            paged_attention(query[p:], kc, vc, metadata.block_tables[n:],
                            metadata.context_lens[n:], scale=self.scale, out=out[p:],
                            check=self.check, **scales)
        return out

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_size={self.head_size}, scale={self.scale:.4g}")

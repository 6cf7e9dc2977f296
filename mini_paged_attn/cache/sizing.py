"""Sizing helpers for the C++ cache configs (``PagedKVCacheConfig`` and
``StaticKVCacheConfig`` are defined and validated in C++)."""
from __future__ import annotations

import torch

from .._C import PagedKVCacheConfig


def kv_bytes_per_token(num_kv_heads: int, head_size: int, dtype: torch.dtype,
                       num_layers: int = 1) -> int:
    """Bytes one token occupies in the key and value caches of all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_size * itemsize


def num_blocks_for(config: PagedKVCacheConfig, num_kv_heads: int, head_size: int,
                   dtype: torch.dtype, num_layers: int = 1) -> int:
    """How many blocks of ``config.block_size()`` tokens fit the byte budget."""
    per_block = config.block_size() * kv_bytes_per_token(num_kv_heads, head_size, dtype,
                                                          num_layers)
    num_blocks = config.max_kv_memory_bytes() // per_block
    if num_blocks == 0:
        raise ValueError(f"max_kv_memory_bytes={config.max_kv_memory_bytes()} is smaller than "
                         f"one block ({per_block} bytes)")
    return num_blocks


# vLLM's kv_cache_dtype names: "auto" is the model's dtype.
KV_CACHE_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                   "fp8_e5m2": torch.float8_e5m2}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The cache dtype ``LLM(kv_cache_dtype=name)`` stores K/V in."""
    if name == "auto":
        return model_dtype
    if not isinstance(name, str) or name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be 'auto' or one of {sorted(KV_CACHE_DTYPES)}, "
                         f"got {name!r}")
    if device.type == "cuda":
        raise NotImplementedError(f"kv_cache_dtype={name!r}: fp8 KV cache is not implemented "
                                  f"on CUDA yet")
    return KV_CACHE_DTYPES[name]

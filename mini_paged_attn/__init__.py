"""mini_paged_attn: a small, fast PagedAttention library for PyTorch."""
from importlib.metadata import PackageNotFoundError, version

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from ._C import CacheConfig, PagedKVCacheConfig, StaticKVCacheConfig
from .attention import PagedAttention
from .block_manager import BlockManager, hash_block
from .cache.block_tables import BlockTables
from .cache.paged_attention_manager import PagedAttentionManager
from .cache.static_cache import StaticKVCache
from .layers.attention_metadata import AttentionMetadata
from .llm import LLM
from .ops import (copy_blocks, paged_attention, paged_attention_v1, paged_prefill_attention,
                  reshape_and_cache)
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

try:
    __version__ = version("mini_paged_attn")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AttentionMetadata",
    "BlockManager",
    "BlockTables",
    "CacheConfig",
    "CompletionOutput",
    "LLM",
    "PagedAttention",
    "PagedAttentionManager",
    "PagedKVCacheConfig",
    "RequestOutput",
    "SamplingParams",
    "StaticKVCache",
    "StaticKVCacheConfig",
    "copy_blocks",
    "hash_block",
    "paged_attention",
    "paged_attention_v1",
    "paged_prefill_attention",
    "reshape_and_cache",
]

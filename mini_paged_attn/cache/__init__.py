"""The KV cache: block tables over the C++ block manager, the paged and static
caches (one layer for the seed's API, every layer for the engine) and their sizing."""
from .block_tables import BlockTables
from .kv_cache import KVCache
from .paged_attention_manager import PagedAttentionManager
from .paged_kv_cache import PagedKVCache
from .slotted_kv_cache import SlottedKVCache
from .static_cache import StaticKVCache

__all__ = ["BlockTables", "KVCache", "PagedAttentionManager", "PagedKVCache", "SlottedKVCache",
           "StaticKVCache"]

"""The serving engine: scheduler, model runner, sampler and KV caches behind ``LLM``."""
from .llm_engine import LLMEngine
from .paged_kv_cache import PagedKVCache
from .scheduler import Scheduler
from .slotted_kv_cache import SlottedKVCache

__all__ = ["LLMEngine", "PagedKVCache", "Scheduler", "SlottedKVCache"]

"""The seed's import path of ``PagedAttentionManager`` (now ``cache/paged_attention_manager.py``)."""
from .cache.paged_attention_manager import PagedAttentionManager

__all__ = ["PagedAttentionManager"]

"""Model-facing layers beside ``attention.PagedAttention``: its metadata, rotary
embeddings and the fused norm / activation kernels."""
from .attention_metadata import AttentionMetadata
from .rotary import RotaryEmbedding

__all__ = ["AttentionMetadata", "RotaryEmbedding"]

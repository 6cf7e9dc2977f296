"""A Llama-architecture model served from a paged KV cache."""
from .config import ModelConfig
from .llama import LlamaForCausalLM
from .loader import load_model, load_weights

__all__ = ["LlamaForCausalLM", "ModelConfig", "load_model", "load_weights"]

"""ModelConfig: the Llama architecture's hyper-parameters, read from a Hugging
Face ``config.json`` (transformers 4 or 5 layout) with no transformers import."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch

from ..checks import positive

_ROPE_TYPES = ("default", "linear", "llama3")
_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Config keys of other families whose math this model does not implement.
_UNSUPPORTED_KEYS = ("attn_logit_softcapping", "final_logit_softcapping",
                     "query_pre_attn_scalar", "use_qk_norm")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # {"rope_type": "linear", "factor": ...} or {"rope_type": "llama3", ...}; None: plain RoPE.
    rope_scaling: Optional[Dict[str, Any]] = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q, k, v and o (Llama)
    qkv_bias: bool = False  # biases on q, k and v only (Qwen2)
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    # Attention to the last sliding_window positions only (Mistral); the engine
    # keeps sequences within it, where that is the same as full attention.
    sliding_window: Optional[int] = None
    mlp_bias: bool = False
    hidden_act: str = "silu"
    eos_token_id: List[int] = field(default_factory=list)
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            setattr(self, name, positive(name, getattr(self, name)))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("num_key_value_heads", "head_dim"):
            setattr(self, name, positive(name, getattr(self, name)))
        if self.sliding_window is not None:
            self.sliding_window = positive("sliding_window", self.sliding_window)
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a "
                             f"multiple of num_key_value_heads ({self.num_key_value_heads})")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope_scaling rope_type {rope_type!r} is not supported "
                             f"(supported: {', '.join(_ROPE_TYPES)})")
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if isinstance(self.dtype, str):
            self.dtype = getattr(torch, self.dtype, self.dtype)
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        """From the keys of a Hugging Face Llama ``config.json``; unknown keys are ignored."""
        d = dict(d)
        model_type = d.get("model_type", "llama")
        if model_type not in _MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported (supported: "
                             f"{', '.join(_MODEL_TYPES)})")
        for key in _UNSUPPORTED_KEYS:
            if d.get(key):
                raise ValueError(f"{key} = {d[key]!r} changes the model's math and is not "
                                 f"supported")
        d["qkv_bias"] = d.get("qkv_bias", model_type == "qwen2")
        d["qk_norm"] = d.get("qk_norm", model_type == "qwen3")
        # Qwen configs carry a window they do not use unless use_sliding_window.
        if model_type in ("qwen2", "qwen3") and not d.get("use_sliding_window", False):
            d["sliding_window"] = None
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        rope = d.pop("rope_parameters", None)
        if rope is not None:
            rope = dict(rope)
            d.setdefault("rope_theta", rope.pop("rope_theta", 10000.0))
            d.setdefault("rope_scaling", rope if rope.get("rope_type", "default") != "default"
                         else None)
        scaling = d.get("rope_scaling")
        if scaling is not None and "type" in scaling and "rope_type" not in scaling:
            d["rope_scaling"] = {**scaling, "rope_type": scaling["type"]}
        d["dtype"] = d.get("dtype") or d.get("torch_dtype") or "float32"
        d["eos_token_id"] = d.get("eos_token_id") or []
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_pretrained(cls, model_dir: str) -> "ModelConfig":
        """From ``model_dir/config.json``; errors name the file."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_dir {model_dir!r} has no config.json")
        try:
            with open(path) as f:
                d = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
        # generation_config.json's end-of-sequence ids (Llama-3-Instruct's
        # <|eot_id|>, for one) stop generation too.
        gen_path = os.path.join(model_dir, "generation_config.json")
        if os.path.isfile(gen_path):
            try:
                with open(gen_path) as f:
                    gen = json.load(f)
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{gen_path} is not valid JSON: {e}") from e
            eos = gen.get("eos_token_id") if isinstance(gen, dict) else None
            if eos is not None:
                own = d.get("eos_token_id") or []
                own = [own] if isinstance(own, int) else list(own)
                extra = [eos] if isinstance(eos, int) else list(eos)
                d["eos_token_id"] = own + [t for t in extra if t not in own]
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from e

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A small random-initialised default that runs anywhere in seconds."""
        base = dict(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                    max_position_embeddings=2048)
        return cls(**{**base, **overrides})

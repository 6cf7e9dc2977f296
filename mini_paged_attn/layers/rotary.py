"""Rotary position embeddings (RoPE) as Llama applies them: rotate-half layout,
``rope_theta``, and the "linear" and "llama3" frequency scalings."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .fused import apply_rotary, rotary_embedding


def inv_frequencies(head_dim: int, rope_theta: float,
                    rope_scaling: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """float32 ``[head_dim // 2]`` inverse frequencies, scaled as configured."""
    inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    scaling = rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type != "llama3":
        return inv_freq
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, and
    # the band between them interpolated.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """The cos/sin table of ``max_position`` positions, computed once in float32
    (then cast with the model); calling it rotates a batch's queries and keys
    at their positions."""

    def __init__(self, head_dim: int, max_position: int, rope_theta: float,
                 rope_scaling: Optional[Dict[str, Any]] = None):
        super().__init__()
        inv_freq = inv_frequencies(head_dim, rope_theta, rope_scaling)
        freqs = torch.arange(max_position, dtype=torch.float)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self._rows = (None, None, None)  # positions, and their cos and sin rows (CPU path)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``positions`` int64 ``[num_tokens]``, each below ``max_position`` (the
        caller's to ensure: checking here would synchronise a GPU); ``query`` and
        ``key`` ``[num_tokens, heads, head_dim]``."""
        if query.is_cuda:
            return rotary_embedding(positions, query, key, self.cos, self.sin)
        # Every layer gets the same positions tensor: gather its rows once.
        if self._rows[0] is not positions:
            self._rows = (positions, self.cos[positions], self.sin[positions])
        return apply_rotary(query, key, self._rows[1], self._rows[2])

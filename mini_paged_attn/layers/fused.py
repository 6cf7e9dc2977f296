"""The per-token steps of a Llama layer: RMSNorm (fused with the residual add
before it), SiLU-and-mul and rotary embeddings.

On a GPU each is one CUDA kernel (``torch.ops.mini_paged_attn.*``, graph
capturable); elsewhere they run as the equivalent PyTorch code. Both round as
the eager Llama code does: the residual sum and the normalised row are
rounded to the activation dtype before the norm weight multiplies them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _C  # noqa: F401  (registers the ops)

_ops = torch.ops.mini_paged_attn


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of any shape (per-head norms), as PyTorch
    code on every device: the heads of a fused projection are strided rows."""
    return _norm(x, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(norm(x + residual) * weight, x + residual)``, or of ``x`` alone when
    ``residual`` is None. On a GPU the sum is written into ``residual`` and the
    normalised rows into ``x``, in place (``x`` [num_tokens, hidden])."""
    if x.is_cuda:
        if residual is None:
            out = torch.empty_like(x)
            _ops.rms_norm(out, x, weight, eps)
            return out, x
        _ops.fused_add_rms_norm(x, residual, weight, eps)
        return x, residual
    if residual is not None:
        x = x + residual
    return _norm(x, weight, eps), x


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``x = [gate | up]`` ([num_tokens, 2 * size])."""
    if x.is_cuda:
        out = x.new_empty(x.shape[:-1] + (x.size(-1) // 2,))
        _ops.silu_and_mul(out, x)
        return out
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of ``[num_tokens, heads, head_size]`` queries and keys at
    ``positions`` (int64, each below ``cos.size(0)``: the caller's to ensure, a
    check would synchronise a GPU); ``cos``, ``sin`` ``[max_position, head_size]``
    tables. In place on a GPU."""
    if query.is_cuda:
        _ops.rotary_embedding(positions, query, key, cos, sin)
        return query, key
    return apply_rotary(query, key, cos[positions], sin[positions])


def apply_rotary(query: torch.Tensor, key: torch.Tensor, cos_rows: torch.Tensor,
                 sin_rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch form, given each token's ``[num_tokens, head_size]`` cos and sin rows."""
    c = cos_rows[:, None, :].to(query.dtype)
    s = sin_rows[:, None, :].to(query.dtype)
    return query * c + _rotate_half(query) * s, key * c + _rotate_half(key) * s


@torch.library.register_fake("mini_paged_attn::rms_norm")
def _rms_norm_fake(out, x, weight, eps):
    return None


@torch.library.register_fake("mini_paged_attn::fused_add_rms_norm")
def _fused_add_rms_norm_fake(x, residual, weight, eps):
    return None


@torch.library.register_fake("mini_paged_attn::silu_and_mul")
def _silu_and_mul_fake(out, x):
    return None


@torch.library.register_fake("mini_paged_attn::rotary_embedding")
def _rotary_embedding_fake(positions, query, key, cos, sin):
    return None

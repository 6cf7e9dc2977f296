"""Python entry points of the paged-attention ops.

Each function validates its arguments (shape, dtype and device checks run in
C++ and name the argument; ``check=True`` adds data checks of block ids, context
lengths and slots against the cache, which on a GPU copies the small metadata
tensors to the host) and calls ``torch.ops.mini_paged_attn.*``, so the same ops
work eagerly, under ``torch.compile`` and inside CUDA graphs (``check=False``).

fp8 KV caches (``torch.float8_e4m3fn`` / ``torch.float8_e5m2``, CPU only for
now) follow vLLM: ``reshape_and_cache`` stores ``x / k_scale`` (``v_scale``)
rounded to nearest and saturated to the format's finite range, and attention
reads ``fp8 * k_scale`` (``v_scale``) in float32. Scales are per tensor, a float
or a 0-d tensor (read on the host: a synchronisation on a GPU), finite and > 0;
caches of other dtypes ignore them.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch

from . import _C

__all__ = ["paged_attention", "paged_prefill_attention", "reshape_and_cache", "copy_blocks",
           "sample_tokens", "default_scale"]

_ops = torch.ops.mini_paged_attn


def _on_host(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "cpu" else t.cpu()


def _check_block_tables(op, key_cache, block_tables, context_lens) -> None:
    # CPU kernels always run this check themselves, so only other devices need it.
    if key_cache.device.type != "cpu" and key_cache.dim() == 4:
        _C.check_block_tables(op, _on_host(block_tables), _on_host(context_lens),
                              key_cache.size(0), key_cache.size(1))


def default_scale(head_size: int) -> float:
    """The softmax scale when none is given: ``1/sqrt(head_size)``."""
    return 1.0 / math.sqrt(head_size)


def cuda_head_sizes(dtype: torch.dtype) -> tuple:
    """The head sizes that every CUDA attention op (decode and prefill) takes for
    a model of ``dtype``: the float32 prefill kernel has no head size 32."""
    return ((32,) if dtype in (torch.float16, torch.bfloat16) else ()) + (64, 80, 96, 128, 256)


KVScale = Union[float, torch.Tensor]


def _kv_scale(name: str, value: KVScale) -> float:
    """A float or 0-d tensor scale as a float (the ops check it is finite and > 0)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(f"{name} must be a float or a 0-d tensor, got shape "
                             f"{tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    return float(value)


def _attend(op: str, out: Optional[torch.Tensor], query: torch.Tensor, scale: Optional[float],
            k_scale: KVScale, v_scale: KVScale, *inputs: torch.Tensor) -> torch.Tensor:
    """Calls ``op(query, *inputs, scale, k_scale=, v_scale=)``, or its ``_out`` form."""
    scale = default_scale(query.size(-1)) if scale is None else float(scale)
    scales = {"k_scale": _kv_scale("k_scale", k_scale), "v_scale": _kv_scale("v_scale", v_scale)}
    if out is None:
        return getattr(_ops, op)(query, *inputs, scale, **scales)
    getattr(_ops, op + "_out")(out, query, *inputs, scale, **scales)
    return out


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
    check: bool = True,
    *,
    k_scale: KVScale = 1.0,
    v_scale: KVScale = 1.0,
) -> torch.Tensor:
    """Decode attention of one query token per sequence over a paged KV cache.

    Args:
        query: ``[num_seqs, num_heads, head_size]``.
        key_cache, value_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``,
            any strides with a contiguous last dim (e.g. views of one interleaved cache);
            of ``query``'s dtype, 16-bit under a float32 query, or fp8 (CPU) under a
            16-bit or float32 query.
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]`` physical block ids.
        context_lens: int32 ``[num_seqs]`` tokens to attend to (0 gives zeros).
        scale: softmax scale, ``1/sqrt(head_size)`` by default.
        out: optional output tensor shaped and typed like ``query``.
        check: validate block ids and context lengths against the cache.
        k_scale, v_scale: an fp8 cache's scales (module docstring); ignored otherwise.

    Returns:
        ``[num_seqs, num_heads, head_size]`` in the dtype of ``query``.
    """
    if check:
        _check_block_tables("paged_attention", key_cache, block_tables, context_lens)
    return _attend("paged_attention", out, query, scale, k_scale, v_scale, key_cache,
                   value_cache, block_tables, context_lens)


def paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
    check: bool = True,
    *,
    k_scale: KVScale = 1.0,
    v_scale: KVScale = 1.0,
) -> torch.Tensor:
    """Causal attention of several sequences' new tokens over a paged KV cache.

    Sequence ``s`` owns query rows ``query_start_loc[s] .. query_start_loc[s + 1] - 1``:
    its last ``q_len`` tokens, at positions ``context_lens[s] - q_len .. context_lens[s] - 1``.
    Each attends to every cached token of the sequence up to its own position; the
    new tokens' keys and values must already be in the cache (``reshape_and_cache``),
    so a chunked prefill is this call with an already cached prefix.

    Args:
        query: ``[num_tokens, num_heads, head_size]``, the sequences' new tokens concatenated.
        key_cache, value_cache, block_tables: as for :func:`paged_attention`.
        context_lens: int32 ``[num_seqs]`` tokens of each sequence, the new ones included.
        query_start_loc: int32 ``[num_seqs + 1]`` offsets of each sequence's rows in ``query``.
        scale, out, check, k_scale, v_scale: as for :func:`paged_attention` (``check``
            also validates ``query_start_loc``).

    Returns:
        ``[num_tokens, num_heads, head_size]`` in the dtype of ``query``.
    """
    if check:
        _check_block_tables("paged_prefill_attention", key_cache, block_tables, context_lens)
        if query.device.type != "cpu":
            _C.check_query_start_loc("paged_prefill_attention", _on_host(query_start_loc),
                                     _on_host(context_lens), query.size(0))
    return _attend("paged_prefill_attention", out, query, scale, k_scale, v_scale, key_cache,
                   value_cache, block_tables, context_lens, query_start_loc)


def paged_attention_v1(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_lens: torch.Tensor,
) -> None:
    """The seed's kernel: writes attention with scale ``1/sqrt(head_size)`` into ``out``.

    On CUDA it is the simple two-pass kernel kept as the benchmark baseline.
    """
    _check_block_tables("paged_attention_v1", key_cache, block_table, context_lens)
    _ops.paged_attention_v1(out, query, key_cache, value_cache, block_table, context_lens)


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    check: bool = True,
    *,
    k_scale: KVScale = 1.0,
    v_scale: KVScale = 1.0,
) -> None:
    """Writes ``[num_tokens, num_kv_heads, head_size]`` key/value tokens into the caches.

    Token ``i`` goes to ``slot_mapping[i] = block * block_size + offset`` (int64);
    negative slots (padding) are skipped. Tokens have the caches' dtype, or any
    float dtype for an fp8 cache, which stores them quantized with ``k_scale`` /
    ``v_scale`` (module docstring).
    """
    if check and key_cache.device.type != "cpu" and key_cache.dim() == 4:
        _C.check_slot_mapping("reshape_and_cache", _on_host(slot_mapping),
                              key_cache.size(0) * key_cache.size(1))
    _ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                           k_scale=_kv_scale("k_scale", k_scale),
                           v_scale=_kv_scale("v_scale", v_scale))


def copy_blocks(
    key_caches: Sequence[torch.Tensor],
    value_caches: Sequence[torch.Tensor],
    block_mapping: torch.Tensor,
    check: bool = True,
) -> None:
    """Copies block ``src`` to block ``dst`` for every row of ``block_mapping``
    (int64 ``[num_pairs, 2]``) in every layer's key and value cache."""
    if check and len(key_caches) > 0 and key_caches[0].device.type != "cpu":
        _C.check_block_mapping("copy_blocks", _on_host(block_mapping), key_caches[0].size(0))
    _ops.copy_blocks(list(key_caches), list(value_caches), block_mapping)


def sample_tokens(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    min_scaled_logits: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """One token per row of ``logits [num_rows, vocab]`` and its log-probability
    under ``log_softmax(logits)``, in one pass over the logits.

    Rows with ``temperatures <= 0`` take the argmax (the lowest index of ties).
    The others draw from ``softmax(logits / T)`` restricted to the tokens with
    ``logits * (1 / T) >= min_scaled_logits`` (``-inf``: all), by the Gumbel-max trick
    with counter-based noise: the draw is a function of ``(seeds[r],
    positions[r], token)``, so equal inputs give equal tokens in any batch.

    Args:
        logits: float32/float16/bfloat16 ``[num_rows, vocab]``.
        temperatures, min_scaled_logits: float32 ``[num_rows]``.
        seeds, positions: int64 ``[num_rows]``.

    Returns:
        ``(tokens int64 [num_rows], logprobs float32 [num_rows])``.
    """
    return _ops.sample_tokens(logits, temperatures, min_scaled_logits, seeds, positions)


# The fake (meta) implementations run the ops' C++ metadata checks, so a traced
# call, or one mixing meta with real tensors (which dispatches here), fails as
# the real op would instead of returning uninitialised memory; outputs have the
# shape, dtype and strides the real ops give. With symbolic shapes (dynamic
# tracing) the C++ checks cannot read sizes, and only the devices are compared.
def _fake_check(op: str, check, *args) -> None:
    tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])
               if isinstance(t, torch.Tensor)]
    if all(isinstance(x, int) for t in tensors for x in (*t.shape, *t.stride())):
        check(*args)
        return
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{op}: tensors on different devices: {sorted(map(str, devices))}")


@torch.library.register_fake("mini_paged_attn::sample_tokens")
def _sample_tokens_fake(logits, temperatures, min_scaled_logits, seeds, positions):
    _fake_check("sample_tokens", _C.check_sample_tokens_args, logits, temperatures,
                min_scaled_logits, seeds, positions)
    rows = logits.size(0)
    return (logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, dtype=torch.float32))


@torch.library.register_fake("mini_paged_attn::paged_attention")
def _paged_attention_fake(query, key_cache, value_cache, block_tables, context_lens, scale, *,
                          k_scale=1.0, v_scale=1.0):
    _C.check_kv_scales("paged_attention", k_scale, v_scale)
    _fake_check("paged_attention", functools.partial(_C.check_paged_attention_args,
                                                     "paged_attention"),
                query, query, key_cache, value_cache, block_tables, context_lens)
    return query.new_empty(query.shape)  # contiguous, as the op allocates it


@torch.library.register_fake("mini_paged_attn::paged_attention_out")
def _paged_attention_out_fake(out, query, key_cache, value_cache, block_tables, context_lens,
                              scale, *, k_scale=1.0, v_scale=1.0):
    _C.check_kv_scales("paged_attention", k_scale, v_scale)
    _fake_check("paged_attention", functools.partial(_C.check_paged_attention_args,
                                                     "paged_attention"),
                out, query, key_cache, value_cache, block_tables, context_lens)


@torch.library.register_fake("mini_paged_attn::paged_prefill_attention")
def _paged_prefill_attention_fake(query, key_cache, value_cache, block_tables, context_lens,
                                  query_start_loc, scale, *, k_scale=1.0, v_scale=1.0):
    _C.check_kv_scales("paged_prefill_attention", k_scale, v_scale)
    _fake_check("paged_prefill_attention", _C.check_paged_prefill_attention_args, query, query,
                key_cache, value_cache, block_tables, context_lens, query_start_loc)
    return query.new_empty(query.shape)  # contiguous, as the op allocates it


@torch.library.register_fake("mini_paged_attn::paged_prefill_attention_out")
def _paged_prefill_attention_out_fake(out, query, key_cache, value_cache, block_tables,
                                      context_lens, query_start_loc, scale, *, k_scale=1.0,
                                      v_scale=1.0):
    _C.check_kv_scales("paged_prefill_attention", k_scale, v_scale)
    _fake_check("paged_prefill_attention", _C.check_paged_prefill_attention_args, out, query,
                key_cache, value_cache, block_tables, context_lens, query_start_loc)


@torch.library.register_fake("mini_paged_attn::paged_attention_v1")
def _paged_attention_v1_fake(out, query, key_cache, value_cache, block_table, context_lens):
    _fake_check("paged_attention_v1", functools.partial(_C.check_paged_attention_args,
                                                        "paged_attention_v1"),
                out, query, key_cache, value_cache, block_table, context_lens)


@torch.library.register_fake("mini_paged_attn::reshape_and_cache")
def _reshape_and_cache_fake(key, value, key_cache, value_cache, slot_mapping, *, k_scale=1.0,
                            v_scale=1.0):
    _C.check_kv_scales("reshape_and_cache", k_scale, v_scale)
    _fake_check("reshape_and_cache", _C.check_reshape_and_cache_args, key, value, key_cache,
                value_cache, slot_mapping)


@torch.library.register_fake("mini_paged_attn::copy_blocks")
def _copy_blocks_fake(key_caches, value_caches, block_mapping):
    _fake_check("copy_blocks", _C.check_copy_blocks_args, key_caches, value_caches,
                block_mapping)

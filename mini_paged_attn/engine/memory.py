"""GPU memory planning at start-up: a KV cache budget is checked against what
the GPU has free once the model's activations (and the decode graphs' pool)
are accounted for, so a budget that cannot fit is an error before anything is
allocated, and capturing the graphs never runs out of memory."""
from __future__ import annotations

from typing import List

import torch

from ..layers.attention_metadata import AttentionMetadata
from ..models.llama import LlamaForCausalLM

# cuBLAS workspaces, graph objects and allocator fragmentation.
SLACK_BYTES = 512 * 2**20
_PROFILE_BLOCK = 16


@torch.inference_mode()
def _peak_of_step(model: LlamaForCausalLM, query_lens: List[int], num_logit_rows: int) -> int:
    """Peak bytes allocated, beyond what is allocated now, by one forward pass
    of sequences of ``query_lens`` prompt tokens (logits of the last
    ``num_logit_rows`` tokens). Every layer writes one throwaway cache whose
    blocks all sequences share (their values do not matter here)."""
    config, device = model.config, next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    longest = max(query_lens)
    width = -(-longest // _PROFILE_BLOCK)
    layers = model.attention_layers()
    # This rank's KV heads (all of them at tp=1).
    cache = torch.empty(2, width, _PROFILE_BLOCK, layers[0].num_kv_heads, config.head_dim,
                        dtype=dtype, device=device)
    bound = [(layer.key_cache, layer.value_cache) for layer in layers]
    for layer in layers:
        layer.bind_kv_cache(cache[0], cache[1])
    prefills = [n for n in query_lens if n > 1]
    decodes = [n for n in query_lens if n == 1]
    metadata = AttentionMetadata.build(
        prefills + decodes, prefills + decodes, [list(range(-(-n // _PROFILE_BLOCK)))
                                                 for n in prefills + decodes],
        [p for n in prefills + decodes for p in range(n)], device)
    positions = torch.tensor([p for n in prefills + decodes for p in range(n)], device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        hidden = model(torch.zeros_like(positions), positions, metadata)
        model.compute_logits(hidden[-num_logit_rows:])
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    finally:
        for layer, (k, v) in zip(layers, bound):
            if k is not None:
                layer.bind_kv_cache(k, v)


def check_kv_budget(model: LlamaForCausalLM, kv_bytes: int, max_num_batched_tokens: int,
                    max_num_seqs: int, max_model_len: int, graphs: bool) -> None:
    """``ValueError`` unless a KV cache of ``kv_bytes`` fits beside the largest
    step's activations (a full prefill budget, logits for ``max_num_seqs``
    rows) and, with ``graphs``, the decode graphs' memory (the largest decode
    step's activations)."""
    device = next(model.parameters()).device
    chunks = [min(max_model_len, max_num_batched_tokens - i)
              for i in range(0, max_num_batched_tokens, max_model_len)]
    prefill = _peak_of_step(model, chunks, min(max_num_seqs, max_num_batched_tokens))
    decode = _peak_of_step(model, [1] * max_num_seqs, max_num_seqs) if graphs else 0
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    need = kv_bytes + prefill + decode + SLACK_BYTES
    if need > free:
        fits = max(free - prefill - decode - SLACK_BYTES, 0)
        raise ValueError(
            f"max_kv_memory_bytes: a KV cache of {kv_bytes / 2**30:.2f} GiB does not fit on "
            f"{torch.cuda.get_device_name(device)}: {free / 2**30:.2f} of {total / 2**30:.2f} "
            f"GiB are free after the model, and its activations need {prefill / 2**30:.2f} GiB "
            f"(a step of {max_num_batched_tokens} tokens) + {decode / 2**30:.2f} GiB (decode "
            f"graphs) + {SLACK_BYTES / 2**30:.2f} GiB of slack; at most {fits / 2**30:.2f} GiB "
            f"fits (or lower max_num_batched_tokens / max_num_seqs)")

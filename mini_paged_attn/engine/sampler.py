"""Sampler: every row of a step's logits in one batched call, no Python loop
over rows and no sort unless a row asks for top-k, top-p or min-p."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ..ops import sample_tokens
from ..sampling_params import SamplingParams
from .host_to_device import to_device


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of sample ``index`` of a request seeded with ``seed``."""
    return hash((seed, index)) & (2**63 - 1)


class Sampler:
    """Greedy rows take the argmax. The others draw from ``softmax(logits / T)``
    with the Gumbel-max trick, restricted to top-k, then top-p (on the
    renormalised top-k), then min-p when asked: each shrinks the draw to the
    tokens at or above a per-row threshold, found by a partial ``topk``
    (top-k) or a sort (top-p, min-p) of those rows alone. The noise is counter-based, a function of
    (row seed, position, token) (``ops.sample_tokens``), so a seeded sequence
    draws the same tokens whatever else is in the batch."""

    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                 seeds: Sequence[int], positions: Sequence[int]
                 ) -> Tuple[List[int], List[float]]:
        """``logits [rows, vocab]``; ``seeds`` and ``positions`` (the index of the
        token being drawn) name each row's noise. Returns each row's token and
        its log-probability under the unscaled distribution."""
        tokens, logprobs = self.launch(logits, params, seeds, positions)
        return tokens.tolist(), logprobs.tolist()

    @torch.inference_mode()
    def launch(self, logits: torch.Tensor, params: Sequence[SamplingParams],
               seeds: Sequence[int], positions: Sequence[int]
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The same, left on the device (int64 tokens, float32 log-probabilities)
        without waiting for the GPU."""
        rows, vocab = logits.shape
        device = logits.device
        temperature = to_device([0.0 if p.greedy else p.temperature for p in params],
                                torch.float32, device)
        min_scaled = torch.full((rows,), float("-inf"), device=device)
        filtered = [i for i, p in enumerate(params)
                    if not p.greedy and (0 < p.top_k < vocab or p.top_p < 1 or p.min_p > 0)]
        if filtered:
            idx = to_device(filtered, torch.int64, device)
            min_scaled[idx] = _thresholds(logits[idx].float() * (1.0 / temperature[idx, None]),
                                          [params[i] for i in filtered])
        return sample_tokens(logits, temperature, min_scaled, to_device(seeds, torch.int64, device),
                             to_device(positions, torch.int64, device))


def _thresholds(scaled: torch.Tensor, params: List[SamplingParams]) -> torch.Tensor:
    """The smallest scaled logit each row keeps under its top-k, top-p and min-p."""
    rows, vocab = scaled.shape
    device = scaled.device
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    k_max = max(top_k)
    # A partial selection when every row has a top-k, a full sort otherwise.
    values = scaled.topk(k_max, dim=-1).values if k_max < vocab else \
        scaled.sort(dim=-1, descending=True).values
    rank = torch.arange(k_max, device=device)[None, :]
    k = to_device(top_k, torch.int64, device)[:, None]
    values = values.masked_fill(rank >= k, float("-inf"))
    probs = values.softmax(dim=-1)
    top_p = to_device([p.top_p for p in params], torch.float32, device)[:, None]
    # Keep a token while the more likely ones add up to less than top_p (so the
    # most likely token always stays).
    keep = (rank < k) & (probs.cumsum(dim=-1) - probs < top_p)
    last = keep.sum(dim=-1, keepdim=True) - 1
    threshold = values.gather(1, last)[:, 0]
    # min-p: p >= min_p * p_max, i.e. scaled >= scaled_max + log(min_p).
    min_p = to_device([p.min_p for p in params], torch.float32, device)
    return torch.maximum(threshold, values[:, 0] + torch.log(min_p))

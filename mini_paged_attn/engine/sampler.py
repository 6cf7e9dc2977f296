"""Sampler: next tokens from logits, row by row parameters, batched."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..sampling_params import SamplingParams


def make_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The random stream of sample ``index`` of a request seeded with ``seed``:
    its own, so its tokens do not depend on batching or preemption."""
    return torch.Generator(device=device).manual_seed(hash((seed, index)) & (2**63 - 1))


class Sampler:
    """Greedy rows take the argmax; the others are scaled by temperature,
    restricted to top-k and top-p, and drawn with the exponential race
    (argmax of ``p / E`` with ``E ~ Exp(1)``, which samples from ``p``) so
    each row can draw from its own generator."""

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[Optional[torch.Generator]]
                 ) -> Tuple[List[int], List[float]]:
        """``logits`` float32 ``[rows, vocab]``; returns each row's token and its
        log-probability under the unscaled distribution."""
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if sampled:
            idx = torch.tensor(sampled, device=logits.device)
            tokens[idx] = self._sample(logits[idx], [params[i] for i in sampled],
                                       [generators[i] for i in sampled])
        chosen = logprobs.gather(1, tokens[:, None])[:, 0]
        return tokens.tolist(), chosen.tolist()

    @staticmethod
    def _sample(logits: torch.Tensor, params: List[SamplingParams],
                generators: List[Optional[torch.Generator]]) -> torch.Tensor:
        rows, vocab = logits.shape
        temperature = torch.tensor([p.temperature for p in params], device=logits.device)
        top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params],
                             device=logits.device)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device)
        sorted_logits, order = (logits / temperature[:, None]).sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=logits.device)[None, :]
        probs = sorted_logits.softmax(dim=-1)
        # Keep a token if it is in the top k and the more likely ones add up to
        # less than top_p (so the most likely token always stays).
        drop = (rank >= top_k[:, None]) | (probs.cumsum(dim=-1) - probs > top_p[:, None])
        probs = probs.masked_fill(drop, 0.0)
        noise = torch.empty_like(probs)
        for i, g in enumerate(generators):
            noise[i].exponential_(generator=g)
        picked = (probs / noise).argmax(dim=-1)
        return order.gather(1, picked[:, None])[:, 0]

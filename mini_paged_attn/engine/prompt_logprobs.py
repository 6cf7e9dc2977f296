"""Prompt logprobs (``SamplingParams.prompt_logprobs``), with vLLM's meaning:
for each prompt token after the first, the top-k tokens of the distribution
that predicted it (the logits of the position before) and the token itself,
with their log-probabilities under the raw model (``log_softmax`` of the
logits, before penalties and temperature).

A request that asks computes every prompt position: it takes no prefix-cache
hit while entries are missing. Each prefill chunk adds the entries of its
positions (the last position of a chunk predicts the first token of the
next), so chunked prefill gives what one step would. Entries are recorded
once: a preempted request recomputes its prompt, and the positions that
already have their entry add no row. Requests that do not ask add no row
either: a step's logits stay those of the sampled rows.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Tuple

import torch

from .logits_processors import logprob_entries

if TYPE_CHECKING:
    from .request import Request
    from .sequence import Sequence


def missing_prompt_logprobs(request: "Request") -> bool:
    """Whether ``request`` asks for prompt logprobs and some are still to compute."""
    entries = request.prompt_logprobs
    return entries is not None and len(entries) < request.num_prompt_tokens


def prompt_positions(seq: "Sequence", start: int, num_tokens: int) -> range:
    """The positions among ``start .. start + num_tokens - 1`` of ``seq`` whose
    logits give a missing entry (position ``p`` predicts prompt token ``p + 1``)."""
    request = seq.request
    if not missing_prompt_logprobs(request):
        return range(0)
    # The entries so far cover positions 0 .. len - 2, and computing never
    # skips a position of such a request, so the new ones continue them.
    return range(max(start, len(request.prompt_logprobs) - 1),
                 min(start + num_tokens, request.num_prompt_tokens - 1))


@dataclass
class PromptLogits:
    """A step's logits of the rows that give prompt logprobs: one row per
    position of ``owners`` (request, positions), in order."""
    owners: List[Tuple["Request", range]]
    logits: torch.Tensor

    def record(self) -> None:
        """Appends each position's entry to its request's ``prompt_logprobs``:
        one log_softmax, topk and gather over all the rows."""
        ks: List[int] = []
        targets: List[int] = []
        for request, positions in self.owners:
            ks += [request.sampling_params.prompt_logprobs] * len(positions)
            targets += request.prompt_token_ids[positions.start + 1:positions.stop + 1]
        entries = iter(logprob_entries(torch.log_softmax(self.logits.float(), dim=-1), ks,
                                       targets))
        for request, positions in self.owners:
            request.prompt_logprobs.extend(itertools.islice(entries, len(positions)))

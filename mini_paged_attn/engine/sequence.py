"""Sequence: one stream of tokens being generated, and its place in the cache."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Dict, List, Optional

import torch

if TYPE_CHECKING:
    from .request import Request


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()   # not in the cache: new, or preempted (to recompute)
    RUNNING = enum.auto()   # holds cache slots for its tokens
    FINISHED = enum.auto()


class Sequence:
    """Prompt and generated tokens of one completion (or beam).

    ``num_computed_tokens`` of them have K/V in the cache (the rest are computed
    by the next steps: a prompt, chunk by chunk, or the last sampled token);
    ``num_slots`` have a cache slot. A preempted sequence keeps its tokens and
    restarts from ``num_computed_tokens = 0``, so no token is lost or repeated.
    """

    def __init__(self, seq_id: int, request: "Request", token_ids: List[int], index: int = 0,
                 seed: int = 0):
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = request.num_prompt_tokens
        self.num_computed_tokens = 0
        self.num_slots = 0
        self.num_cached_tokens = 0  # of the last admission, from the prefix cache
        self.status = SequenceStatus.WAITING
        self.cumulative_logprob = 0.0
        self.finish_reason: Optional[str] = None
        self.seed = seed  # of its sampling noise (Sampler)
        # Beam search: log-probabilities of the next token, once every token is computed.
        self.logprobs: Optional[torch.Tensor] = None
        # SamplingParams.logprobs: per output token, {token id: log-probability}.
        self.output_logprobs: List[Dict[int, float]] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def wants_decode_slot(self) -> bool:
        """Whether its next step is a decode token that has no cache slot yet
        (every other token computed, the last one just sampled)."""
        return self.num_uncomputed_tokens == 1 and self.num_slots == self.num_tokens - 1

    @property
    def output_token_ids(self) -> List[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append_token(self, token_id: int, logprob: float) -> None:
        self.token_ids.append(token_id)
        self.cumulative_logprob += logprob

    def fork(self, seq_id: int, index: int, seed: int = 0) -> "Sequence":
        """A running copy that will share this sequence's cache blocks."""
        child = Sequence(seq_id, self.request, self.token_ids, index, seed)
        child.num_computed_tokens = self.num_computed_tokens
        child.num_slots = self.num_slots
        child.status = self.status
        child.cumulative_logprob = self.cumulative_logprob
        child.output_logprobs = list(self.output_logprobs)
        return child

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, {self.status.name})")

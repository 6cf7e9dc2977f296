"""SamplingParams: how the tokens of one request are chosen (vLLM's names)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

# Temperatures below this sample greedily.
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    """
    Args:
        n: completions of the prompt; they share its KV blocks (fork).
        temperature: 0 (or below 1e-5) is greedy; higher flattens the distribution.
        top_p: keep the smallest set of tokens whose probability adds up to ``top_p``.
        top_k: keep the ``top_k`` most likely tokens (-1 or 0: all).
        max_tokens: tokens to generate at most.
        stop_token_ids: ids that end a completion (the id is kept in its output).
        ignore_eos: do not stop at the model's end-of-sequence ids.
        seed: makes the samples of this request reproducible whatever the batch.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop_token_ids: List[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: Optional[int] = None

    def __post_init__(self):
        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got "
                             f"{self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) \
                or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (all), 0 (all) or a positive int, got "
                             f"{self.top_k!r}")
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative ints, got "
                             f"{self.stop_token_ids!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        self.stop_token_ids = list(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        # As vLLM: below 1e-5, 1 / temperature overflows the scaled logits.
        return self.temperature < GREEDY_BELOW

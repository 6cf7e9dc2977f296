"""SamplingParams: how the tokens of one request are chosen (vLLM's names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from .checks import finite_real, is_int

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
        max_tokens: tokens to generate at most (None: up to the model's length).
        stop_token_ids: ids that end a completion (the id is kept in its output).
        stop: strings that end a completion (needs the engine's tokenizer); the
            text ends before the stop string unless ``include_stop_str_in_output``.
        ignore_eos: do not stop at the model's end-of-sequence ids.
        skip_special_tokens: leave special tokens out of the output text.
        seed: makes the samples of this request reproducible whatever the batch.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: Optional[int] = 16
    stop_token_ids: List[int] = field(default_factory=list)
    stop: Union[str, List[str], None] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: Optional[int] = None

    def __post_init__(self):
        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        self.n = int(self.n)
        self.temperature = finite_real("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        self.top_p = finite_real("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (all), 0 (all) or a positive int, got "
                             f"{self.top_k!r}")
        self.top_k = int(self.top_k)
        if self.max_tokens is not None:
            if not is_int(self.max_tokens) or self.max_tokens < 1:
                raise ValueError(f"max_tokens must be None or an int >= 1, got "
                                 f"{self.max_tokens!r}")
            self.max_tokens = int(self.max_tokens)
        if isinstance(self.stop_token_ids, (str, bytes)) or is_int(self.stop_token_ids):
            raise TypeError(f"stop_token_ids must be a list of ints, got {self.stop_token_ids!r}")
        try:
            stop = list(self.stop_token_ids)
        except TypeError:
            raise TypeError(f"stop_token_ids must be a list of ints, got "
                            f"{type(self.stop_token_ids).__name__}") from None
        if not all(is_int(t) and t >= 0 for t in stop):
            raise ValueError(f"stop_token_ids must be non-negative ints, got {stop!r}")
        self.stop_token_ids = [int(t) for t in stop]
        stops = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else \
            self.stop
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s
                                                            for s in stops):
            raise TypeError(f"stop must be a string or a list of non-empty strings, got "
                            f"{self.stop!r}")
        self.stop = list(stops)
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.seed is not None:
            # The seed travels as an int64 next to the logits.
            if not is_int(self.seed) or not -2**63 <= self.seed < 2**63:
                raise ValueError(f"seed must be None or an int64, got {self.seed!r}")
            self.seed = int(self.seed)

    @property
    def greedy(self) -> bool:
        # As vLLM: below 1e-5, 1 / temperature overflows the scaled logits.
        return self.temperature < GREEDY_BELOW

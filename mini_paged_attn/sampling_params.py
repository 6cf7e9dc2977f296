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
        min_p: drop tokens less likely than ``min_p`` times the most likely one.
        presence_penalty, frequency_penalty: subtracted from the logit of each
            output token once (presence) or once per occurrence (frequency).
        repetition_penalty: divides the positive (multiplies the negative)
            logits of every token seen in the prompt or the output.
        min_tokens: tokens to generate before a stop id or string may end it.
        logprobs: report, for each generated token, the ``logprobs`` most likely
            tokens and the chosen one with their log-probabilities.
        prompt_logprobs: report, for each prompt token after the first, the
            ``prompt_logprobs`` most likely tokens of the distribution that
            predicted it and the token itself, with their log-probabilities under
            the raw model (before penalties and temperature). Such a request
            computes its whole prompt: it takes no prefix-cache hit.
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
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
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
        self.min_p = finite_real("min_p", self.min_p)
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            setattr(self, name, finite_real(name, getattr(self, name)))
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")
        self.repetition_penalty = finite_real("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an int >= 0, got {self.min_tokens!r}")
        self.min_tokens = int(self.min_tokens)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                if not is_int(value) or value < 0:
                    raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
                setattr(self, name, int(value))
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
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                             f"({self.max_tokens})")
        if self.seed is not None:
            # The seed travels as an int64 next to the logits.
            if not is_int(self.seed) or not -2**63 <= self.seed < 2**63:
                raise ValueError(f"seed must be None or an int64, got {self.seed!r}")
            self.seed = int(self.seed)

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or
                    self.repetition_penalty != 1)

    @property
    def needs_history(self) -> bool:
        """Whether sampling a token needs the host to know every token before it
        (so the engine does not launch a step before reading the last one)."""
        return self.has_penalties or self.min_tokens > 0 or self.logprobs is not None

    @property
    def greedy(self) -> bool:
        # As vLLM: below 1e-5, 1 / temperature overflows the scaled logits.
        return self.temperature < GREEDY_BELOW

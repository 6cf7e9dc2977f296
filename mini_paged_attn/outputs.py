"""What ``LLM.generate`` and ``LLM.beam_search`` return (vLLM's shapes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass
class CompletionOutput:
    """One completion: ``token_ids`` are the generated ids only (a stop id, or
    the token that completed a stop string, included); ``text`` their text when
    the engine has a tokenizer (a stop string excluded unless asked for);
    ``finish_reason`` is "stop" or "length"."""

    index: int
    token_ids: List[int]
    cumulative_logprob: float
    finish_reason: Optional[str]
    text: str = ""
    # With SamplingParams.logprobs: per token, {token id: log-probability}.
    logprobs: Optional[List[Dict[int, float]]] = None


@dataclass
class RequestOutput:
    """The completions of one prompt, ``outputs[j]`` for sample or beam ``j``
    (beams best first); ``num_cached_tokens`` of the prompt came from the prefix
    cache. With SamplingParams.prompt_logprobs, ``prompt_logprobs`` has one
    entry per prompt token: None for the first, then {token id: log-probability}
    as in ``CompletionOutput.logprobs``."""

    request_id: int
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    prompt: Optional[str] = None  # the prompt's text, when it was given as text
    prompt_logprobs: Optional[List[Optional[Dict[int, float]]]] = None

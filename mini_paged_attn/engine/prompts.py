"""Prompts as the engine takes them: lists of Python ints.

A prompt may be text (with a tokenizer), vLLM's dict prompts, a list or tuple
of ints (numpy integers and 0-d integer tensors included), a 1-D integer
tensor or numpy array, or any iterable of them; anything else is a
``TypeError`` or ``ValueError`` naming the prompt, never numpy's or torch's
"truth value is ambiguous".
"""
from __future__ import annotations

import numbers
from typing import Any, List, Optional, Tuple

import numpy as np
import torch


def _as_token(x: Any) -> Any:
    """x as a Python int if it is one token id (not a bool), else None."""
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 0:
        x = x.item()
    if isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)):
        return int(x)
    return None


def token_ids(prompt: Any, vocab_size: int, name: str = "prompt") -> List[int]:
    """``prompt`` as a non-empty list of ids in ``[0, vocab_size)``."""
    if type(prompt) in (list, tuple) and prompt and all(type(t) is int for t in prompt):
        # The common case, checked at C speed: plain ints.
        if min(prompt) >= 0 and max(prompt) < vocab_size:
            return list(prompt)
    if isinstance(prompt, (str, bytes)):
        raise TypeError(f"{name} must be token ids, got a string (tokenize it first)")
    if isinstance(prompt, (torch.Tensor, np.ndarray)) and prompt.ndim != 1:
        raise ValueError(f"{name} must be 1-D token ids, got shape {tuple(prompt.shape)}")
    try:
        items = prompt.tolist() if isinstance(prompt, (torch.Tensor, np.ndarray)) else list(prompt)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of token ids, got "
                        f"{type(prompt).__name__}") from None
    ids = []
    for i, x in enumerate(items):
        t = _as_token(x)
        if t is None:
            raise TypeError(f"{name}[{i}] must be an int token id, got {type(x).__name__} {x!r}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name}[{i}] = {t} is not a token id in [0, {vocab_size})")
        ids.append(t)
    if not ids:
        raise ValueError(f"{name} is empty: a prompt needs at least one token id")
    return ids


def resolve(prompt: Any, tokenizer: Any) -> Tuple[Any, Optional[str]]:
    """A prompt's token ids (unchecked) and its text: text is encoded with
    ``tokenizer``; vLLM's dict prompts are ``{"prompt": text}`` or
    ``{"prompt_token_ids": ids}``."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt["prompt_token_ids"], prompt.get("prompt")
        if "prompt" not in prompt:
            raise ValueError(f"a dict prompt needs 'prompt' or 'prompt_token_ids', got keys "
                             f"{sorted(prompt)}")
        prompt = prompt["prompt"]
        if not isinstance(prompt, str):
            raise TypeError(f"a dict prompt's 'prompt' must be a string, got "
                            f"{type(prompt).__name__}")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer, and this LLM has none (pass "
                             "tokenizer=, or give token ids)")
        return tokenizer(prompt).input_ids, prompt
    return prompt, None


def prompt_list(prompts: Any) -> list:
    """One prompt, or a sequence (or iterable, or 2-D tensor) of prompts, as a list of prompts."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, bytes):
        raise TypeError("prompts must be text or token ids, got bytes")
    if isinstance(prompts, (torch.Tensor, np.ndarray)):
        return [prompts] if prompts.ndim == 1 else list(prompts)
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"prompts must be a list of token ids or a list of them, got "
                        f"{type(prompts).__name__}") from None
    return [prompts] if prompts and _as_token(prompts[0]) is not None else prompts

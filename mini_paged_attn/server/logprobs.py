"""The engine's log-probabilities ({token id: logprob} per token) as the
OpenAI API's JSON: the completions API's ``tokens`` / ``token_logprobs`` /
``top_logprobs`` / ``text_offset``, the chat API's ``content`` list, and
vLLM's ``prompt_logprobs``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional


class TokenText:
    """One token's text: the tokenizer's decoding of it alone, or, without a
    tokenizer, ``token_id:<id>`` (vLLM's ``return_tokens_as_token_ids``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])


def completion_logprobs(token_ids: List[int], logprobs: List[Dict[int, float]], text: TokenText,
                        offset: int = 0) -> Dict[str, Any]:
    """A completion choice's ``logprobs``; ``offset`` is where the first token's
    text starts in the choice's text (past what earlier stream chunks sent)."""
    tokens = [text(t) for t in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens,
            "token_logprobs": [entry[t] for t, entry in zip(token_ids, logprobs)],
            "top_logprobs": [{text(t): v for t, v in entry.items()} for entry in logprobs],
            "text_offset": offsets}


def chat_logprobs(token_ids: List[int], logprobs: List[Dict[int, float]], text: TokenText,
                  top: int) -> Dict[str, Any]:
    """A chat choice's ``logprobs``: each token with its ``top`` most likely
    alternatives, most likely first."""

    def token(t: int, logprob: float) -> Dict[str, Any]:
        s = text(t)
        return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}

    return {"content": [
        dict(token(t, entry[t]),
             top_logprobs=[token(k, v) for k, v in
                           sorted(entry.items(), key=lambda kv: -kv[1])[:top]])
        for t, entry in zip(token_ids, logprobs)]}


def prompt_logprobs(entries: Optional[List[Optional[Dict[int, float]]]],
                    text: TokenText) -> Optional[List[Optional[Dict[str, Any]]]]:
    """vLLM's JSON of ``RequestOutput.prompt_logprobs``: per prompt token
    {id: {logprob, decoded_token}}, None for the first."""
    if entries is None:
        return None
    return [None if entry is None else
            {str(t): {"logprob": v, "decoded_token": text(t)} for t, v in entry.items()}
            for entry in entries]

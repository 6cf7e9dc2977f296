"""The checkpoint's tokenizer, and text built from token ids as they arrive.

Tokenizers load offline through transformers' ``AutoTokenizer`` (a
``tokenizer.json`` beside the weights, with its ``tokenizer_config.json`` chat
template), as vLLM loads them.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

# Prompt tokens decoded before the output's, so that the first output token
# gets the spacing it has in context (SentencePiece drops a leading space alone).
_CONTEXT_TOKENS = 6
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in directory ``path``; errors name the directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer {path!r} is not a directory")
    if not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{path!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES)});"
                                f" pass tokenizer= or skip_tokenizer_init=True")
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("loading a tokenizer needs transformers (pip install transformers)") \
            from e
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers' errors do not always name the directory
        raise ValueError(f"cannot load the tokenizer in {path!r}: {type(e).__name__}: {e}") from e


def decode_output(tokenizer: Any, prompt_ids: List[int], output_ids: List[int],
                  skip_special_tokens: bool = True) -> str:
    """The text of ``output_ids`` as it reads after the prompt: the same text the
    incremental detokenizer builds, in one decode."""
    context = prompt_ids[-_CONTEXT_TOKENS:]
    head = tokenizer.decode(context, skip_special_tokens=skip_special_tokens)
    full = tokenizer.decode(context + output_ids, skip_special_tokens=skip_special_tokens)
    return full[len(head):] if full.startswith(head) else full


class IncrementalDetokenizer:
    """Text of a growing list of output tokens. A token that ends inside a
    multi-byte UTF-8 character adds nothing until the character is complete."""

    def __init__(self, tokenizer: Any, prompt_ids: List[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0             # decoding starts here, for context
        self.read_offset = len(self.ids)   # text up to here is already emitted
        self.text = ""
        self.num_tokens = 0                # output tokens appended

    def _decode(self, ids: List[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def append(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (maybe empty)."""
        self.ids.append(token_id)
        self.num_tokens += 1
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta


def find_stop(text: str, new_len: int, stops: List[str]) -> Optional[int]:
    """Where the first stop string that the last ``new_len`` characters of
    ``text`` complete begins, or None."""
    best = None
    for stop in stops:
        start = max(0, len(text) - new_len - len(stop) + 1)
        i = text.find(stop, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best

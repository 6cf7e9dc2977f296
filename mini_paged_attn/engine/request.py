"""Request: one prompt and the sequences generated from it (vLLM's sequence group)."""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams
from ..tokenizer import IncrementalDetokenizer, decode_output, find_stop
from .sequence import Sequence, SequenceStatus


class Request:
    """A prompt with ``sampling_params`` (sampled by the engine), or with none
    (beam search: the caller reads each sequence's ``logprobs`` and decides).

    It starts as one sequence; ``num_seqs`` is how many it may run at once
    (``n`` samples forked from the prompt, or the beam width), reserved when it
    is admitted so that later forks always find a row.
    """

    def __init__(self, request_id: int, prompt_token_ids: List[int],
                 sampling_params: Optional[SamplingParams], max_tokens: int,
                 stop_token_ids: FrozenSet[int], num_seqs: int, tokenizer: Optional[Any] = None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.sampling_params = sampling_params
        self.max_tokens = max_tokens
        self.stop_token_ids = stop_token_ids
        self.num_seqs = num_seqs
        self.seqs: List[Sequence] = []
        self.num_cached_tokens: Optional[int] = None  # prompt tokens served by the prefix cache
        self.seed = 0  # of its samples' noise: the params' seed, or one the engine drew
        self.tokenizer = tokenizer
        self.prompt: Optional[str] = None  # its text, when given as text
        # SamplingParams.prompt_logprobs: an entry per prompt token so far (None
        # for the first, which nothing predicts); see prompt_logprobs.py.
        asks = sampling_params is not None and sampling_params.prompt_logprobs is not None
        self.prompt_logprobs: Optional[List[Optional[Dict[int, float]]]] = \
            [None] if asks else None
        # Stop strings are matched on text built token by token, per sequence.
        self.stops = sampling_params.stop if sampling_params is not None else []
        self._detok: Dict[int, IncrementalDetokenizer] = {}
        self._stop_text: Dict[int, str] = {}  # seq index -> its text, cut at the stop string

    @property
    def forked(self) -> bool:
        """Whether its sequences exist (samples are forked at the first token)."""
        return len(self.seqs) == self.num_seqs

    @property
    def open_seats(self) -> int:
        """Rows it may still need: one per sequence that can run, forks included."""
        return self.num_seqs - sum(s.status == SequenceStatus.FINISHED for s in self.seqs)

    @property
    def finished(self) -> bool:
        return all(s.status == SequenceStatus.FINISHED for s in self.seqs)

    @property
    def progress(self) -> Tuple[int, bool]:
        """(tokens generated so far, finished): changes exactly when its output does."""
        return sum(s.num_output_tokens for s in self.seqs), self.finished

    def check_stop(self, seq: Sequence) -> bool:
        """Sets ``seq.finish_reason`` if its last token ends it."""
        early = self.sampling_params is not None and \
            seq.num_output_tokens < self.sampling_params.min_tokens
        if seq.num_output_tokens and not early and seq.token_ids[-1] in self.stop_token_ids:
            seq.finish_reason = "stop"
        elif self.stops and seq.num_output_tokens and self._hits_stop_string(seq) and not early:
            seq.finish_reason = "stop"
        elif seq.num_output_tokens >= self.max_tokens:
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    @property
    def _skip_special_tokens(self) -> bool:
        return self.sampling_params.skip_special_tokens if self.sampling_params else True

    def _detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        """The sequence's text built token by token, brought up to its last token
        (a fork's starts over its parent's tokens)."""
        detok = self._detok.get(seq.index)
        if detok is None:
            detok = self._detok[seq.index] = IncrementalDetokenizer(
                self.tokenizer, self.prompt_token_ids, self._skip_special_tokens)
        for t in seq.token_ids[self.num_prompt_tokens + detok.num_tokens:]:
            detok.append(t)
        return detok

    def _hits_stop_string(self, seq: Sequence) -> bool:
        before = len(self._detok[seq.index].text) if seq.index in self._detok else 0
        detok = self._detokenizer(seq)
        new = len(detok.text) - before
        at = find_stop(detok.text, new, self.stops) if new else None
        if at is None:
            return False
        if self.sampling_params.include_stop_str_in_output:
            stop = next(s for s in self.stops if detok.text.startswith(s, at))
            at += len(stop)
        self._stop_text[seq.index] = detok.text[:at]
        return True

    def _text(self, seq: Sequence) -> str:
        if self.tokenizer is None:
            return ""
        if seq.index in self._stop_text:
            return self._stop_text[seq.index]
        if seq.finish_reason is None:
            # Streamed while running: a token's worth of decoding a step, not the
            # whole output (the text withholds a character not yet complete).
            return self._detokenizer(seq).text
        return decode_output(self.tokenizer, self.prompt_token_ids, seq.output_token_ids,
                             self._skip_special_tokens)

    def output(self) -> RequestOutput:
        asked = self.sampling_params is not None and self.sampling_params.logprobs is not None
        outputs = [CompletionOutput(s.index, s.output_token_ids, s.cumulative_logprob,
                                    s.finish_reason, self._text(s),
                                    s.output_logprobs if asked else None)
                   for s in sorted(self.seqs, key=lambda s: s.index)]
        prompt_logprobs = None if self.prompt_logprobs is None else list(self.prompt_logprobs)
        return RequestOutput(self.request_id, self.prompt_token_ids, outputs, self.finished,
                             self.num_cached_tokens or 0, self.prompt, prompt_logprobs)

"""Request: one prompt and the sequences generated from it (vLLM's sequence group)."""
from __future__ import annotations

from typing import FrozenSet, List, Optional

from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams
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
                 stop_token_ids: FrozenSet[int], num_seqs: int):
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

    def check_stop(self, seq: Sequence) -> bool:
        """Sets ``seq.finish_reason`` if its last token ends it."""
        if seq.num_output_tokens and seq.token_ids[-1] in self.stop_token_ids:
            seq.finish_reason = "stop"
        elif seq.num_output_tokens >= self.max_tokens:
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    def output(self) -> RequestOutput:
        outputs = [CompletionOutput(s.index, s.output_token_ids, s.cumulative_logprob,
                                    s.finish_reason) for s in sorted(self.seqs, key=lambda s: s.index)]
        return RequestOutput(self.request_id, self.prompt_token_ids, outputs, self.finished,
                             self.num_cached_tokens or 0)

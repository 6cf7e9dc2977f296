"""OverlappedDecoder: decode steps that keep the GPU fed while the host does
its bookkeeping.

In a steady decode phase (nothing waiting, every running sequence one token
per step, all sampled by the engine, CUDA graphs on) step N + 1 is launched
before step N's tokens reach the host: its input ids are step N's sampled
tokens, still on the GPU, and everything else about it (positions, slots,
rows, sampling rows) is known without them. The host then reads step N's
tokens and appends them while the GPU computes step N + 1.

A sequence whose step-N token ends it (a stop id) has already been launched
in step N + 1: that token is dropped when step N + 1 is read. One that ends
by length is known in advance and not launched. Any other kind of step
first drains the step in flight, so the engine's state is as if every step
had been synchronous, except that tokens computed this way are not hashed
for the prefix cache (their ids were unknown when their blocks were
allocated).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

import torch

from .host_to_device import to_device
from .sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from .llm_engine import LLMEngine
    from .request import Request


@dataclass
class InflightStep:
    """A launched decode step: its sequences and their sampled tokens, on the
    GPU and on their way to pinned host memory (``ready`` marks the copy)."""
    seqs: List[Sequence]
    tokens: torch.Tensor
    host_tokens: torch.Tensor
    host_logprobs: torch.Tensor
    ready: torch.cuda.Event

    @classmethod
    def launch(cls, seqs: List[Sequence], tokens: torch.Tensor,
               logprobs: torch.Tensor) -> "InflightStep":
        host_tokens = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host_logprobs = torch.empty(logprobs.shape, dtype=logprobs.dtype, pin_memory=True)
        host_tokens.copy_(tokens, non_blocking=True)
        host_logprobs.copy_(logprobs, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(seqs, tokens, host_tokens, host_logprobs, ready)


class OverlappedDecoder:
    def __init__(self, engine: "LLMEngine"):
        self.engine = engine
        self.inflight: Optional[InflightStep] = None

    def can_run(self) -> bool:
        """Whether the next step can be an overlapped decode step."""
        scheduler = self.engine.scheduler
        running = scheduler.running
        if scheduler.waiting or not running or len(running) > self.engine.runner.buckets[-1]:
            return False
        if any(s.request.sampling_params is None or not s.request.forked
               or s.request.sampling_params.needs_history for s in running):
            return False
        # In flight, every running sequence is in the step (nothing else can join).
        return self.inflight is not None or all(s.wants_decode_slot for s in running)

    def step(self) -> Optional[List["Request"]]:
        """Launches the next decode step, then reads the one before it. Returns
        the requests that finished, or None when the cache cannot give every
        sequence its next slot (nothing changed; the caller drains and runs a
        synchronous step, which preempts)."""
        engine, previous = self.engine, self.inflight
        if previous is None:
            seqs = list(engine.scheduler.running)
            token_ids: Optional[List[int]] = [s.token_ids[-1] for s in seqs]
            positions = [s.num_tokens - 1 for s in seqs]
        else:
            # The sequences still going once their tokens in flight are appended.
            seqs = [s for s in previous.seqs if s.status == SequenceStatus.RUNNING
                    and s.num_output_tokens + 1 < s.request.max_tokens]
            token_ids = None
            positions = [s.num_tokens for s in seqs]
        if seqs:
            try:
                slots = engine.kv_cache.append_decodes(seqs, token_ids)
            except MemoryError:
                return None
            source = None
            if previous is not None:
                index: Dict[int, int] = {id(s): i for i, s in enumerate(previous.seqs)}
                rows = [index[id(s)] for s in seqs]
                source = previous.tokens[:len(rows)] if rows == list(range(len(rows))) else \
                    previous.tokens.index_select(0, to_device(rows, torch.int64,
                                                              previous.tokens.device))
            logits = engine.runner.decode(seqs, slots, positions, token_ids, source)
            tokens, logprobs = engine.sampler.launch(
                logits, [s.request.sampling_params for s in seqs], [s.seed for s in seqs],
                [p + 1 for p in positions])
            self.inflight = InflightStep.launch(seqs, tokens, logprobs)
        else:
            self.inflight = None
        finished = self._read(previous) if previous is not None else []
        engine.record_cache_stats()
        return finished

    def drain(self) -> List["Request"]:
        """Reads the step in flight, if any; the engine is then synchronous."""
        previous, self.inflight = self.inflight, None
        return self._read(previous) if previous is not None else []

    def _read(self, step: InflightStep) -> List["Request"]:
        step.ready.synchronize()
        finished = []
        for seq, token, logprob in zip(step.seqs, step.host_tokens.tolist(),
                                       step.host_logprobs.tolist()):
            if seq.status != SequenceStatus.RUNNING:
                continue  # ended by the step before (a stop id) or aborted
            seq.num_computed_tokens += 1
            request = self.engine.append_token(seq, token, logprob)
            if request is not None:
                finished.append(request)
        return finished

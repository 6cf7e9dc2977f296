"""Scheduler: continuous batching over a waiting and a running queue."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

import torch

from ..cache.kv_cache import KVCache
from .prompt_logprobs import missing_prompt_logprobs
from .sequence import Sequence, SequenceStatus


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    prompt_tokens: int = 0        # tokens admitted (prompts, and recomputed tokens)
    cached_tokens: int = 0        # of those, served by the prefix cache
    num_partial_prefills: int = 0  # prompt chunks that left part of the prompt for later


@dataclass
class ScheduledBatch:
    """One step's work: ``(sequence, number of its next uncomputed tokens)``
    pairs in scheduling order. When the running sequences' decode tokens got
    their slots in one batched call, ``decode_slots`` holds those slots (int64,
    host) for the first ``len(decode_slots)`` entries, each of one token."""
    entries: List[Tuple[Sequence, int]] = field(default_factory=list)
    decode_slots: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)


class Scheduler:
    """Picks each step's work: which sequences run and how many of their
    uncomputed tokens (a whole prompt, a chunk of it, or one decode token).

    Every step, running sequences (oldest first) get their tokens within the
    token budget ``max_num_batched_tokens``; a long prompt gets what is left of
    the budget and continues in the next steps (chunked prefill). A sequence
    that needs a slot for its new token when no block is free preempts the
    newest running sequence (by recompute: its blocks are freed and it goes
    back to the front of the waiting queue with every token it has; it is
    computed again, helped by the prefix cache). Then, unless something was
    preempted, waiting sequences are admitted in order while the budget, the
    ``max_num_seqs`` rows and the cache allow; a prompt's prefix found in the
    prefix cache is not computed again (unless its request still needs prompt
    logprobs, which need every position's logits).
    """

    def __init__(self, kv_cache: KVCache, max_num_seqs: int, max_num_batched_tokens: int):
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: Deque[Sequence] = deque()
        self.running: List[Sequence] = []
        self.stats = SchedulerStats()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _seats_in_use(self) -> int:
        # An admitted request keeps a row for every sequence it may still run,
        # so its forks (samples, beams) always find one.
        requests: Dict[int, int] = {seq.request.request_id: seq.request.open_seats
                                    for seq in self.running}
        return sum(requests.values())

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv_cache.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.logprobs = None
        self.waiting.appendleft(seq)
        self.stats.num_preemptions += 1

    def _admit(self, seq: Sequence) -> None:
        num_cached = self.kv_cache.add(seq, reuse_prefix=not missing_prompt_logprobs(seq.request))
        seq.num_computed_tokens = num_cached
        seq.num_cached_tokens = num_cached
        if seq.request.num_cached_tokens is None:
            seq.request.num_cached_tokens = num_cached
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self.stats.prompt_tokens += seq.num_tokens
        self.stats.cached_tokens += num_cached

    def schedule(self) -> ScheduledBatch:
        """The next step's work (see :class:`ScheduledBatch`)."""
        budget = self.max_num_batched_tokens
        batch = ScheduledBatch()
        scheduled = batch.entries
        preempted = False
        i = 0
        decodes = self._decode_batch(budget)
        if decodes:
            try:
                batch.decode_slots = self.kv_cache.append_decodes(
                    decodes, [seq.token_ids[-1] for seq in decodes])
            except MemoryError:
                pass  # all or nothing: the loop below preempts
            else:
                scheduled += [(seq, 1) for seq in decodes]
                budget -= len(decodes)
                i = len(self.running)
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0:  # a beam waiting for its siblings
                i += 1
                continue
            if seq.num_slots < seq.num_tokens:
                while not self.kv_cache.can_append(seq):
                    victim = self.running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                if seq.status != SequenceStatus.RUNNING:
                    break
                self.kv_cache.append(seq)
            budget = self._take(scheduled, seq, num_new, budget)
            i += 1

        seats = self._seats_in_use() if self.waiting else 0
        while self.waiting and budget > 0 and not preempted:
            seq = self.waiting[0]
            # A request already admitted holds this sequence's seat.
            extra = 0 if any(s.status == SequenceStatus.RUNNING for s in seq.request.seqs) \
                else seq.request.open_seats
            if seats + extra > self.max_num_seqs or not self.kv_cache.can_add(seq):
                break
            self.waiting.popleft()
            self._admit(seq)
            seats += extra
            budget = self._take(scheduled, seq, min(seq.num_uncomputed_tokens, budget), budget)
        return batch

    def _decode_batch(self, budget: int) -> List[Sequence]:
        """The running sequences with work, when each needs one decode token
        and a slot for it (the others are beams waiting for their siblings) and
        all fit the budget: they can take their slots in one call. Empty
        otherwise."""
        decodes = [seq for seq in self.running if seq.num_uncomputed_tokens]
        if len(decodes) > budget or not all(seq.wants_decode_slot for seq in decodes):
            return []
        return decodes

    def _take(self, scheduled: List[Tuple[Sequence, int]], seq: Sequence, num_new: int,
              budget: int) -> int:
        scheduled.append((seq, num_new))
        if num_new < seq.num_uncomputed_tokens:
            self.stats.num_partial_prefills += 1
        return budget - num_new

    def finish(self, seq: Sequence) -> None:
        """Frees a finished running sequence's slots at once."""
        self.running.remove(seq)
        self.kv_cache.free(seq)
        seq.status = SequenceStatus.FINISHED

    def drop(self, seq: Sequence) -> None:
        """Removes a sequence that will not continue (a pruned beam)."""
        # A step that raised midway may have left the status and the queue
        # out of step, so each is checked on its own.
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq.status == SequenceStatus.RUNNING:
            self.kv_cache.free(seq)
        seq.status = SequenceStatus.FINISHED

    def add_fork(self, parent: Sequence, child: Sequence) -> None:
        """Runs ``child``, a fork of the running ``parent``, sharing its cache."""
        self.kv_cache.fork(parent, child)
        self.running.append(child)

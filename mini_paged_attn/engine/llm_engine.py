"""LLMEngine: requests in, one continuous-batching step at a time."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, FrozenSet, List, Optional

import torch

from ..cache.kv_cache import KVCache
from ..models.llama import LlamaForCausalLM
from ..sampling_params import SamplingParams
from .host_to_device import to_device
from .logits_processors import process_logits, top_logprobs
from .model_runner import ModelRunner
from .overlap import OverlappedDecoder
from .prompts import token_ids
from .request import Request
from .sampler import Sampler, sample_seed
from .scheduler import Scheduler
from .sequence import Sequence

if TYPE_CHECKING:
    from ..parallel.workers import WorkerGroup


@dataclass
class CacheStats:
    """Per-step samples of the cache, summed (divide by ``steps`` for means)."""
    steps: int = 0
    used_blocks: int = 0       # blocks reserved for live sequences
    unused_slots: int = 0      # reserved token slots that hold no token
    peak_used_blocks: int = 0
    peak_saved_blocks: int = 0  # blocks the live sequences would add with no sharing


class LLMEngine:
    """Owns a model, its KV cache, a :class:`Scheduler`, a :class:`ModelRunner`
    and a :class:`Sampler`. ``add_request`` queues a prompt; each ``step`` runs
    one batch and returns the requests it finished. Under tensor parallelism
    this is the driver's engine and ``workers`` run the other ranks' model."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, seed: int = 0,
                 enforce_eager: bool = False, tokenizer: Optional[Any] = None,
                 workers: Optional["WorkerGroup"] = None):
        self.model = model
        self.tokenizer = tokenizer  # for output text and stop strings; None: ids only
        self.device = next(model.parameters()).device
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.scheduler = Scheduler(kv_cache, max_num_seqs, max_num_batched_tokens)
        self.runner = ModelRunner(model, kv_cache, self.device, max_num_seqs, enforce_eager,
                                  workers)
        # Overlapped steps feed tokens on the driver's GPU to the next step,
        # which a worker cannot read: off under tensor parallelism.
        self.overlap = OverlappedDecoder(self) if self.runner.graphs is not None and \
            model.tp.size == 1 else None
        self.sampler = Sampler()
        # Unseeded requests get their seeds from this stream, so a whole run is reproducible.
        self.seeds = random.Random(seed)
        self.eos_token_ids: FrozenSet[int] = frozenset(model.config.eos_token_id)
        self.cache_stats = CacheStats()
        self.num_generated_tokens = 0
        self._next_request_id = 0
        self._next_seq_id = 0

    def new_seq_id(self) -> int:
        self._next_seq_id += 1
        return self._next_seq_id - 1

    def add_request(self, prompt_token_ids: List[int], sampling_params: Optional[SamplingParams],
                    max_tokens: Optional[int] = None,
                    stop_token_ids: Optional[FrozenSet[int]] = None,
                    num_seqs: Optional[int] = None) -> Request:
        """Queues a prompt. With ``sampling_params`` the engine samples its
        tokens; without (beam search), ``max_tokens``, ``stop_token_ids`` and
        ``num_seqs`` are given and the caller picks tokens from ``seq.logprobs``."""
        prompt_token_ids = token_ids(prompt_token_ids, self.model.config.vocab_size)
        if sampling_params is not None:
            p = sampling_params
            max_tokens, num_seqs = p.max_tokens, p.n
            if max_tokens is None:
                max_tokens = max(1, self.max_model_len - len(prompt_token_ids))
            stop_token_ids = frozenset(p.stop_token_ids) | (
                frozenset() if p.ignore_eos else self.eos_token_ids)
            if p.stop and self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer: the engine has none")
        if len(prompt_token_ids) + max_tokens > self.max_model_len:
            raise ValueError(f"prompt of {len(prompt_token_ids)} tokens + max_tokens={max_tokens} "
                             f"exceeds max_model_len={self.max_model_len}")
        if num_seqs > self.scheduler.max_num_seqs:
            raise ValueError(f"a request of {num_seqs} sequences exceeds max_num_seqs="
                             f"{self.scheduler.max_num_seqs}")
        request = Request(self._next_request_id, prompt_token_ids, sampling_params,
                          max_tokens, stop_token_ids, num_seqs, self.tokenizer)
        self._next_request_id += 1
        if sampling_params is not None:
            seed = sampling_params.seed
            request.seed = self.seeds.getrandbits(63) if seed is None else seed
        request.seqs.append(Sequence(self.new_seq_id(), request, request.prompt_token_ids, 0,
                                     sample_seed(request.seed, 0)))
        self.scheduler.add(request.seqs[0])
        return request

    def abort(self, request: Request) -> None:
        """Stops a request: its sequences leave the queues and free their slots
        (an overlapped step in flight skips them when it is read)."""
        for seq in request.seqs:
            self.scheduler.drop(seq)

    def abort_all(self) -> None:
        """Stops every request; the engine is then idle."""
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.drop(seq)
        if self.overlap is not None:
            self.overlap.inflight = None

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> List[Request]:
        """Runs one step; returns the requests it finished (with overlapped
        decode steps, those the step before finished)."""
        finished: List[Request] = []
        if self.overlap is not None:
            if self.overlap.can_run():
                done = self.overlap.step()
                if done is not None:
                    return done
            finished = self.overlap.drain()
            if not self.scheduler.has_unfinished:
                return finished
        batch = self.scheduler.schedule()
        if not batch:
            raise RuntimeError(
                f"no sequence can run: the KV cache ({self.kv_cache.num_blocks} blocks of "
                f"{self.kv_cache.block_size} tokens) cannot hold the next waiting sequence "
                f"while the running ones keep theirs; give it more memory")
        due, logits, prompt_logits = self.runner.execute(batch)
        if prompt_logits is not None:
            prompt_logits.record()
        # The batched decode tokens count as written at their next decode step.
        first = 0 if batch.decode_slots is None else len(batch.decode_slots)
        for seq, n in batch.entries[first:]:
            self.kv_cache.mark_written(seq, seq.num_computed_tokens, n)
        for seq, n in batch:
            seq.num_computed_tokens += n
        self.record_cache_stats()
        sampled = [i for i, seq in enumerate(due) if seq.request.sampling_params is not None]
        for i, seq in enumerate(due):
            if seq.request.sampling_params is None:
                seq.logprobs = torch.log_softmax(logits[i].float(), dim=-1)
        return finished + self._sample(due, logits, sampled)

    def _sample(self, due: List[Sequence], logits: torch.Tensor,
                sampled: List[int]) -> List[Request]:
        rows, targets = [], []
        for i in sampled:
            seq = due[i]
            request = seq.request
            targets.append(seq)
            rows.append(i)
            if not request.forked:
                # The prompt is computed once; the other samples fork from it.
                for j in range(1, request.num_seqs):
                    child = seq.fork(self.new_seq_id(), j, sample_seed(request.seed, j))
                    self.scheduler.add_fork(seq, child)  # first: if it raises, no stray child
                    request.seqs.append(child)
                    targets.append(child)
                    rows.append(i)
        if not targets:
            return []
        if rows != list(range(len(due))):
            logits = logits[to_device(rows, torch.int64, logits.device)]
        logits = process_logits(logits, targets)
        tokens, logprobs = self.sampler(
            logits, [s.request.sampling_params for s in targets], [s.seed for s in targets],
            [s.num_tokens for s in targets])
        for i, top in top_logprobs(logits, targets, tokens).items():
            targets[i].output_logprobs.append(top)
        finished = []
        for seq, token, logprob in zip(targets, tokens, logprobs):
            request = self.append_token(seq, token, logprob)
            if request is not None:
                finished.append(request)
        return finished

    def append_token(self, seq: Sequence, token: int, logprob: float) -> Optional[Request]:
        """Appends a sampled token; returns the request if that finished it."""
        seq.append_token(token, logprob)
        self.num_generated_tokens += 1
        if seq.request.check_stop(seq):
            self.scheduler.finish(seq)
            if seq.request.finished:
                return seq.request
        return None

    def record_cache_stats(self) -> None:
        s, running = self.cache_stats, self.scheduler.running
        used = self.kv_cache.num_used_blocks
        logical = self.kv_cache.num_logical_blocks(running)
        s.steps += 1
        s.used_blocks += used
        s.unused_slots += self.kv_cache.num_unused_slots(running)
        s.peak_used_blocks = max(s.peak_used_blocks, used)
        s.peak_saved_blocks = max(s.peak_saved_blocks, logical - used)

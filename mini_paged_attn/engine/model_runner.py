"""ModelRunner: turns a scheduled step into model inputs and returns the logits
of the sequences that are due for their next token (and of the prompt
positions whose requests ask for prompt logprobs).

On a GPU a step with decode tokens only runs at a bucket batch size from the
static inputs of :class:`DecodeInputs`, replaying a captured CUDA graph unless
``enforce_eager``; other steps (with prompt tokens) run eagerly from inputs
sent through pinned memory. Neither synchronises with the GPU.

Under tensor parallelism the driver's runner (``workers`` given) sends each
step's inputs to the workers (``parallel.worker``), whose runners compute the
same step with :meth:`run_eager` / :meth:`run_decode`; the graphs then end at
the hidden states and the logits are gathered eagerly, on the driver only.
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Tuple

import torch

from ..cache.kv_cache import KVCache
from ..layers.attention_metadata import AttentionMetadata
from ..models.llama import LlamaForCausalLM
from .decode_graphs import DecodeGraphs, DecodeInputs, bucket_sizes
from .host_to_device import to_device
from .prompt_logprobs import PromptLogits, prompt_positions
from .scheduler import ScheduledBatch
from .sequence import Sequence

if TYPE_CHECKING:
    from ..parallel.workers import WorkerGroup


class EagerInputs(NamedTuple):
    """An eager step's host inputs: the tokens (prefills first), the rows of
    the block table their sequences use and the hidden-state rows to turn
    into logits."""
    input_ids: List[int]
    positions: List[int]
    slot_mapping: torch.Tensor
    rows: List[int]
    width: int  # block-table columns the longest sequence needs
    context_lens: List[int]
    query_start_loc: List[int]
    num_prefills: int
    logit_rows: List[int]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, device: torch.device,
                 max_num_seqs: int, enforce_eager: bool = False,
                 workers: Optional["WorkerGroup"] = None):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.workers = workers
        self.sync = None
        if workers is not None:
            from ..parallel.cache_sync import CacheSync
            self.sync = CacheSync(kv_cache)
        # Under tensor parallelism the logits' gather stays out of the graphs.
        self.graphs_end_at_logits = model.tp.size == 1
        kv_cache.bind(model.attention_layers())
        self.buckets: List[int] = []
        self.graphs = None
        if device.type == "cuda":
            self.buckets = bucket_sizes(max_num_seqs)
            self.inputs = DecodeInputs(max_num_seqs, device)
            self._no_prefill = torch.zeros(1, dtype=torch.int32, device=device)
            if not enforce_eager:
                self.graphs = DecodeGraphs(self._decode_forward)
                with torch.inference_mode():
                    self.graphs.capture(self.buckets)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch
                ) -> Tuple[List[Sequence], torch.Tensor, Optional[PromptLogits]]:
        """Computes the scheduled tokens (writing their K/V into the cache).
        Returns the sequences whose every token is now computed and their
        next-token logits (the model's dtype), one row each; and the logits of
        the prompt positions that give prompt logprobs (None when no request
        of the step asks)."""
        if self.workers is None:
            return self._execute(batch)
        with self.workers.step():  # a failure shuts the workers down
            return self._execute(batch)

    def _execute(self, batch: ScheduledBatch
                 ) -> Tuple[List[Sequence], torch.Tensor, Optional[PromptLogits]]:
        if self.buckets and len(batch) <= self.buckets[-1] and all(
                n == 1 and seq.num_uncomputed_tokens == 1 for seq, n in batch):
            # A decode token is never a prompt position with a prompt logprob.
            return (*self._decode(batch), None)
        self.kv_cache.sync_block_table()
        return self._eager(batch)

    # -- decode steps on a GPU: static inputs, a graph per bucket -------------------------
    def _decode_forward(self, bucket: int) -> torch.Tensor:
        field = lambda name: self.inputs.field(name, bucket)  # noqa: E731
        metadata = AttentionMetadata(
            slot_mapping=field("slot_mapping"),
            block_tables=self.kv_cache.device_block_table.index_select(0, field("rows")),
            context_lens=field("context_lens").to(torch.int32),
            query_start_loc=self._no_prefill, num_prefills=0, num_prefill_tokens=0,
            num_decode_tokens=bucket)
        hidden = self.model(field("input_ids"), field("positions"), metadata)
        return self.model.compute_logits(hidden) if self.graphs_end_at_logits else hidden

    def _decode(self, batch: ScheduledBatch) -> Tuple[List[Sequence], torch.Tensor]:
        seqs = [seq for seq, _ in batch]
        # Slots the scheduler got in one call, then those of sequences admitted after.
        given = [] if batch.decode_slots is None else [batch.decode_slots]
        k = 0 if batch.decode_slots is None else len(batch.decode_slots)
        slots = torch.cat(given + [self.kv_cache.slot_mapping(s, s.num_tokens - 1, 1)
                                   for s in seqs[k:]])
        return seqs, self.decode(seqs, slots, [s.num_tokens - 1 for s in seqs],
                                 [s.token_ids[-1] for s in seqs])

    @torch.inference_mode()
    def decode(self, seqs: List[Sequence], slots: torch.Tensor, positions: List[int],
               token_ids: Optional[List[int]], token_source: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
        """Logits of one decode token per sequence of ``seqs`` at ``positions``,
        its K/V going to ``slots``; the token ids come from the host
        (``token_ids``) or from a device tensor (``token_source``, one per
        sequence: the tokens a step before sampled)."""
        n = len(seqs)
        bucket = self.buckets[bisect.bisect_left(self.buckets, n)]
        self.kv_cache.sync_block_table()
        host = self.inputs.fill(n, bucket, token_ids or [0] * n, positions, slots,
                                [self.kv_cache.row_of(s) for s in seqs])
        if token_source is not None:
            self.inputs.field("input_ids", n).copy_(token_source)
        if self.workers is not None:
            assert token_source is None, "overlapped decoding is off under tensor parallelism"
            self.workers.send(("decode", self.sync.take(), bucket, host[:, :bucket].numpy()))
        return self.run_decode(bucket)[:n]

    def run_decode(self, bucket: int) -> Optional[torch.Tensor]:
        """The logits of the decode step in the static inputs (None on a worker)."""
        out = self.graphs.replay(bucket) if self.graphs else self._decode_forward(bucket)
        return out if self.graphs_end_at_logits else self.model.compute_logits(out)

    # -- any other step: eager, sized to the batch ---------------------------------------
    def _eager(self, batch: ScheduledBatch
               ) -> Tuple[List[Sequence], torch.Tensor, Optional[PromptLogits]]:
        scheduled = batch.entries
        # Slots the scheduler already has (its batched decodes) are not asked again.
        known = {} if batch.decode_slots is None else dict(
            zip((id(seq) for seq, _ in scheduled), batch.decode_slots.split(1)))
        # Prefills (several new tokens) first, then decodes, as the metadata wants.
        order = [x for x in scheduled if x[1] > 1] + [x for x in scheduled if x[1] == 1]
        num_prefills = len(scheduled) - sum(n == 1 for _, n in scheduled)
        input_ids: List[int] = []
        positions: List[int] = []
        slots, rows, context_lens, query_start_loc = [], [], [], [0]
        due: List[Sequence] = []
        last_rows: List[int] = []
        prompt_owners, prompt_rows = [], []
        for i, (seq, n) in enumerate(order):
            start = seq.num_computed_tokens
            wanted = prompt_positions(seq, start, n)
            if wanted:
                prompt_owners.append((seq.request, wanted))
                prompt_rows += [len(input_ids) + p - start for p in wanted]
            input_ids += seq.token_ids[start:start + n]
            positions += range(start, start + n)
            slot = known.get(id(seq))
            slots.append(slot if slot is not None else self.kv_cache.slot_mapping(seq, start, n))
            rows.append(self.kv_cache.row_of(seq))
            context_lens.append(start + n)
            if i < num_prefills:
                query_start_loc.append(query_start_loc[-1] + n)
            if start + n == seq.num_tokens:
                due.append(seq)
                last_rows.append(len(input_ids) - 1)

        # One lm_head over the sampled rows and then the prompt-logprob rows.
        inputs = EagerInputs(input_ids, positions, torch.cat(slots), rows,
                             -(-max(context_lens) // self.kv_cache.block_size), context_lens,
                             query_start_loc, num_prefills, last_rows + prompt_rows)
        if self.workers is not None:
            self.workers.send(("eager", self.sync.take(),
                               inputs._replace(slot_mapping=inputs.slot_mapping.numpy())))
        logits = self.run_eager(inputs)
        prompt = PromptLogits(prompt_owners, logits[len(last_rows):]) if prompt_owners else None
        return due, logits[:len(last_rows)], prompt

    def run_eager(self, inputs: EagerInputs) -> Optional[torch.Tensor]:
        """The logits of ``inputs.logit_rows`` (None on a worker)."""
        device, table = self.device, self.kv_cache.device_block_table
        metadata = AttentionMetadata(
            slot_mapping=to_device(inputs.slot_mapping, torch.int64, device),
            block_tables=table[to_device(inputs.rows, torch.int64, device), :inputs.width],
            context_lens=to_device(inputs.context_lens, torch.int32, device),
            query_start_loc=to_device(inputs.query_start_loc, torch.int32, device),
            num_prefills=inputs.num_prefills, num_prefill_tokens=inputs.query_start_loc[-1],
            num_decode_tokens=len(inputs.rows) - inputs.num_prefills)
        hidden = self.model(to_device(inputs.input_ids, torch.int64, device),
                            to_device(inputs.positions, torch.int64, device), metadata)
        return self.model.compute_logits(
            hidden[to_device(inputs.logit_rows, torch.int64, device)])

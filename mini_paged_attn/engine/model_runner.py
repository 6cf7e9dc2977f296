"""ModelRunner: turns a scheduled step into model inputs and returns the logits
of the sequences that are due for their next token."""
from __future__ import annotations

from typing import List, Tuple

import torch

from ..attention_metadata import AttentionMetadata
from ..model.llama import LlamaForCausalLM
from .kv_cache import KVCache
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, device: torch.device):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        kv_cache.bind(model.attention_layers())

    def _tensor(self, data, dtype) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def execute(self, scheduled: List[Tuple[Sequence, int]]
                ) -> Tuple[List[Sequence], torch.Tensor]:
        """Computes the scheduled tokens (writing their K/V into the cache).
        Returns the sequences whose every token is now computed and their
        float32 next-token logits, one row each."""
        # Prefills (several new tokens) first, then decodes, as the metadata wants.
        order = [x for x in scheduled if x[1] > 1] + [x for x in scheduled if x[1] == 1]
        num_prefills = len(scheduled) - sum(n == 1 for _, n in scheduled)
        input_ids: List[int] = []
        positions: List[int] = []
        slots, rows, context_lens, query_start_loc = [], [], [], [0]
        due: List[Sequence] = []
        last_rows: List[int] = []
        for i, (seq, n) in enumerate(order):
            start = seq.num_computed_tokens
            input_ids += seq.token_ids[start:start + n]
            positions += range(start, start + n)
            slots.append(self.kv_cache.slot_mapping(seq, start, n))
            rows.append(self.kv_cache.row_of(seq))
            context_lens.append(start + n)
            if i < num_prefills:
                query_start_loc.append(query_start_loc[-1] + n)
            if start + n == seq.num_tokens:
                due.append(seq)
                last_rows.append(len(input_ids) - 1)

        width = -(-max(context_lens) // self.kv_cache.block_size)
        table = self.kv_cache.block_table
        block_tables = table[torch.tensor(rows, device=table.device), :width].contiguous()
        metadata = AttentionMetadata(
            slot_mapping=torch.cat(slots).to(self.device, non_blocking=True),
            block_tables=block_tables.to(self.device, non_blocking=True),
            context_lens=self._tensor(context_lens, torch.int32),
            query_start_loc=self._tensor(query_start_loc, torch.int32),
            num_prefills=num_prefills, num_prefill_tokens=query_start_loc[-1],
            num_decode_tokens=len(order) - num_prefills)
        hidden = self.model(self._tensor(input_ids, torch.int64),
                            self._tensor(positions, torch.int64), metadata)
        logits = self.model.compute_logits(hidden[self._tensor(last_rows, torch.int64)])
        return due, logits.float()

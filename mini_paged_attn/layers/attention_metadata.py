"""AttentionMetadata: where a batch's tokens go in the paged KV cache and what
each of them attends to. Built once per step and shared by every layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Union

import torch


@dataclass
class AttentionMetadata:
    """A batch of ``num_prefill_tokens + num_decode_tokens`` query tokens.

    Sequences are ordered prefills first: the first ``num_prefills`` rows of
    ``block_tables`` and ``context_lens`` belong to sequences with several new
    tokens (whose rows in the batch are given by ``query_start_loc``), the other
    rows to decode sequences with one new token each, in batch order.

    Attributes:
        slot_mapping: int64 ``[num_tokens]`` cache slot of every new token.
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]``.
        context_lens: int32 ``[num_seqs]`` tokens of each sequence, new ones included.
        query_start_loc: int32 ``[num_prefills + 1]`` offsets of the prefill rows.
        num_prefills: prefill sequences.
        num_prefill_tokens: tokens of the prefill sequences (they come first).
        num_decode_tokens: decode sequences, one token each.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    num_prefills: int
    num_prefill_tokens: int
    num_decode_tokens: int

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @classmethod
    def build(cls, query_lens: Sequence[int], context_lens: Sequence[int],
              block_tables: Sequence[Sequence[int]], slot_mapping: Sequence[int],
              device: Union[str, torch.device] = "cpu") -> "AttentionMetadata":
        """From per-sequence lists, prefills (query_len > 1) before decodes
        (query_len == 1); ``slot_mapping`` lists the tokens in that order."""
        num_prefills = sum(1 for n in query_lens if n > 1)
        if any(n < 1 for n in query_lens) or any(n > 1 for n in query_lens[num_prefills:]):
            raise ValueError("query_lens must be >= 1, the sequences with more than one "
                             f"token first, got {list(query_lens)}")
        if len(context_lens) != len(query_lens) or len(block_tables) != len(query_lens):
            raise ValueError(f"query_lens, context_lens and block_tables must have one entry per "
                             f"sequence, got {len(query_lens)}, {len(context_lens)} and "
                             f"{len(block_tables)}")
        if len(slot_mapping) != sum(query_lens):
            raise ValueError(f"slot_mapping has {len(slot_mapping)} entries but query_lens add "
                             f"up to {sum(query_lens)} tokens")
        width = max((len(t) for t in block_tables), default=0)
        padded: List[List[int]] = [list(t) + [0] * (width - len(t)) for t in block_tables]
        loc = [0]
        for n in query_lens[:num_prefills]:
            loc.append(loc[-1] + n)

        def tensor(data, dtype):
            return torch.tensor(data, dtype=dtype, device=device)

        return cls(slot_mapping=tensor(list(slot_mapping), torch.int64),
                   block_tables=tensor(padded, torch.int32).view(len(query_lens), width),
                   context_lens=tensor(list(context_lens), torch.int32),
                   query_start_loc=tensor(loc, torch.int32), num_prefills=num_prefills,
                   num_prefill_tokens=loc[-1],
                   num_decode_tokens=len(query_lens) - num_prefills)

"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous
slice of the vocabulary's rows (the last one padded when the vocabulary does
not divide), so a tied LM head shares the embedding's parameter as at tp=1."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel.group import TPGroup
from .weights import check_shape, sharded_parameter


class VocabParallelEmbedding(nn.Module):
    """Rank r holds rows ``r * per_rank ..`` of the table; a token outside them
    looks up zeros, and the all-reduce of the ranks' rows is the embedding."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup = TPGroup()):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp.size)
        self.start = tp.rank * self.per_rank
        self.weight = sharded_parameter((self.per_rank, hidden_size), (vocab_size, hidden_size),
                                        self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard: Optional[int] = None) -> int:
        check_shape(loaded, param.full_shape)
        rows = loaded[self.start:self.start + self.per_rank]
        param.data[:len(rows)].copy_(rows)
        param.data[len(rows):].zero_()  # padding past the vocabulary
        return param.numel()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(x.masked_fill_(outside.unsqueeze(-1), 0))


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states to logits: each rank computes its vocabulary slice and the
    slices are gathered on the driver (rank 0), the only rank that samples;
    the other ranks get None."""

    def forward(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        logits = F.linear(hidden, self.weight)
        if self.tp.size == 1:
            return logits
        logits = self.tp.gather_last_dim(logits)
        return None if logits is None else logits[..., :self.vocab_size]

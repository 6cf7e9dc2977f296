"""Megatron-style linear layers for tensor parallelism (``TPGroup``): a
column-parallel layer splits its output features across the ranks, a
row-parallel one its input features, so an MLP or attention block (column,
then row) needs one all-reduce, after the row-parallel layer. At tp=1 both
are plain ``F.linear`` calls. Parameters are named ``weight`` and ``bias``, as
in ``nn.Linear``; their ``weight_loader`` cuts this rank's part out of a
checkpoint tensor."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel.group import TPGroup, kv_heads_per_rank
from .weights import check_shape, sharded_parameter


def _divide(what: str, n: int, size: int) -> int:
    if n % size:
        raise ValueError(f"{what} ({n}) is not divisible by tensor_parallel_size ({size})")
    return n // size


class ColumnParallelLinear(nn.Module):
    """``x W^T + b``, output features split across the ranks. ``output_sizes``
    are the full row counts of the projections stacked in the weight (the
    checkpoint's tensors ``shard`` 0, 1, ...: q, k, v or gate, up); each rank
    holds its part of every one, stacked in the same order, so
    ``self.output_sizes`` are this rank's sizes (its output splits into them)."""

    def __init__(self, in_features: int, output_sizes: List[int], bias: bool,
                 tp: TPGroup = TPGroup()):
        super().__init__()
        self.tp = tp
        self.full_sizes = list(output_sizes)
        self.output_sizes = self._local_sizes()
        rows, full_rows = sum(self.output_sizes), sum(self.full_sizes)
        self.weight = sharded_parameter((rows, in_features), (full_rows, in_features),
                                        self.weight_loader)
        self.bias = sharded_parameter((rows,), (full_rows,), self.weight_loader) if bias else None

    def _local_sizes(self) -> List[int]:
        return [_divide("output features", n, self.tp.size) for n in self.full_sizes]

    def _start(self, shard: int) -> int:
        """First row of this rank's part within projection ``shard``."""
        return self.tp.rank * self.output_sizes[shard]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard: Optional[int] = None) -> int:
        if shard is None:  # all projections stacked (random initialisation)
            check_shape(loaded, param.full_shape)
            return sum(self.weight_loader(param, part, i)
                       for i, part in enumerate(loaded.split(self.full_sizes)))
        check_shape(loaded, (self.full_sizes[shard], *param.shape[1:]))
        offset, n = sum(self.output_sizes[:shard]), self.output_sizes[shard]
        dst = param.data[offset:offset + n]
        dst.copy_(loaded[self._start(shard):self._start(shard) + n])
        return dst.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v in one column-parallel matmul, split by heads: each rank
    computes its share of the query heads and the KV heads they attend with.
    With fewer KV heads than ranks each KV head is replicated on the ranks
    whose query heads use it."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool, tp: TPGroup = TPGroup()):
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.num_heads = num_heads
        kv = num_kv_heads * head_dim
        super().__init__(hidden_size, [num_heads * head_dim, kv, kv], bias, tp)

    def _local_sizes(self) -> List[int]:
        q = _divide("num_attention_heads", self.num_heads, self.tp.size) * self.head_dim
        kv = kv_heads_per_rank(self.num_kv_heads, self.tp.size) * self.head_dim
        return [q, kv, kv]

    def _start(self, shard: int) -> int:
        if shard == 0:
            return super()._start(0)
        # Query head h attends with KV head h // (num_heads / num_kv_heads);
        # this rank's query heads all use the KV heads from this one on.
        return self.tp.rank * self.num_kv_heads // self.tp.size * self.head_dim


class RowParallelLinear(nn.Module):
    """``x W^T + b``, input features split across the ranks: each rank's ``x``
    is its slice (a column-parallel layer's output), the partial products are
    all-reduced and the (replicated) bias is added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 tp: TPGroup = TPGroup()):
        super().__init__()
        self.tp = tp
        self.in_per_rank = _divide("input features", in_features, tp.size)
        self.weight = sharded_parameter((out_features, self.in_per_rank),
                                        (out_features, in_features), self.weight_loader)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard: Optional[int] = None) -> int:
        check_shape(loaded, param.full_shape)
        start = self.tp.rank * self.in_per_rank
        param.data.copy_(loaded[:, start:start + self.in_per_rank])
        return param.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.linear(x, self.weight, self.bias)
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias

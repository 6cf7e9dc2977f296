"""DecodeGraphs: the decode step's forward pass (embedding, layers, final
norm, logits) captured as one CUDA graph per batch-size bucket.

Every graph reads the same static device buffer, so a step is one pinned
host-to-device copy and one replay. A batch runs in the smallest bucket that
holds it; the rows beyond it are padding (context 0, slot -1), which the
kernels skip. Graphs are captured largest first into one shared memory pool,
so the smaller ones reuse the largest one's memory.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch


def bucket_sizes(max_num_seqs: int) -> List[int]:
    """1, 2, 4, 8, then steps of 16, up to and including ``max_num_seqs``."""
    sizes = [n for n in (1, 2, 4, 8) if n < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16)) + [max_num_seqs]
    return sizes


class DecodeInputs:
    """The decode step's inputs, one int64 row each, padded to a bucket:
    ``input_ids``, ``positions``, ``slot_mapping``, ``rows`` (of the device
    block table) and ``context_lens``. Filled on the host in pinned memory and
    sent with one non-blocking copy.

    Two host buffers take turns: with overlapped steps the copy of step N may
    still be queued when step N + 1 is filled, but the host has waited for
    step N - 1's results, so the buffer of step N - 1 is free again."""

    FIELDS = ("input_ids", "positions", "slot_mapping", "rows", "context_lens")
    # Padding: token 0 at position 0, its K/V not stored, nothing attended to.
    PADDING = (0, 0, -1, 0, 0)

    def __init__(self, max_num_seqs: int, device: torch.device):
        shape = (len(self.FIELDS), max_num_seqs)
        padding = torch.tensor(self.PADDING, dtype=torch.int64)[:, None].expand(shape)
        self.hosts = [padding.clone().pin_memory() if device.type == "cuda" else padding.clone()
                      for _ in range(2)]
        self.device = padding.contiguous().to(device)
        self._turn = 0

    def fill(self, num_rows: int, bucket: int, input_ids: List[int], positions: List[int],
             slot_mapping: torch.Tensor, rows: List[int]) -> torch.Tensor:
        """Fills and sends the next host buffer; returns it."""
        host = self.hosts[self._turn]
        self._turn ^= 1
        h = host.numpy()
        h[0, :num_rows] = input_ids
        h[1, :num_rows] = positions
        host[2, :num_rows] = slot_mapping
        h[3, :num_rows] = rows
        h[4, :num_rows] = h[1, :num_rows] + 1
        for i, value in enumerate(self.PADDING):
            h[i, num_rows:bucket] = value
        # The whole buffer: one contiguous copy (a strided one would be staged
        # through pageable memory, which synchronises).
        self.device.copy_(host, non_blocking=True)
        return host

    def load(self, filled: torch.Tensor) -> None:
        """A tensor-parallel worker's fill: the first columns of the driver's
        filled buffer (those of its bucket); later columns are never read."""
        host = self.hosts[self._turn]
        self._turn ^= 1
        host[:, :filled.size(1)] = filled
        self.device.copy_(host, non_blocking=True)

    def field(self, name: str, bucket: int) -> torch.Tensor:
        return self.device[self.FIELDS.index(name), :bucket]


class DecodeGraphs:
    """``forward(bucket)`` computes the logits of ``bucket`` rows from the
    static inputs; ``capture`` records it for every bucket, ``replay`` runs one
    and returns its (static) logits."""

    def __init__(self, forward: Callable[[int], torch.Tensor]):
        self.forward = forward
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, torch.Tensor] = {}

    def capture(self, buckets: List[int]) -> None:
        pool = None
        for bucket in sorted(buckets, reverse=True):
            self.forward(bucket)  # warm-up: lazy initialisation stays out of the graph
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bucket] = self.forward(bucket)
            pool = graph.pool() if pool is None else pool
            self.graphs[bucket] = graph
        torch.cuda.synchronize()

    def replay(self, bucket: int) -> torch.Tensor:
        self.graphs[bucket].replay()
        return self.outputs[bucket]

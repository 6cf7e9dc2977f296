"""Serving simulation: the main job of ``make demo``.

Requests with varied prompt and output lengths share one paged KV cache under
a fixed memory budget. Each step admits waiting requests while blocks allow,
grows every running sequence by one token (``reshape_and_cache``), attends
over the whole batch (``paged_attention``) and frees finished requests. When a
sequence cannot grow, the newest running request is preempted (its blocks are
freed and it restarts later). Outputs are spot-checked against SDPA on a
contiguous copy. K/V/Q are random: this exercises memory management and the
kernels, not a model.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import PagedKVCacheConfig
from .config import kv_bytes_per_token
from .manager import PagedAttentionManager
from .ops import paged_attention, reshape_and_cache


@dataclass
class Request:
    rid: int
    prompt_len: int
    output_len: int
    generated: int = 0

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.output_len


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-requests", type=int, default=300)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 512), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(8, 256), metavar=("MIN", "MAX"))
    p.add_argument("--kv-memory-mb", type=float, default=24.0)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-heads", type=int, default=16)
    p.add_argument("--num-kv-heads", type=int, default=4)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=128, help="rows of the block table")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--check-every", type=int, default=25, help="steps between SDPA checks")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def progress(done: int, total: int, step: int, running: int, waiting: int, used: int,
             blocks: int, tok_s: float) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests "
                     f"step {step} running {running:3d} waiting {waiting:3d} "
                     f"blocks {used}/{blocks} {tok_s:,.0f} tok/s ")
    sys.stderr.flush()


def check_against_sdpa(manager: PagedAttentionManager, seq_id: int, query: torch.Tensor,
                       out: torch.Tensor, scale: float) -> float:
    """Max abs error of one sequence's output against SDPA on a contiguous copy."""
    key, value = manager.gather_kv(seq_id)
    ref = F.scaled_dot_product_attention(
        query.float().unsqueeze(1), key.float().transpose(0, 1), value.float().transpose(0, 1),
        scale=scale, enable_gqa=True).squeeze(1)
    return float((out.float() - ref).abs().max())


def run(args) -> dict:
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    requests = deque(Request(i, rng.randint(*args.prompt_len), rng.randint(*args.output_len))
                     for i in range(args.num_requests))
    max_len = args.prompt_len[1] + args.output_len[1]
    config = PagedKVCacheConfig(int(args.kv_memory_mb * 2**20), args.block_size)
    manager = PagedAttentionManager.from_config(
        config, num_sequences=args.max_batch, num_heads=args.num_heads,
        head_size=args.head_size, num_kv_heads=args.num_kv_heads, device=args.device,
        dtype=dtype, max_blocks_per_seq=-(-max_len // args.block_size))
    kvh, hs, scale = args.num_kv_heads, args.head_size, args.head_size ** -0.5
    num_blocks = manager.block_manager.num_blocks
    if num_blocks < manager.max_blocks_per_seq:
        raise SystemExit(f"--kv-memory-mb {args.kv_memory_mb} holds {num_blocks} blocks, fewer "
                         f"than one request of {max_len} tokens needs: raise it")
    running: list[Request] = []
    stats = dict(steps=0, decode_tokens=0, preemptions=0, peak_running=0, max_err=0.0,
                 checks=0, used_token_slots=0, reserved_token_slots=0)
    done = 0
    start = last_draw = time.perf_counter()
    while requests or running:
        # Admit in arrival order while a row and the prompt's blocks are free.
        while requests and len(running) < args.max_batch:
            req = requests[0]
            try:
                manager.add_sequence(req.rid, req.prompt_len + req.generated)
            except MemoryError:
                break
            requests.popleft()
            n = req.prompt_len + req.generated
            manager.write_kv(req.rid, torch.randn(n, kvh, hs), torch.randn(n, kvh, hs))
            running.append(req)

        # Grow every running sequence by one token. On OOM the newest running
        # request is preempted (recomputed later); it has no slot yet this step,
        # since sequences grow in admission order.
        slots, i = [], 0
        while i < len(running):
            try:
                slots.append(manager.append_slots(running[i].rid))
                i += 1
            except MemoryError:
                victim = running.pop()
                manager.free_sequence(victim.rid)
                requests.appendleft(victim)
                stats["preemptions"] += 1
        slot_mapping = torch.cat(slots)
        new_k = torch.randn(len(running), kvh, hs, dtype=dtype, device=args.device)
        new_v = torch.randn(len(running), kvh, hs, dtype=dtype, device=args.device)
        reshape_and_cache(new_k, new_v, manager.key_cache, manager.value_cache, slot_mapping)

        rows = torch.tensor([manager.row_of(r.rid) for r in running], device=args.device)
        query = torch.randn(len(running), args.num_heads, hs, dtype=dtype, device=args.device)
        out = paged_attention(query, manager.key_cache, manager.value_cache,
                              manager.block_table[rows], manager.context_lens[rows],
                              scale=scale, check=False)
        stats["steps"] += 1
        stats["decode_tokens"] += len(running)
        stats["peak_running"] = max(stats["peak_running"], len(running))
        used = sum(manager.seq_len(r.rid) for r in running)
        stats["used_token_slots"] += used
        stats["reserved_token_slots"] += (num_blocks - manager.num_free_blocks) * args.block_size
        if stats["steps"] % args.check_every == 0:
            j = rng.randrange(len(running))
            err = check_against_sdpa(manager, running[j].rid, query[j], out[j], scale)
            stats["max_err"] = max(stats["max_err"], err)
            stats["checks"] += 1

        finished = []
        for req in running:
            req.generated += 1
            if req.generated == req.output_len:
                finished.append(req)
        for req in finished:
            manager.free_sequence(req.rid)
            running.remove(req)
        done += len(finished)
        now = time.perf_counter()
        if now - last_draw > 0.1 or done == args.num_requests:
            last_draw = now
            progress(done, args.num_requests, stats["steps"], len(running), len(requests),
                     num_blocks - manager.num_free_blocks, num_blocks,
                     stats["decode_tokens"] / (now - start))
    sys.stderr.write("\n")
    stats["seconds"] = time.perf_counter() - start
    stats.update(requests=args.num_requests, num_blocks=num_blocks, max_len=max_len,
                 budget=config.max_kv_memory_bytes(),
                 token_bytes=kv_bytes_per_token(kvh, hs, dtype))
    return stats


def summary(s: dict) -> str:
    static_fit = s["budget"] // (s["max_len"] * s["token_bytes"])
    usage = s["used_token_slots"] / max(1, s["reserved_token_slots"])
    rows = [
        ("requests served", f"{s['requests']}"),
        ("decode steps", f"{s['steps']}"),
        ("decode tokens / s", f"{s['decode_tokens'] / s['seconds']:,.0f}"),
        ("wall time", f"{s['seconds']:.1f} s"),
        ("peak concurrent sequences (paged)", f"{s['peak_running']}"),
        ("KV budget", f"{s['budget'] / 2**20:.1f} MiB = {s['num_blocks']} blocks"),
        ("KV slots used / reserved (mean)", f"{100 * usage:.1f}% "
                                            f"(waste only in partial last blocks)"),
        ("same budget, static max_len slots", f"{static_fit} concurrent requests "
                                              f"(max_len {s['max_len']})"),
        ("paged fits", f"{s['peak_running'] / max(1, static_fit):.1f}x as many at peak"),
        ("preemptions", f"{s['preemptions']}"),
        ("SDPA spot checks (max abs err)", f"{s['checks']} ({s['max_err']:.2e})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"mini_paged_attn demo: {args.num_requests} requests, {args.kv_memory_mb} MiB KV, "
          f"{args.num_heads}/{args.num_kv_heads} heads x {args.head_size}, block {args.block_size}, "
          f"{args.dtype} on {args.device}")
    stats = run(args)
    print(summary(stats))
    tol = {"float32": 1e-4}.get(args.dtype, 5e-2)
    if stats["max_err"] > tol:
        raise SystemExit(f"spot check failed: max abs error {stats['max_err']:.3e} > {tol}")


if __name__ == "__main__":
    main()

"""Serving demo, the main job of ``make demo``: the engine serves a workload of
a few hundred requests (varied prompt and output lengths, some sharing a
system prompt, some asking for several samples) with a live progress bar,
then serves the same workload again with a static contiguous cache of the
same KV memory budget and compares the two.

The model is the default tiny Llama with random weights unless ``--model``
names a local checkpoint directory; it runs on the GPU when there is one.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Dict, List, Tuple

import torch

from . import LLM, PagedKVCacheConfig, SamplingParams, StaticKVCacheConfig
from .cache.sizing import kv_bytes_per_token
from .models.config import ModelConfig

Workload = List[Tuple[List[int], SamplingParams]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: tiny random)")
    p.add_argument("--num-requests", type=int, default=300)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(8, 160), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(8, 96), metavar=("MIN", "MAX"))
    p.add_argument("--shared-prefix-len", type=int, default=64)
    p.add_argument("--shared-fraction", type=float, default=0.4,
                   help="requests that start with one of 4 shared system prompts")
    p.add_argument("--multi-sample-fraction", type=float, default=0.1,
                   help="requests asking for n = 2..4 samples")
    p.add_argument("--kv-memory-mb", type=float, default=12.0)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: float32 on the CPU, bfloat16 on the GPU")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads: the tiny model's matrices gain nothing from more, and "
                        "spinning OpenMP threads crawl when the cores are shared")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_workload(args, vocab_size: int) -> Workload:
    rng = random.Random(args.seed)
    systems = [[rng.randrange(vocab_size) for _ in range(args.shared_prefix_len)]
               for _ in range(4)]
    workload = []
    for _ in range(args.num_requests):
        n = rng.randint(*args.prompt_len)
        prompt = [rng.randrange(vocab_size) for _ in range(n)]
        if rng.random() < args.shared_fraction:
            prompt = rng.choice(systems) + prompt
        params = SamplingParams(n=rng.randint(2, 4) if rng.random() < args.multi_sample_fraction
                                else 1, temperature=0.8, top_p=0.95,
                                max_tokens=rng.randint(*args.output_len), ignore_eos=True,
                                seed=rng.randrange(2**31))
        workload.append((prompt, params))
    return workload


def progress(label: str, done: int, total: int, tok_s: float, running: int, waiting: int,
             used: int, blocks: int) -> None:
    width = 24
    filled = width * done // total
    sys.stderr.write(f"\r{label:<7}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} req "
                     f"{tok_s:7,.0f} tok/s running {running:3d} waiting {waiting:3d} "
                     f"KV blocks {used}/{blocks} ")
    sys.stderr.flush()


def serve(label: str, llm: LLM, workload: Workload) -> Dict[str, float]:
    engine = llm.engine
    for prompt, params in workload:
        engine.add_request(prompt, params)
    done, peak_requests = 0, 0
    start = last_draw = time.perf_counter()
    while engine.has_unfinished:
        done += len(engine.step())
        running = engine.scheduler.running
        peak_requests = max(peak_requests, len({s.request.request_id for s in running}))
        now = time.perf_counter()
        if now - last_draw > 0.1 or not engine.has_unfinished:
            last_draw = now
            progress(label, done, len(workload), engine.num_generated_tokens / (now - start),
                     len(running), len(engine.scheduler.waiting),
                     engine.kv_cache.num_used_blocks, engine.kv_cache.num_blocks)
    sys.stderr.write("\n")
    seconds = time.perf_counter() - start
    cache, sched, kv = engine.cache_stats, engine.scheduler.stats, engine.kv_cache
    return {
        "seconds": seconds,
        "requests/s": len(workload) / seconds,
        "output tokens/s": engine.num_generated_tokens / seconds,
        "peak concurrent requests": peak_requests,
        "KV wasted": cache.unused_slots / max(1, cache.used_blocks * kv.block_size),
        "prefix hit rate": sched.cached_tokens / max(1, sched.prompt_tokens),
        "blocks saved (peak)": cache.peak_saved_blocks,
        "preemptions": sched.num_preemptions,
        "KV budget": kv.reserved_bytes,
    }


def summary(paged: Dict[str, float], static: Dict[str, float]) -> str:
    rows = [
        ("wall time", lambda s: f"{s['seconds']:.1f} s"),
        ("requests / s", lambda s: f"{s['requests/s']:.1f}"),
        ("output tokens / s", lambda s: f"{s['output tokens/s']:,.0f}"),
        ("peak concurrent requests", lambda s: f"{s['peak concurrent requests']}"),
        ("KV reserved but unused (mean)", lambda s: f"{100 * s['KV wasted']:.1f}%"),
        ("prefix-cache hit rate", lambda s: f"{100 * s['prefix hit rate']:.1f}%"),
        ("blocks saved by sharing (peak)", lambda s: f"{s['blocks saved (peak)']}"),
        ("preemptions", lambda s: f"{s['preemptions']}"),
        ("KV memory", lambda s: f"{s['KV budget'] / 2**20:.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  {'paged':>12}  {'static':>12}"]
    lines += [f"{name:<{width}}  {fmt(paged):>12}  {fmt(static):>12}" for name, fmt in rows]
    return "\n".join(lines)


def run(args) -> Tuple[Dict[str, float], Dict[str, float]]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float32 if device.type == "cpu" else torch.bfloat16)
    model = args.model or ModelConfig.tiny()
    config = ModelConfig.from_pretrained(model) if isinstance(model, str) else model
    workload = make_workload(args, config.vocab_size)
    budget = int(args.kv_memory_mb * 2**20)
    max_len = args.shared_prefix_len + args.prompt_len[1] + args.output_len[1]
    token_bytes = kv_bytes_per_token(config.num_key_value_heads, config.head_dim, dtype,
                                     config.num_hidden_layers)
    # The static cache reserves max_len tokens per slot: as many slots as the budget holds.
    slots = budget // (max_len * token_bytes)
    if slots == 0:
        raise SystemExit(f"--kv-memory-mb {args.kv_memory_mb} holds no static slot of "
                         f"{max_len} tokens: raise it")
    common = dict(device=device, dtype=dtype, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=max_len,
                  seed=args.seed)
    paged = serve("paged", LLM(model, PagedKVCacheConfig(budget, args.block_size), **common),
                  workload)
    static = serve("static", LLM(model, StaticKVCacheConfig(slots, max_len), **common), workload)
    return paged, static


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"mini_paged_attn demo: {args.num_requests} requests on {args.device}, "
          f"{args.kv_memory_mb} MiB of KV cache, model {args.model or 'tiny (random weights)'}")
    paged, static = run(args)
    print(summary(paged, static))


if __name__ == "__main__":
    main()

"""Serving benchmark, in the spirit of vLLM's: N requests sent to a live
OpenAI-compatible server at a given rate (Poisson arrivals, or all at once),
each streamed; reports request throughput, output tokens/s, and TTFT, TPOT and
ITL at p50 and p99.

Without --url it starts the server (``python -m mini_paged_attn serve``, a process of
its own) on a random-weight checkpoint with a trained byte-level tokenizer (the tests'
``text_checkpoint``), on --device:

    python benchmarks/bench_serving.py --device cpu --num-requests 64 --request-rate inf
    python benchmarks/bench_serving.py --url http://127.0.0.1:8000 --model NAME
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import httpx


def _percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def _one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
               ) -> Dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    times: List[float] = []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                if json.loads(line[6:])["choices"][0]["text"]:
                    times.append(time.perf_counter())
    end = time.perf_counter()
    ttft = times[0] - start if times else float("nan")
    itl = [b - a for a, b in zip(times, times[1:])]
    tpot = (end - times[0]) / (max_tokens - 1) if times and max_tokens > 1 else float("nan")
    return {"latency": end - start, "ttft": ttft, "itl": itl, "tpot": tpot}


async def run(url: str, model: str, num_requests: int, rate: float, max_tokens: int,
              seed: int) -> Dict:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog paged attention keeps blocks".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 64)))
               for _ in range(num_requests)]
    limits = httpx.Limits(max_connections=num_requests, max_keepalive_connections=num_requests)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for p in prompts:
            tasks.append(asyncio.create_task(_one(client, url, model, p, max_tokens)))
            if rate != float("inf"):
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    ttft = [r["ttft"] * 1e3 for r in results]
    tpot = [r["tpot"] * 1e3 for r in results]
    itl = [x * 1e3 for r in results for x in r["itl"]]
    return {"requests": num_requests, "request_rate": rate, "max_tokens": max_tokens,
            "wall_s": wall, "requests_per_s": num_requests / wall,
            "output_tokens_per_s": num_requests * max_tokens / wall,
            "ttft_ms": {"p50": _percentile(ttft, 50), "p99": _percentile(ttft, 99),
                        "mean": statistics.fmean(ttft)},
            "tpot_ms": {"p50": _percentile(tpot, 50), "p99": _percentile(tpot, 99)},
            "itl_ms": {"p50": _percentile(itl, 50), "p99": _percentile(itl, 99)}}


def _start_server(args):
    """`python -m mini_paged_attn serve` in its own process (as vLLM's benchmark runs
    against a separate server: in one process the client's event loop would share the
    GIL with the server and the engine thread) on a random-weight checkpoint; returns
    its URL and the process."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from text_checkpoint import make_text_checkpoint

    # On CUDA: head size 64, which every CUDA attention kernel has (the tests'
    # tiny model has 16), in bf16.
    size = dict(hidden_size=512, num_attention_heads=8, num_hidden_layers=4) \
        if args.device == "cuda" else {}
    path = make_text_checkpoint(tempfile.mkdtemp(), max_position_embeddings=1024, **size)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mini_paged_attn", "serve", path, "--port", str(port),
           "--served-model-name", args.model, "--device", args.device,
           "--max-num-seqs", str(args.max_num_seqs)]
    if args.device == "cuda":
        cmd += ["--dtype", "bfloat16"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url, server
        except httpx.HTTPError:
            time.sleep(0.05)
    server.terminate()
    raise SystemExit("the server did not start")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--model", default="bench")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second, Poisson arrivals (inf: all at once)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    url, server = (args.url, None) if args.url else _start_server(args)
    try:
        result = asyncio.run(run(url, args.model, args.num_requests, args.request_rate,
                                 args.max_tokens, args.seed))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["command"] = " ".join(["python", "benchmarks/bench_serving.py"] + sys.argv[1:])
    print(f"# {result['date']}  {result['command']}")
    print(f"{result['requests']} requests at rate {args.request_rate}: {result['wall_s']:.2f} s, "
          f"{result['requests_per_s']:.2f} req/s, {result['output_tokens_per_s']:.1f} output "
          f"tok/s")
    for name in ("ttft_ms", "tpot_ms", "itl_ms"):
        print(f"  {name[:-3].upper():<5} p50 {result[name]['p50']:8.1f} ms   "
              f"p99 {result[name]['p99']:8.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

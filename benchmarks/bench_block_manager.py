"""Block-manager benchmark: the C++ BlockTables (through its Python API) against
the pure-Python manager of py_block_tables.py and py_block_manager.py (same
semantics, same block ids), measured in the same run.

1. A scheduling trace, seeded: thousands of requests arrive (prompts sharing
   system prompts, so the prefix cache hits), are admitted while blocks allow,
   some fork into parallel samples, all grow one token per decode step, the
   newest are preempted when blocks run short, finished ones are freed. The
   trace is recorded once as a list of calls, then replayed on each manager;
   both must return the same results. Reports calls/s and the speed-up.
2. The batch decode step at 256 running sequences (a quarter of them forked
   groups, so copy-on-write happens): time per step and per sequence.

    python benchmarks/bench_block_manager.py
    python benchmarks/bench_block_manager.py --quick --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter, deque

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_block_manager import PyBlockManager  # noqa: E402
from py_block_tables import PyBlockTables  # noqa: E402

from mini_paged_attn.block_manager import BlockManager  # noqa: E402
from mini_paged_attn.cache.block_tables import BlockTables  # noqa: E402

VOCAB = 32000
MANAGERS = {
    "pure Python": lambda n, rows, width, bs: PyBlockTables(PyBlockManager(n), rows, width, bs),
    "C++": lambda n, rows, width, bs: BlockTables(BlockManager(n), rows, width, bs),
}


def build_trace(num_requests, rows, num_blocks, block_size, seed):
    """Simulates a scheduler on the pure-Python manager; returns its calls."""
    rng = random.Random(seed)
    sim = MANAGERS["pure Python"](num_blocks, rows, 256, block_size)
    system = [[rng.randrange(VOCAB) for _ in range(rng.choice([64, 128, 256, 512]))]
              for _ in range(8)]
    waiting = deque()
    for rid in range(num_requests):
        prompt = rng.choice(system) + [rng.randrange(VOCAB) for _ in range(rng.randint(8, 256))]
        n = rng.choice([1] * 8 + [2, 4])
        waiting.append((rid // 4, rid, prompt, rng.randint(16, 256), n))  # (arrival step, ...)
    calls, running, step = [], {}, 0   # running: seq_id -> [tokens, tokens left to generate]

    def call(name, *args):
        calls.append((name, args))
        return getattr(sim, name)(*args)

    while waiting or running:
        while waiting and waiting[0][0] <= step and len(running) + waiting[0][4] <= rows:
            _, rid, prompt, out_len, n = waiting[0]
            if sim.bm.num_free_blocks < len(prompt) // block_size + 1 + 2 * len(running):
                break
            waiting.popleft()
            call("add_sequence", rid, len(prompt), prompt)
            call("mark_written", rid, 0, len(prompt))   # the prefill wrote the prompt's K/V
            running[rid] = [list(prompt), out_len]
            for j in range(1, n):
                call("fork", rid, (rid, j))
                running[(rid, j)] = [list(prompt), out_len]
        while running and sim.bm.num_free_blocks < len(running):  # preempt the newest
            seq_id, (tokens, left) = running.popitem()
            call("free_sequence", seq_id)
            waiting.appendleft((step, ("re", seq_id, step), tokens, left, 1))
        if not running:
            step += 1
            continue
        ids = [rng.randrange(VOCAB) for _ in range(rows)]
        call("decode_step", None, ids)
        for seq_id, state in list(running.items()):
            state[0].append(ids[sim.seqs[seq_id].row])
            state[1] -= 1
            if state[1] == 0:
                call("free_sequence", seq_id)
                del running[seq_id]
        step += 1
    return calls


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def replay(make, calls, repeats):
    """Median time of replaying calls on fresh tables (after one untimed run:
    first calls pay one-time costs), and the results."""
    times, results = [], None
    for _ in range(repeats + 1):
        tables = make()
        bound = [(getattr(tables, name), args) for name, args in calls]
        elapsed, results = _timed(lambda: [fn(*args) for fn, args in bound])
        times.append(elapsed)
    return statistics.median(times[1:]), results


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b))
    return a == b


def bench_trace(args):
    bs, rows, num_blocks = 16, 256, args.trace_blocks
    calls = build_trace(args.requests, rows, num_blocks, bs, args.seed)
    kinds = Counter(name for name, _ in calls)
    results = {}
    for label, factory in MANAGERS.items():
        results[label] = replay(lambda: factory(num_blocks, rows, 256, bs), calls, args.repeats)
    outputs = [r[1] for r in results.values()]
    assert all(same(a, b) for a, b in zip(*outputs)), "the managers disagree"
    return {"calls": len(calls), "call_kinds": dict(kinds), "num_blocks": num_blocks,
            "rows": rows, "block_size": bs, "requests": args.requests,
            "seconds": {k: v[0] for k, v in results.items()}}


def setup_running(tables, num_seqs, rng):
    """num_seqs running sequences; a quarter are groups of 4 forked siblings."""
    seq_id = 0
    while seq_id < num_seqs:
        n = rng.randint(100, 1000)
        tables.add_sequence(seq_id, n, [rng.randrange(VOCAB) for _ in range(n)])
        tables.mark_written(seq_id, 0, n)
        for j in range(1, 4 if seq_id >= num_seqs * 3 // 4 else 1):
            tables.fork(seq_id, seq_id + j)
        seq_id += 4 if seq_id >= num_seqs * 3 // 4 else 1


def bench_decode_step(args, num_seqs=256, bs=16):
    rng = random.Random(args.seed)
    ids = [[rng.randrange(VOCAB) for _ in range(num_seqs)] for _ in range(args.steps)]
    out = {}
    for label, factory in MANAGERS.items():
        for form in ("all rows", "seq_ids"):
            times = []
            for _ in range(args.repeats + 1):  # the first run warms up
                tables = factory(8192, num_seqs, 256, bs)
                setup_running(tables, num_seqs, random.Random(args.seed))
                seq_ids = None if form == "all rows" else list(range(num_seqs))
                step = tables.decode_step
                elapsed, _ = _timed(lambda: [step(seq_ids, i) for i in ids])
                times.append(elapsed / args.steps)
            out[f"{label} ({form})"] = statistics.median(times[1:])
    return {"num_seqs": num_seqs, "block_size": bs, "steps": args.steps, "seconds_per_step": out}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--trace-blocks", type=int, default=12000)
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small trace, for a smoke run")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.requests, args.trace_blocks, args.repeats = 400, 3000, 1
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "torch": torch.__version__,
            "command": " ".join(["python"] + sys.argv)}
    trace, step = bench_trace(args), bench_decode_step(args)
    py, cpp = trace["seconds"]["pure Python"], trace["seconds"]["C++"]
    print(f"bench_block_manager  {info['date']}  {info['machine']}  torch {info['torch']}")
    print(f"\nscheduling trace: {trace['requests']} requests, {trace['calls']} calls "
          f"{trace['call_kinds']}, {trace['num_blocks']} blocks of {trace['block_size']}")
    print(f"{'manager':<28}{'time (s)':>10}{'calls/s':>12}")
    for label, t in trace["seconds"].items():
        print(f"{label:<28}{t:>10.3f}{trace['calls'] / t:>12,.0f}")
    print(f"speed-up of C++: {py / cpp:.1f}x (target >= 5x)")
    print(f"\ndecode step, {step['num_seqs']} running sequences, block_size {step['block_size']}")
    print(f"{'manager (batch form)':<28}{'us/step':>10}{'us/seq':>10}")
    sec = step["seconds_per_step"]
    for label, t in sec.items():
        print(f"{label:<28}{t * 1e6:>10.1f}{t * 1e6 / step['num_seqs']:>10.3f}")
    ratios = {form: sec[f"pure Python ({form})"] / sec[f"C++ ({form})"]
              for form in ("all rows", "seq_ids")}
    print("speed-up of C++ per sequence: " +
          ", ".join(f"{r:.1f}x ({form})" for form, r in ratios.items()) + " (target >= 10x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "trace": trace, "decode_step": step,
                       "speedup": {"trace": py / cpp, "decode_step": ratios}}, f, indent=2)


if __name__ == "__main__":
    main()

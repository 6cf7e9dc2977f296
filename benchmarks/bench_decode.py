"""Decode-attention benchmark: paged_attention against the unpaged ideal and baselines.

For each shape it times, in one run:
  paged_attention  this library (check=False, preallocated output)
  sdpa             torch SDPA on a contiguous [B, kv_heads, ctx, D] cache (enable_gqa)
  gather+sdpa      index_select the blocks into a contiguous cache, then SDPA
  v1               paged_attention_v1, the seed's kernel (CUDA only, where it fits)
and prints time, effective KV bandwidth (2 * sum(context_lens) * kv_heads *
head_size * itemsize / time) and the speed-up over SDPA. Physical blocks are a
random permutation. On CUDA each time is the median of triton.testing.do_bench,
which flushes the L2 before every call (a cold cache); on CPU it is the median
of torch.utils.benchmark.

    python benchmarks/bench_decode.py                       # cuda if available, else cpu
    python benchmarks/bench_decode.py --device cpu --quick
    python benchmarks/bench_decode.py --json out.json --plot out.png
    python benchmarks/bench_decode.py --plot-from out.json --plot out.png
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Shape:
    batch: int
    context: int  # every sequence's length; with mixed=True the upper bound of a uniform draw
    num_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: str
    mixed: bool = False

    @property
    def label(self) -> str:
        ctx = f"1..{self.context}" if self.mixed else str(self.context)
        return (f"B={self.batch} ctx={ctx} h={self.num_heads}/{self.num_kv_heads} "
                f"d={self.head_size} bs={self.block_size} {self.dtype}")


def cuda_shapes(quick: bool) -> List[Shape]:
    main = [(1, 32768, 32, 8, 128), (8, 4096, 32, 8, 128), (64, 2048, 32, 8, 128),
            (128, 4096, 32, 8, 128), (32, 2048, 32, 32, 128), (256, 1024, 8, 8, 64)]
    shapes = [Shape(b, c, h, kv, d, 16, "bfloat16") for b, c, h, kv, d in main]
    if quick:
        return shapes[:2]
    shapes.append(Shape(64, 8192, 32, 8, 128, 16, "bfloat16", mixed=True))
    shapes += [Shape(64, 2048, 32, 8, 128, bs, "bfloat16") for bs in (1, 8, 32, 128)]
    # Many short sequences (a common serving batch): one block reads only 256 tokens.
    shapes.append(Shape(2048, 256, 32, 8, 128, 16, "bfloat16"))
    return shapes


def cpu_shapes(quick: bool) -> List[Shape]:
    batch, context = (2, 256) if quick else (16, 2048)
    return [Shape(batch, context, 32, 8, 128, 16, dt) for dt in ("float32", "bfloat16")]


class Case:
    """The tensors of one shape: a shuffled paged cache and the same data contiguous."""

    def __init__(self, shape: Shape, device: str, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        dtype = DTYPES[shape.dtype]
        b, bs = shape.batch, shape.block_size
        if shape.mixed:
            lens = torch.randint(1, shape.context + 1, (b,), generator=gen)
        else:
            lens = torch.full((b,), shape.context)
        self.context_lens = lens.to(torch.int32).to(device)
        self.total_tokens = int(lens.sum())
        self.max_context = int(lens.max())
        blocks_per_seq = [-(-int(n) // bs) for n in lens]
        self.max_blocks = max(blocks_per_seq)
        num_blocks = sum(blocks_per_seq)
        perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
        tables = torch.zeros(b, self.max_blocks, dtype=torch.int32)
        used = 0
        for s, nb in enumerate(blocks_per_seq):
            tables[s, :nb] = perm[used:used + nb]
            used += nb
        self.block_tables = tables.to(device)
        cache_shape = (num_blocks, bs, shape.num_kv_heads, shape.head_size)
        self.key_cache = torch.randn(cache_shape, device=device, dtype=torch.float32).to(dtype)
        self.value_cache = torch.randn(cache_shape, device=device, dtype=torch.float32).to(dtype)
        self.query = torch.randn(b, shape.num_heads, shape.head_size, device=device).to(dtype)
        self.out = torch.empty_like(self.query)
        self.shape = shape
        # The unpaged ideal holds exactly the same values, padded to the longest context.
        self.key_contig = self.gather(self.key_cache)
        self.value_contig = self.gather(self.value_cache)
        self.mask = None
        if shape.mixed:
            pos = torch.arange(self.max_context, device=device)
            self.mask = (pos[None, :] < self.context_lens[:, None].long()).view(b, 1, 1, -1)
        self.gqa = shape.num_heads != shape.num_kv_heads

    def gather(self, cache: torch.Tensor) -> torch.Tensor:
        """[B, kv_heads, max_context, D] gathered through the block tables."""
        s = self.shape
        flat = cache.index_select(0, self.block_tables.view(-1).long())
        flat = flat.view(s.batch, self.max_blocks * s.block_size, s.num_kv_heads, s.head_size)
        return flat[:, :self.max_context].transpose(1, 2)

    @property
    def kv_bytes(self) -> int:
        s = self.shape
        return 2 * self.total_tokens * s.num_kv_heads * s.head_size * self.key_cache.element_size()

    def sdpa(self, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = self.query.unsqueeze(2)
        return F.scaled_dot_product_attention(q, key, value, attn_mask=self.mask,
                                              enable_gqa=self.gqa)

    def impls(self, device: str) -> Dict[str, Callable[[], object]]:
        from mini_paged_attn import ops

        key_contig = self.key_contig.contiguous()
        value_contig = self.value_contig.contiguous()
        fns = {
            "paged_attention": lambda: ops.paged_attention(
                self.query, self.key_cache, self.value_cache, self.block_tables,
                self.context_lens, out=self.out, check=False),
            "sdpa": lambda: self.sdpa(key_contig, value_contig),
            "gather+sdpa": lambda: self.sdpa(self.gather(self.key_cache),
                                             self.gather(self.value_cache)),
        }
        if device == "cuda" and self.max_blocks * self.shape.block_size <= 32768:
            fns["v1"] = lambda: torch.ops.mini_paged_attn.paged_attention_v1(
                self.out, self.query, self.key_cache, self.value_cache, self.block_tables,
                self.context_lens)
        return fns


def time_us(fn: Callable[[], object], device: str, quick: bool) -> float:
    """Median microseconds per call; on the CPU with ``torch.get_num_threads()`` threads."""
    if device == "cuda":
        from triton.testing import do_bench

        rep = 20 if quick else 200
        return 1e3 * do_bench(fn, warmup=10 if quick else 50, rep=rep, return_mode="median")
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return 1e6 * timer.blocked_autorange(min_run_time=0.2 if quick else 1.0).median


def run(device: str, quick: bool, shapes: List[Shape]) -> List[dict]:
    results = []
    for shape in shapes:
        case = Case(shape, device)
        times = {}
        for name, fn in case.impls(device).items():
            try:
                fn()
                times[name] = time_us(fn, device, quick)
            except RuntimeError as e:  # e.g. an SDPA backend refusing a layout
                print(f"  {shape.label}: {name} failed: {str(e).splitlines()[0]}",
                      file=sys.stderr)
        for name, t in times.items():
            results.append({
                **asdict(shape), "shape": shape.label, "impl": name, "time_us": t,
                "kv_bytes": case.kv_bytes, "gbps": case.kv_bytes / t / 1e3,
                "speedup_vs_sdpa": times["sdpa"] / t if "sdpa" in times else float("nan"),
            })
        del case
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def profile_kernels(shapes: List[Shape], reps: int = 100) -> None:
    """Device time of each kernel that paged_attention and SDPA launch (CUDA).

    Each call follows the same 256 MB L2 flush do_bench makes, so these are the
    kernels' own times under the benchmark's cold cache; the gap to the do_bench
    time is what every timed call costs around its kernels (launch and events).
    """
    from torch.profiler import ProfilerActivity, profile

    def kernel_times(fn: Callable[[], object], n: int) -> Dict[str, List[float]]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
        times: Dict[str, List[float]] = {}
        for evt in prof.events():
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                times.setdefault(evt.name, []).append(evt.time_range.elapsed_us())
        return times

    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    flush_kernels = set(kernel_times(flush.zero_, 1))
    for shape in shapes:
        case = Case(shape, "cuda")
        impls = case.impls("cuda")
        for name in ("paged_attention", "sdpa"):
            fn = impls[name]
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            times = kernel_times(lambda: (flush.zero_(), fn()), reps)
            for kernel, ts in times.items():
                if kernel not in flush_kernels:
                    ts.sort()
                    print(f"  {shape.label:<46} {name:<16} {kernel[:56]:<56} "
                          f"{ts[len(ts) // 2]:8.1f} us")
        del case
        torch.cuda.empty_cache()


def print_table(results: List[dict]) -> None:
    print(f"{'shape':<46} {'impl':<16} {'time us':>9} {'KV GB/s':>8} {'vs sdpa':>8}")
    last = None
    for r in results:
        shape = r["shape"] if r["shape"] != last else ""
        last = r["shape"]
        print(f"{shape:<46} {r['impl']:<16} {r['time_us']:>9.1f} {r['gbps']:>8.0f} "
              f"{r['speedup_vs_sdpa']:>7.2f}x")


def plot(results: List[dict], meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in results))
    impls = list(dict.fromkeys(r["impl"] for r in results))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(shapes)), 5))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, shape in enumerate(shapes):
            for r in results:
                if r["shape"] == shape and r["impl"] == impl:
                    xs.append(j + (i - (len(impls) - 1) / 2) * width)
                    ys.append(r["gbps"])
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([s.replace(" ", "\n", 4) for s in shapes], fontsize=7)
    ax.set_ylabel("effective KV bandwidth (GB/s)")
    ax.set_title(f"decode attention, {meta.get('device_name', '')} ({meta.get('date', '')})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--plot", help="draw effective bandwidth per shape to this PNG")
    parser.add_argument("--plot-from", help="read results from this JSON instead of running")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every implementation (default: torch's default)")
    parser.add_argument("--cpu-isa", default=None,
                        help="instruction-set variant of the CPU kernels: baseline, x86-64-v3 or "
                        "x86-64-v4 (default: the best this CPU runs)")
    parser.add_argument("--profile", action="store_true",
                        help="CUDA: also print the device time of each kernel of paged_attention "
                             "and SDPA, after the same L2 flush")
    args = parser.parse_args(argv)

    if args.plot_from:
        with open(args.plot_from) as f:
            data = json.load(f)
        print_table(data["results"])
        if args.plot:
            plot(data["results"], data["meta"], args.plot)
        return

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mini_paged_attn import _C

    if args.cpu_isa:
        _C.set_cpu_isa(args.cpu_isa)
    device = args.device
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python"] + sys.argv),
        "device": device,
        "device_name": (torch.cuda.get_device_name() if device == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_isa": _C.cpu_isa(),
        "timing": ("triton.testing.do_bench median, L2 flushed before each call"
                   if device == "cuda" else "torch.utils.benchmark blocked_autorange median"),
    }
    shapes = cuda_shapes(args.quick) if device == "cuda" else cpu_shapes(args.quick)
    results = run(device, args.quick, shapes)
    if device == "cpu":
        # The read ceiling in the same run: x.sum() over 256 MB (far beyond the caches).
        x = torch.randn(64 * 2**20)
        meta["read_gbps"] = x.numel() * 4 / time_us(x.sum, device, args.quick) / 1e3
    print(f"# {meta['date']}  {meta['device_name']}  torch {meta['torch']}  {meta['timing']}"
          + (f"  {meta['threads']} threads, {meta['cpu_isa']} kernels" if device == "cpu"
             else ""))
    if device == "cpu":
        print(f"# read ceiling, x.sum() over 256 MB: {meta['read_gbps']:.1f} GB/s")
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, meta, args.plot)
    if args.profile and device == "cuda":
        profile_kernels(shapes)


if __name__ == "__main__":
    main()

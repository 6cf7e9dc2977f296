"""Prefill-attention benchmark: ``paged_prefill_attention`` (whole prompts, or
a chunk of new tokens after a cached prefix, read through shuffled blocks)
against torch SDPA (causal, ``enable_gqa``) on a contiguous copy of the same
K/V, in one run. SDPA gets the same work: for a chunk after a prefix, its
queries attend to the prefix and causally to each other (an explicit mask).
SDPA runs twice: with the backend torch picks (on an H100/H200, cuDNN's) and
with its flash backend forced (FlashAttention-2; it takes no explicit mask,
so it has no number for a chunk after a prefix). On CUDA the paged op runs
with its default kernel choice (auto) and on each tensor-core kernel forced:
mma.sync (``MINI_PAGED_ATTN_CUDA_PREFILL=tensor-core``) and wgmma (``=wgmma``;
Hopper, head sizes 64 and 128, the mma.sync kernel elsewhere).

    python benchmarks/bench_prefill.py --device cpu --threads 2
    python benchmarks/bench_prefill.py --device cuda --json prefill.json
    python benchmarks/bench_prefill.py --device cuda --shape 1   # 4x4096 only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_decode import time_us  # noqa: E402

from mini_paged_attn import _C, ops  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Shape(NamedTuple):
    seqs: int
    new_tokens: int
    cached: int  # tokens of each sequence already in the cache before the new ones
    heads: int
    kv_heads: int
    head_size: int
    dtype: str
    block_size: int = 16

    def __str__(self) -> str:
        prefix = f" after {self.cached}" if self.cached else ""
        return (f"{self.seqs}x{self.new_tokens}{prefix} h={self.heads}/{self.kv_heads} "
                f"d={self.head_size} bs={self.block_size} {self.dtype}")

    @property
    def flops(self) -> float:
        # QK^T and PV over the visible keys: the prefix, then a causal triangle.
        n, c = self.new_tokens, self.cached
        pairs = n * c + n * (n + 1) / 2
        return 4 * self.seqs * self.heads * self.head_size * pairs


def shapes_for(device: str) -> List[Shape]:
    if device == "cpu":
        return [Shape(4, 512, 0, 8, 2, 64, dt) for dt in ("float32", "bfloat16")] + \
            [Shape(2, 1024, 0, 32, 8, 128, dt) for dt in ("float32", "bfloat16")]
    return [Shape(16, 1024, 0, 14, 2, 64, "bfloat16"), Shape(4, 4096, 0, 32, 8, 128, "bfloat16"),
            Shape(64, 512, 0, 32, 8, 128, "bfloat16"),
            Shape(4, 512, 8192, 32, 8, 128, "bfloat16")]


def run_shape(shape: Shape, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[shape.dtype]
    s, n, c, bs = shape.seqs, shape.new_tokens, shape.cached, shape.block_size
    ctx = n + c
    per_seq = -(-ctx // bs)
    k = torch.randn(s, per_seq * bs, shape.kv_heads, shape.head_size, generator=g).to(dtype)
    v = torch.randn(s, per_seq * bs, shape.kv_heads, shape.head_size, generator=g).to(dtype)
    q = torch.randn(s * n, shape.heads, shape.head_size, generator=g).to(dtype)
    perm = torch.randperm(s * per_seq, generator=g)
    key_cache = torch.empty(s * per_seq, bs, shape.kv_heads, shape.head_size, dtype=dtype)
    value_cache = torch.empty_like(key_cache)
    key_cache[perm] = k.view(s * per_seq, bs, shape.kv_heads, shape.head_size)
    value_cache[perm] = v.view(s * per_seq, bs, shape.kv_heads, shape.head_size)
    tables = perm.view(s, per_seq).to(torch.int32)
    lens = torch.full((s,), ctx, dtype=torch.int32)
    loc = torch.arange(0, s * n + 1, n, dtype=torch.int32)
    # SDPA's layout: [seqs, heads, tokens, head_size], contiguous.
    sq = q.view(s, n, shape.heads, -1).transpose(1, 2).contiguous()
    sk = k[:, :ctx].transpose(1, 2).contiguous()
    sv = v[:, :ctx].transpose(1, 2).contiguous()
    mask = None
    if c:
        mask = torch.ones(n, ctx, dtype=torch.bool).tril(diagonal=c)
    to = dict(device=device)
    key_cache, value_cache, tables, lens, loc, q = (t.to(**to) for t in
                                                   (key_cache, value_cache, tables, lens, loc, q))
    sq, sk, sv = sq.to(**to), sk.to(**to), sv.to(**to)
    mask = None if mask is None else mask.to(**to)
    out = torch.empty_like(q)

    def paged():
        ops.paged_prefill_attention(q, key_cache, value_cache, tables, lens, loc, out=out,
                                    check=False)

    def sdpa():
        if mask is None:
            return F.scaled_dot_product_attention(sq, sk, sv, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(sq, sk, sv, attn_mask=mask, enable_gqa=True)

    def sdpa_flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(sq, sk, sv, is_causal=True, enable_gqa=True)

    paged()
    ref = sdpa().transpose(1, 2).reshape(s * n, shape.heads, -1)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    t_paged, t_sdpa = time_us(paged, device, False), time_us(sdpa, device, False)
    # On CUDA, each tensor-core kernel forced (auto, the default, picks one of them).
    forced = {}
    if device == "cuda":
        before = os.environ.get("MINI_PAGED_ATTN_CUDA_PREFILL")
        for name, kernel in (("mma", "tensor-core"), ("wgmma", "wgmma")):
            os.environ["MINI_PAGED_ATTN_CUDA_PREFILL"] = kernel
            try:
                paged()
                forced[name] = (time_us(paged, device, False),
                                ((out.double() - ref.double()).norm() / ref.double().norm()).item())
            finally:
                os.environ.pop("MINI_PAGED_ATTN_CUDA_PREFILL")
                if before is not None:
                    os.environ["MINI_PAGED_ATTN_CUDA_PREFILL"] = before
    t_mma, err_mma = forced.get("mma", (None, None))
    t_wgmma, err_wgmma = forced.get("wgmma", (None, None))
    t_flash = None
    if mask is None:
        try:
            sdpa_flash()
            t_flash = time_us(sdpa_flash, device, False)
        except RuntimeError as e:  # no flash kernel for this device or shape
            print(f"{shape}: SDPA flash failed: {str(e).splitlines()[0]}", file=sys.stderr)
    return {"shape": str(shape), "paged_us": t_paged, "paged_mma_us": t_mma,
            "paged_wgmma_us": t_wgmma,
            "sdpa_us": t_sdpa,
            "sdpa_flash_us": t_flash,
            "paged_tflops": shape.flops / t_paged / 1e6, "sdpa_tflops": shape.flops / t_sdpa / 1e6,
            "sdpa_flash_tflops": shape.flops / t_flash / 1e6 if t_flash else None,
            "vs_sdpa": t_sdpa / t_paged, "vs_sdpa_flash": t_flash / t_paged if t_flash else None,
            "rel_err_vs_sdpa": err, "mma_rel_err_vs_sdpa": err_mma,
            "wgmma_rel_err_vs_sdpa": err_wgmma}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu-isa", default=None,
                   help="CPU kernel variant: baseline, x86-64-v3 or x86-64-v4 (default: the best)")
    p.add_argument("--json", default=None)
    p.add_argument("--shape", type=int, action="append", default=None,
                   help="run only this shape (its index in the table; repeatable)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_isa:
        _C.set_cpu_isa(args.cpu_isa)
    shapes = shapes_for(args.device)
    if args.shape:
        bad = [i for i in args.shape if not 0 <= i < len(shapes)]
        if bad:
            p.error(f"--shape {bad[0]}: there are {len(shapes)} shapes (0-{len(shapes) - 1})")
        shapes = [shapes[i] for i in args.shape]
    rows = [run_shape(shape, args.device) for shape in shapes]
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        platform.processor() or platform.machine()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {date}  {device}  torch {torch.__version__}  {torch.get_num_threads()} threads, "
          f"{_C.cpu_isa()} CPU kernels")
    print(f"{'shape':<44}{'paged us':>9}{'mma us':>9}{'wgmma us':>9}{'sdpa us':>9}{'flash us':>9}"
          f"{'paged TFLOP/s':>14}"
          f"{'sdpa':>8}{'flash':>8}{'vs sdpa':>9}{'vs flash':>9}{'wgmma err':>10}")
    for r in rows:
        flash = r["sdpa_flash_us"] is not None
        wg = "".join(f"{r[k]:>9.0f}" if r[k] else f"{'-':>9}"
                     for k in ("paged_mma_us", "paged_wgmma_us"))
        print(f"{r['shape']:<44}{r['paged_us']:>9.0f}{wg}{r['sdpa_us']:>9.0f}"
              + (f"{r['sdpa_flash_us']:>9.0f}" if flash else f"{'-':>9}")
              + f"{r['paged_tflops']:>14.3f}{r['sdpa_tflops']:>8.3f}"
              + (f"{r['sdpa_flash_tflops']:>8.3f}" if flash else f"{'-':>8}")
              + f"{r['vs_sdpa']:>8.2f}x" + (f"{r['vs_sdpa_flash']:>8.2f}x" if flash else f"{'-':>9}")
              + (f"{r['wgmma_rel_err_vs_sdpa']:>10.1e}" if r["paged_wgmma_us"] else f"{'-':>10}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": date, "device": device, "command": " ".join(sys.argv),
                       "cpu_isa": _C.cpu_isa(),
                       "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""How fast can N bytes be read once, timed the way bench_decode.py times kernels?

A plain Triton reduction (each program sums a contiguous chunk) swept over the
number of programs, the load width and warps, with and without evict-first
loads, under `triton.testing.do_bench` (median, L2 flushed before each call).
It gives the decode kernel a read ceiling for its one-wave shapes that a
library reduction (`torch.sum`, also printed) does not reach, and first times
an empty kernel: the fixed cost that every timed call carries. GPU only.

    python benchmarks/read_ceiling.py                 # 134.2 MB and 2.1 GB
    python benchmarks/read_ceiling.py --mbytes 536.9
"""
from __future__ import annotations

import argparse
import itertools

import torch

try:
    import triton
    import triton.language as tl
    from triton.testing import do_bench
except ImportError as e:
    raise SystemExit("read_ceiling.py needs triton (and a CUDA GPU)") from e


@triton.jit
def read_kernel(x_ptr, out_ptr, n, chunk, BLOCK: tl.constexpr, EVICT_FIRST: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(pid * chunk, pid * chunk + chunk, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        if EVICT_FIRST:
            v = tl.load(x_ptr + idx, mask=idx < n, other=0.0, eviction_policy="evict_first")
        else:
            v = tl.load(x_ptr + idx, mask=idx < n, other=0.0)
        acc += v.to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def empty_kernel(out_ptr):
    pass


def time_us(fn) -> float:
    return 1e3 * do_bench(fn, warmup=20, rep=100, return_mode="median")


def best_reads(nbytes: int, top: int) -> None:
    n = nbytes // 2
    x = torch.randn(n, device="cuda").to(torch.bfloat16)
    ref = x.float().sum().item()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    t_sum = time_us(lambda: x.sum(dtype=torch.float32))
    rows = []
    for per_sm, block, warps, evict in itertools.product((1, 2, 8, 16, 64), (2048, 4096, 8192),
                                                         (4, 8), (False, True)):
        chunk = triton.cdiv(triton.cdiv(n, sms * per_sm), block) * block
        grid = triton.cdiv(n, chunk)
        out = torch.empty(grid, device="cuda", dtype=torch.float32)

        def fn():
            read_kernel[(grid,)](x, out, n, chunk, BLOCK=block, EVICT_FIRST=evict,
                                 num_warps=warps)

        fn()
        assert abs(out.sum().item() - ref) <= 1e-3 * abs(ref) + 1.0, "read kernel is wrong"
        rows.append((time_us(fn), per_sm, block, warps, evict))
    rows.sort()
    print(f"{nbytes / 1e6:.1f} MB: torch.sum {t_sum:.1f} us ({nbytes / t_sum / 1e3:.0f} GB/s); "
          f"fastest Triton reads:")
    for t, per_sm, block, warps, evict in rows[:top]:
        print(f"  {t:7.1f} us {nbytes / t / 1e3:5.0f} GB/s  programs/SM {per_sm:>2}  "
              f"BLOCK {block}  warps {warps}  evict_first {int(evict)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=float, nargs="+", default=[134.217728, 2147.483648])
    parser.add_argument("--top", type=int, default=4, help="configurations printed per size")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("read_ceiling.py needs a CUDA GPU")
    # What every timed call costs around its kernel (launch, events): an empty
    # kernel of two programs an SM under the same timing.
    out = torch.empty(1, device="cuda")
    grid = (2 * torch.cuda.get_device_properties(0).multi_processor_count,)
    print(f"empty kernel: {time_us(lambda: empty_kernel[grid](out)):.1f} us")
    for mb in args.mbytes:
        best_reads(round(mb * 1e6), args.top)


if __name__ == "__main__":
    main()

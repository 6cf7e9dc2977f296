"""cpu_isa: every instruction-set variant of the CPU kernels this machine runs
(baseline, x86-64-v3, x86-64-v4), each against the float64 references, so a
slow or wrong variant cannot hide behind the one picked by default."""
import os
import subprocess
import sys
import zlib

import pytest
import torch

from mini_paged_attn import _C, ops
from reference import (random_paged_kv, ref_paged_attention, ref_paged_prefill_attention,
                       rel_err)

ISAS = _C.supported_cpu_isas()
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def test_the_best_variant_is_the_default_and_names_are_checked():
    assert ISAS[0] == "baseline" and _C.cpu_isa() == ISAS[-1]
    with pytest.raises(ValueError, match="isa must be baseline"):
        _C.set_cpu_isa("sse9")
    if "x86-64-v4" not in ISAS:
        with pytest.raises(ValueError, match="beyond this CPU"):
            _C.set_cpu_isa("x86-64-v4")
    assert _C.cpu_isa() == ISAS[-1], "a rejected name changed the variant"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,head_size", [((8, 2), 64), ((4, 4), 80), ((16, 2), 128)])
def test_decode_matches_reference(isa, dtype, heads, head_size):
    g = torch.Generator().manual_seed(zlib.crc32(f"{isa} {dtype} {heads}".encode()))
    lens = torch.randint(1, 300, (5,), generator=g).tolist()
    k, v, tables, ctx = random_paged_kv(5, lens, heads[1], head_size, 16, dtype, "cpu",
                                        generator=g)
    q = torch.randn(5, heads[0], head_size, generator=g).to(dtype)
    out = ops.paged_attention(q, k, v, tables, ctx)
    assert rel_err(out, ref_paged_attention(q, k, v, tables, ctx)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,head_size", [((8, 2), 64), ((6, 6), 80), ((12, 2), 72)])
def test_prefill_matches_reference(isa, dtype, heads, head_size):
    # Head sizes that leave a tail past the register tiles' two vectors, and row
    # counts that leave a partial tile of rows.
    g = torch.Generator().manual_seed(zlib.crc32(f"{isa} {dtype} {head_size}".encode()))
    lens, q_lens = [70, 130, 17], [70, 33, 1]
    k, v, tables, ctx = random_paged_kv(3, lens, heads[1], head_size, 8, dtype, "cpu",
                                        generator=g)
    q = torch.randn(sum(q_lens), heads[0], head_size, generator=g).to(dtype)
    loc = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    out = ops.paged_prefill_attention(q, k, v, tables, ctx, loc)
    assert rel_err(out, ref_paged_prefill_attention(q, k, v, tables, ctx, loc)) < TOL[dtype]


def _run(env_value):
    code = ("import torch, mini_paged_attn as m; q = torch.randn(1, 2, 64); "
            "k = torch.randn(1, 16, 2, 64); t = torch.zeros(1, 1, dtype=torch.int32); "
            "m.paged_attention(q, k, k, t, torch.ones(1, dtype=torch.int32)); "
            "print(m._C.cpu_isa())")
    env = dict(os.environ, MINI_PAGED_ATTN_CPU_ISA=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_the_environment_variable_picks_the_variant():
    done = _run("baseline")
    assert done.returncode == 0 and done.stdout.strip() == "baseline", done.stderr
    bad = _run("avx9000")
    assert bad.returncode != 0 and "MINI_PAGED_ATTN_CPU_ISA" in bad.stderr

"""layers/fused.py: RMSNorm (with the residual add), SiLU-and-mul and RoPE against
float64 references, over random shapes; on a GPU these are CUDA kernels,
given strided inputs as the model hands them over."""
import pytest
import torch

from mini_paged_attn.layers.fused import rms_norm, rotary_embedding, silu_and_mul
from mini_paged_attn.layers.rotary import inv_frequencies

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _shapes(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return [(int(t), int(h)) for t, h in zip(torch.randint(1, 300, (n,), generator=g),
                                             torch.randint(1, 40, (n,), generator=g) * 32 + 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(device, dtype, with_residual):
    for tokens, hidden in _shapes(1):
        g = torch.Generator().manual_seed(tokens)
        # A wider buffer: rows with a stride, as a slice of a larger activation.
        x = torch.randn(tokens, hidden + 8, generator=g)[:, :hidden].to(dtype).to(device)
        res = torch.randn(tokens, hidden, generator=g).to(dtype).to(device)
        w = (torch.rand(hidden, generator=g) + 0.5).to(dtype).to(device)
        total = x.double() + res.double() if with_residual else x.double()
        ref = w.double() * total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + 1e-6)
        x_in, res_in = x.clone(), res.clone()
        out, new_res = rms_norm(x_in, w, 1e-6, res_in if with_residual else None)
        assert _rel(out, ref) < TOL[dtype]
        assert _rel(new_res, total) < TOL[dtype] / 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(device, dtype):
    for tokens, size in _shapes(2):
        g = torch.Generator().manual_seed(size)
        x = torch.randn(tokens, 2 * size, generator=g).to(dtype).to(device)
        gate, up = x.double().chunk(2, dim=-1)
        ref = gate * torch.sigmoid(gate) * up
        out = silu_and_mul(x)
        assert out.shape == ref.shape and _rel(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size", [64, 128, 80])
def test_rotary_embedding(device, dtype, head_size):
    heads, kv_heads, max_pos = 6, 2, 4096
    inv = inv_frequencies(head_size, 10000.0).double()
    freqs = torch.arange(max_pos).double()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().to(dtype).to(device), emb.sin().to(dtype).to(device)
    for tokens, _ in _shapes(3):
        g = torch.Generator().manual_seed(tokens)
        positions = torch.randint(0, max_pos, (tokens,), generator=g)
        # q and k as views of one fused projection output.
        qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_size, generator=g).to(dtype)
        qkv = qkv.to(device)
        q = qkv[:, :heads * head_size].view(tokens, heads, head_size)
        k = qkv[:, heads * head_size:(heads + kv_heads) * head_size].view(tokens, kv_heads,
                                                                         head_size)
        v_before = qkv[:, (heads + kv_heads) * head_size:].clone()

        def ref(x):
            x = x.double().cpu()
            c, s = cos.double().cpu()[positions][:, None], sin.double().cpu()[positions][:, None]
            half = head_size // 2
            rot = torch.cat((-x[..., half:], x[..., :half]), -1)
            return x * c + rot * s

        rq, rk = ref(q), ref(k)
        q2, k2 = rotary_embedding(positions.to(device), q, k, cos, sin)
        assert _rel(q2.cpu(), rq) < TOL[dtype] and _rel(k2.cpu(), rk) < TOL[dtype]
        assert torch.equal(qkv[:, (heads + kv_heads) * head_size:], v_before), "v was touched"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_name_bad_arguments():
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(TypeError, match="weight"):
        rms_norm(x, torch.ones(64, device="cuda", dtype=torch.float16), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(32, device="cuda"), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, torch.ones(64, device="cuda"), 1e-6, torch.randn(3, 64, device="cuda"))
    with pytest.raises(ValueError, match="input"):
        silu_and_mul(torch.randn(4, 63, device="cuda"))
    q = torch.randn(4, 2, 64, device="cuda")
    table = torch.randn(16, 64, device="cuda")
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(torch.zeros(3, dtype=torch.int64, device="cuda"), q, q.clone(), table,
                         table)
    with pytest.raises(TypeError, match="cos"):
        rotary_embedding(torch.zeros(4, dtype=torch.int64, device="cuda"), q, q.clone(),
                         table.half(), table.half())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_opcheck():
    ops = torch.ops.mini_paged_attn
    x = torch.randn(5, 64, device="cuda")
    w = torch.rand(64, device="cuda")
    torch.library.opcheck(ops.rms_norm, (torch.empty_like(x), x, w, 1e-6))
    torch.library.opcheck(ops.fused_add_rms_norm, (x.clone(), x.clone(), w, 1e-6))
    torch.library.opcheck(ops.silu_and_mul, (torch.empty(5, 32, device="cuda"), x))
    q, k = torch.randn(5, 4, 64, device="cuda"), torch.randn(5, 2, 64, device="cuda")
    table = torch.rand(16, 64, device="cuda")
    torch.library.opcheck(ops.rotary_embedding,
                          (torch.arange(5, device="cuda"), q, k, table, table))

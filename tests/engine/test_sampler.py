"""Sampler, ops.sample_tokens and SamplingParams: greedy, temperature, top-k,
top-p, counter-based seeds."""
import math

import pytest
import torch

from mini_paged_attn import SamplingParams
from mini_paged_attn.engine.sampler import Sampler, sample_seed
from mini_paged_attn.ops import sample_tokens

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])


def _draw(params, device, rows=8000, seed=0, logits=LOGITS):
    seeds = [sample_seed(seed, i) for i in range(rows)]
    tokens, logprobs = Sampler()(logits.repeat(rows, 1).to(device), [params] * rows, seeds,
                                 [7] * rows)
    return torch.tensor(tokens), torch.tensor(logprobs)


def _expected(logits, temperature, top_k=-1, top_p=1.0):
    """float64 reference of temperature, then top-k, then top-p on the renormalised top-k."""
    p = (logits.double() / temperature).softmax(-1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    k = len(p) if top_k <= 0 else top_k
    kept = p[order[:k]] / p[order[:k]].sum()
    before = kept.cumsum(0) - kept
    keep[order[:k][before < top_p]] = True
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [50, 1024])  # the CUDA kernel loads 16 bytes at once if it can
def test_greedy_is_argmax_with_its_logprob(device, dtype, vocab):
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[2, 7] = logits[2, 9] = logits[2].max() + 1  # a tie: the lowest index wins
    tokens, logprobs = Sampler()(logits.to(device), [SamplingParams(temperature=0)] * 6,
                                 list(range(6)), [0] * 6)
    assert tokens == logits.float().argmax(-1).tolist() and tokens[2] == 7
    expected = logits.float().log_softmax(-1).max(-1).values
    assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=1.0), dict(temperature=0.6), dict(temperature=2.0),
    dict(temperature=1.0, top_k=2), dict(temperature=0.7, top_k=3),
    dict(temperature=1.0, top_p=0.6), dict(temperature=1.0, top_p=0.85),
    dict(temperature=0.8, top_k=4, top_p=0.9),
])
def test_sampling_matches_the_distribution(device, kwargs):
    params = SamplingParams(**kwargs)
    tokens, logprobs = _draw(params, device)
    expected = _expected(LOGITS[0], params.temperature, params.top_k, params.top_p)
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    # 8000 draws: 5 standard errors of the largest probability are about 0.028.
    assert (freq - expected).abs().max() < 0.03, (freq, expected)
    assert set(tokens.tolist()) <= set(expected.nonzero().flatten().tolist())
    assert torch.allclose(logprobs, LOGITS[0].log_softmax(-1)[tokens])


def test_a_large_vocabulary_matches_the_distribution(device):
    # The CUDA kernel splits a row over its threads; a peaked row over 50k tokens.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 50_000, generator=g) * 0.1
    logits[0, :4] = torch.tensor([9.0, 8.5, 8.0, 7.0])
    tokens, _ = _draw(SamplingParams(temperature=1.0, top_k=3), device, logits=logits)
    expected = _expected(logits[0], 1.0, 3)[:3]
    freq = torch.bincount(tokens, minlength=3).double()[:3] / len(tokens)
    assert tokens.max() < 3 and (freq - expected).abs().max() < 0.03


def test_seeded_rows_are_reproducible_and_batch_independent(device):
    params = SamplingParams(temperature=1.0)
    a, _ = _draw(params, device, rows=50, seed=3)
    b, _ = _draw(params, device, rows=50, seed=3)
    c, _ = _draw(params, device, rows=50, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Row 17 alone draws what it drew among 49 others.
    alone = Sampler()(LOGITS.to(device), [params], [sample_seed(3, 17)], [7])[0]
    assert alone == [a[17].item()]


def test_sample_tokens_checks_its_arguments():
    logits = torch.randn(3, 10)
    f32, i64 = torch.zeros(3), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="seeds"):
        sample_tokens(logits, f32, f32, f32, i64)
    with pytest.raises(ValueError, match="temperatures"):
        sample_tokens(logits, torch.zeros(2), f32, i64, i64)
    with pytest.raises(ValueError, match="logits"):
        sample_tokens(logits[0], f32, f32, i64, i64)
    with pytest.raises(TypeError, match="logits"):
        sample_tokens(logits.long(), f32, f32, i64, i64)


def test_temperature_extremes(device):
    tokens, _ = _draw(SamplingParams(temperature=1e-4), device)
    assert set(tokens.tolist()) == {0}
    hot, _ = _draw(SamplingParams(temperature=5.0), device)
    cold, _ = _draw(SamplingParams(temperature=1.0), device)
    assert (hot != 0).float().mean() > (cold != 0).float().mean()
    assert not math.isnan(_draw(SamplingParams(temperature=1e-30), device)[1][0])


@pytest.mark.parametrize("kwargs,name", [
    (dict(n=0), "n"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=True), "temperature"), (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"), (dict(max_tokens=0), "max_tokens"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"), (dict(seed="x"), "seed"),
    (dict(seed=2**64), "seed"), (dict(stop_token_ids=[1.5]), "stop_token_ids"),
])
def test_sampling_params_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(stop_token_ids=5), "stop_token_ids"), (dict(stop_token_ids="ab"), "stop_token_ids"),
    (dict(ignore_eos=1), "ignore_eos"),
])
def test_sampling_params_type_errors(kwargs, name):
    with pytest.raises(TypeError, match=name):
        SamplingParams(**kwargs)


def test_sampling_params_take_numpy_scalars():
    import numpy as np

    p = SamplingParams(n=np.int64(2), temperature=np.float32(0.5), top_p=np.float64(0.9),
                       top_k=np.int32(4), max_tokens=np.int16(3), stop_token_ids=np.array([7]),
                       seed=np.uint32(9))
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_tokens, p.stop_token_ids, p.seed) == \
        (2, 0.5, 0.9, 4, 3, [7], 9)
    assert all(type(x) in (int, float) for x in (p.n, p.temperature, p.top_k, p.seed))


def test_opcheck(device):
    logits = torch.randn(4, 64, device=device)
    f32 = torch.tensor([0.0, 0.5, 1.0, 2.0], device=device)
    i64 = torch.arange(4, device=device)
    torch.library.opcheck(torch.ops.mini_paged_attn.sample_tokens,
                          (logits, f32, torch.full((4,), float("-inf"), device=device), i64, i64))


def test_tiny_temperatures_are_greedy(device):
    # 1 / temperature would overflow the scaled logits: greedy instead, as vLLM.
    params = SamplingParams(temperature=1e-30)
    assert params.greedy
    tokens, _ = _draw(params, device, rows=50)
    assert set(tokens.tolist()) == {0}

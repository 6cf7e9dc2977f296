"""Sampler and SamplingParams: greedy, temperature, top-k, top-p, seeds."""
import pytest
import torch

from mini_paged_attn import SamplingParams
from mini_paged_attn.engine.sampler import Sampler, make_generator

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
PROBS = LOGITS.softmax(-1)[0]


def _draw(params, rows=4000, seed=0):
    gens = [make_generator(seed, i, torch.device("cpu")) for i in range(rows)]
    tokens, logprobs = Sampler()(LOGITS.repeat(rows, 1), [params] * rows, gens)
    return torch.tensor(tokens), torch.tensor(logprobs)


def test_greedy_is_argmax_with_its_logprob():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = Sampler()(logits, [SamplingParams(temperature=0)] * 6, [None] * 6)
    assert tokens == logits.argmax(-1).tolist()
    expected = logits.log_softmax(-1).max(-1).values
    assert torch.allclose(torch.tensor(logprobs), expected)


def test_sampling_follows_the_distribution():
    tokens, logprobs = _draw(SamplingParams(temperature=1.0))
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert (freq - PROBS).abs().max() < 0.03
    assert torch.allclose(logprobs, PROBS.log()[tokens])


def test_top_k_top_p_and_temperature_restrict_the_draw():
    tokens, _ = _draw(SamplingParams(temperature=1.0, top_k=2))
    assert set(tokens.tolist()) == {0, 1}
    # p(0) = 0.53, p(1) = 0.20: top_p=0.6 keeps exactly those two.
    tokens, _ = _draw(SamplingParams(temperature=1.0, top_p=0.6))
    assert set(tokens.tolist()) == {0, 1}
    tokens, _ = _draw(SamplingParams(temperature=1e-4, top_k=-1))
    assert set(tokens.tolist()) == {0}
    hot, _ = _draw(SamplingParams(temperature=5.0))
    assert (hot != 0).float().mean() > (_draw(SamplingParams())[0] != 0).float().mean()


def test_seeded_rows_are_reproducible():
    a, _ = _draw(SamplingParams(temperature=1.0), rows=50, seed=3)
    b, _ = _draw(SamplingParams(temperature=1.0), rows=50, seed=3)
    c, _ = _draw(SamplingParams(temperature=1.0), rows=50, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n=0), "n"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"), (dict(max_tokens=0), "max_tokens"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"), (dict(seed="x"), "seed"),
])
def test_sampling_params_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)

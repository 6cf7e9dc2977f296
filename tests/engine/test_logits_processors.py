"""engine/logits_processors.py and the sampler's min-p: penalties and
min_tokens against a direct computation, top log-probabilities, and the same
options end to end through LLM.generate."""
import math

import torch

from mini_paged_attn import LLM, SamplingParams
from mini_paged_attn.engine.logits_processors import process_logits, top_logprobs
from mini_paged_attn.engine.request import Request
from mini_paged_attn.engine.sampler import Sampler
from mini_paged_attn.engine.sequence import Sequence
from mini_paged_attn.models.config import ModelConfig

VOCAB = 50


def _seq(prompt, output, params, stop_ids=frozenset()):
    request = Request(0, prompt, params, 100, frozenset(stop_ids), 1)
    seq = Sequence(0, request, prompt + output)
    return seq


def test_penalties_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, VOCAB, generator=g) * 3
    params = [SamplingParams(repetition_penalty=1.7, frequency_penalty=0.4, presence_penalty=0.9),
              SamplingParams(),  # untouched
              SamplingParams(repetition_penalty=0.6)]
    prompts, outputs = [[1, 2, 3], [4], [7, 7, 8]], [[3, 3, 5, 9], [4, 4], [8, 11]]
    seqs = [_seq(p, o, sp) for p, o, sp in zip(prompts, outputs, params)]
    got = process_logits(logits, seqs)
    expected = logits.clone()
    for r, (p, o, sp) in enumerate(zip(prompts, outputs, params)):
        for t in range(VOCAB):
            x = expected[r, t].item()
            if t in p or t in o:
                x = x / sp.repetition_penalty if x > 0 else x * sp.repetition_penalty
            x -= sp.frequency_penalty * o.count(t) + sp.presence_penalty * (t in o)
            expected[r, t] = x
    assert torch.allclose(got, expected, atol=1e-5)
    assert process_logits(logits, [seqs[1]]) is logits  # nothing asked: no copy


def test_min_tokens_holds_back_stop_ids():
    logits = torch.zeros(2, VOCAB)
    params = SamplingParams(min_tokens=3)
    early = _seq([1, 2], [5], params, stop_ids={0, 7})
    done = _seq([1, 2], [5, 6, 8], params, stop_ids={0, 7})
    got = process_logits(logits, [early, done])
    assert got[0, 0] == got[0, 7] == float("-inf") and torch.isfinite(got[0, 1:7]).all()
    assert torch.isfinite(got[1]).all()


def test_top_logprobs_include_the_chosen_token():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, VOCAB, generator=g)
    seqs = [_seq([1], [], SamplingParams(logprobs=3)), _seq([1], [], SamplingParams())]
    chosen = int(logits[0].argmin())
    result = top_logprobs(logits, seqs, [chosen, 0])
    assert set(result) == {0}
    lp = torch.log_softmax(logits[0], -1)
    top3 = lp.topk(3).indices.tolist()
    assert set(result[0]) == set(top3) | {chosen}
    for t, v in result[0].items():
        assert math.isclose(v, lp[t].item(), rel_tol=1e-5)


def test_min_p_keeps_only_likely_tokens():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, VOCAB, generator=g).repeat(400, 1) * 0.5
    params = [SamplingParams(temperature=1.0, min_p=0.3)] * 400
    tokens, _ = Sampler()(logits, params, list(range(400)), [0] * 400)
    probs = logits[0].softmax(-1)
    allowed = set((probs >= 0.3 * probs.max()).nonzero()[:, 0].tolist())
    assert 1 < len(allowed) < VOCAB
    assert set(tokens) <= allowed and len(set(tokens)) > 1


def test_options_end_to_end():
    llm = LLM(ModelConfig.tiny(), device="cpu", max_num_seqs=4)
    prompt = [[5, 6, 7, 8]]
    greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6,
                                                 logprobs=2))[0].outputs[0]
    assert len(greedy.logprobs) == 6
    for t, top in zip(greedy.token_ids, greedy.logprobs):
        assert t in top and len(top) <= 3 and top[t] == max(top.values())
    assert math.isclose(greedy.cumulative_logprob, sum(top[t] for t, top in
                                                       zip(greedy.token_ids, greedy.logprobs)),
                        rel_tol=1e-4)
    first = greedy.token_ids[0]
    stopped = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6,
                                                  stop_token_ids=[first]))[0].outputs[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    held = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, min_tokens=3,
                                               stop_token_ids=[first]))[0].outputs[0]
    assert len(held.token_ids) >= 3 and first not in held.token_ids[:3]
    penalized = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6,
                                                    frequency_penalty=2.0,
                                                    repetition_penalty=2.0))[0].outputs[0]
    assert len(penalized.token_ids) == 6
    assert not llm.engine.has_unfinished

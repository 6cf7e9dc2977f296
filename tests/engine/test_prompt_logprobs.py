"""SamplingParams.prompt_logprobs (engine/prompt_logprobs.py) against Hugging
Face transformers: each prompt token's entry is the log_softmax of the
logits at the position before it, whole or chunked, with prefix-cache hits
around, under preemption, and only for the requests that ask."""
import pytest
import torch

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams

transformers = pytest.importorskip("transformers")

BLOCK = 4
# Bytes of one block of this model (2 layers, K and V, 2 KV heads of 16, float32).
BLOCK_BYTES = BLOCK * 2 * 2 * 2 * 16 * 4
VOCAB = 256


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(checkpoint dir, transformers model): a random float32 Llama."""
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("prompt_logprobs")
    model.save_pretrained(path)
    return str(path), model


def _prompts(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _llm(path, blocks=512, **kwargs):
    return LLM(path, PagedKVCacheConfig(blocks * BLOCK_BYTES, BLOCK), device="cpu", **kwargs)


def _check(model, prompt, entries, k):
    """``entries`` are vLLM's prompt logprobs of ``prompt`` under ``model``."""
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].float().log_softmax(-1)
    assert len(entries) == len(prompt) and entries[0] is None
    for i in range(1, len(prompt)):
        entry, lp, token = entries[i], ref[i - 1], prompt[i]
        top = list(entry)[:min(k, VOCAB)]
        assert len(top) == min(k, VOCAB)
        assert set(entry) == set(top) | {token}
        for t, v in entry.items():
            assert abs(v - lp[t].item()) < 1e-4
        values = [entry[t] for t in top]
        assert values == sorted(values, reverse=True)  # best first
        if k:  # the k most likely (up to ties within the tolerance)
            assert min(lp[top]).item() >= lp.topk(k).values[-1].item() - 1e-4


GREEDY = dict(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.mark.parametrize("max_num_batched_tokens", [2048, 5])
def test_matches_transformers_whole_and_chunked(hf, max_num_batched_tokens):
    path, model = hf
    prompts = _prompts(1, 6, 17, 33, 12)
    ks = [3, 0, None, 5, None]
    llm = _llm(path, max_num_batched_tokens=max_num_batched_tokens)
    plain = llm.generate(prompts, SamplingParams(**GREEDY))
    out = llm.generate(prompts, [SamplingParams(prompt_logprobs=k, **GREEDY) for k in ks])
    for prompt, k, o, p in zip(prompts, ks, out, plain):
        if k is None:
            assert o.prompt_logprobs is None
        else:
            _check(model, prompt, o.prompt_logprobs, k)
        # Asking changes nothing else.
        assert o.outputs[0].token_ids == p.outputs[0].token_ids
    if max_num_batched_tokens == 5:
        assert llm.engine.scheduler.stats.num_partial_prefills > 0


def test_n_samples_a_stream_and_a_k_past_the_vocabulary(hf):
    path, model = hf
    prompt = _prompts(9, seed=1)[0]
    llm = _llm(path)
    out = llm.generate([prompt], SamplingParams(n=3, seed=0, max_tokens=3,
                                                prompt_logprobs=2))[0]
    assert len(out.outputs) == 3
    _check(model, prompt, out.prompt_logprobs, 2)
    streamed = list(llm.stream([prompt], SamplingParams(prompt_logprobs=2, **GREEDY)))
    assert streamed[-1].finished and streamed[-1].prompt_logprobs == out.prompt_logprobs
    every = llm.generate([prompt], SamplingParams(prompt_logprobs=1000, **GREEDY))[0]
    assert all(len(e) == VOCAB for e in every.prompt_logprobs[1:])


def test_prefix_cache_hits_skip_no_position(hf):
    path, model = hf
    shared = _prompts(41, seed=2)[0]
    a, b, c = (shared + tail for tail in _prompts(3, 5, 7, seed=3))
    llm = _llm(path)
    llm.generate([a], SamplingParams(**GREEDY))
    out = llm.generate([b, c], [SamplingParams(prompt_logprobs=2, **GREEDY),
                                SamplingParams(**GREEDY)])
    # 41 shared tokens are 10 full blocks; the request that asks computes them all.
    assert [o.num_cached_tokens for o in out] == [0, 40]
    _check(model, b, out[0].prompt_logprobs, 2)
    # A request that asks still leaves its blocks in the prefix cache.
    fresh = _llm(path)
    fresh.generate([b], SamplingParams(prompt_logprobs=1, **GREEDY))
    assert fresh.generate([c], SamplingParams(**GREEDY))[0].num_cached_tokens == 40


def test_preemption_records_each_entry_once(hf):
    path, model = hf
    a, b = _prompts(6, 46, seed=4)
    # 15 blocks of 4 tokens and chunks of 7: b is admitted beside a (12 blocks
    # for its 46 tokens) and prefilled over several steps, until a's decode
    # needs a block and preempts it half computed; b recomputes once a is done.
    llm = _llm(path, blocks=15, max_num_batched_tokens=7)
    out = llm.generate([a, b], [SamplingParams(prompt_logprobs=1, temperature=0, max_tokens=40,
                                               ignore_eos=True),
                                SamplingParams(prompt_logprobs=2, **GREEDY)])
    assert llm.engine.scheduler.stats.num_preemptions > 0
    _check(model, a, out[0].prompt_logprobs, 1)
    _check(model, b, out[1].prompt_logprobs, 2)


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=bad)

"""LLM end to end against Hugging Face transformers (an implementation nobody
here wrote): a random-initialised LlamaForCausalLM saved with save_pretrained,
float32 on the CPU. Greedy generation and beam search must give exactly
transformers' tokens under every cache layout and scheduling regime."""
import json
import os
import shutil

import pytest
import torch

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams, StaticKVCacheConfig

transformers = pytest.importorskip("transformers")

MAX_TOKENS = 20
LENGTHS = [1, 6, 17, 33, 46]
BLOCK = 4
# Bytes of one block of this model (2 layers, K and V, 2 KV heads of 16, float32).
BLOCK_BYTES = BLOCK * 2 * 2 * 2 * 16 * 4


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(checkpoint dir, transformers model, prompts, greedy references). The
    end-of-sequence id is a token greedy decoding of prompt 1 emits, so the
    stop path is exercised too."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=5000.0, bos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in LENGTHS]
    eos = _greedy(model, prompts[1], None)[4]
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    refs = [_greedy(model, p, eos) for p in prompts]
    assert refs[1][-1] == eos and len(refs[1]) < MAX_TOKENS
    return str(path), model, prompts, refs


def _greedy(model, prompt, eos):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=MAX_TOKENS,
                         eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_paged(hf):
    path, _, prompts, refs = hf
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    outputs = llm.generate(prompts, GREEDY)
    assert _tokens(outputs) == refs
    assert outputs[1].outputs[0].finish_reason == "stop"
    assert outputs[0].outputs[0].finish_reason == "length"
    assert llm.engine.kv_cache.num_used_blocks == 0, "finished requests keep blocks"


@pytest.mark.parametrize("cache", ["paged", "static"])
def test_greedy_forks_stay_exact(hf, cache):
    # n greedy samples fork after the prompt and write their own tokens into
    # shared blocks (copy-on-write when paged, a slot copy when static): each
    # must still be transformers' greedy continuation.
    path, _, prompts, refs = hf
    config = PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK) if cache == "paged" \
        else StaticKVCacheConfig(6, 80)
    llm = LLM(path, config, device="cpu")
    outputs = llm.generate(prompts, SamplingParams(temperature=0, n=3, max_tokens=MAX_TOKENS))
    assert [[o.token_ids for o in r.outputs] for r in outputs] == [[ref] * 3 for ref in refs]


def test_greedy_static(hf):
    path, _, prompts, refs = hf
    llm = LLM(path, StaticKVCacheConfig(3, 80), device="cpu")
    assert _tokens(llm.generate(prompts, GREEDY)) == refs


def test_greedy_with_preemption(hf):
    path, _, prompts, refs = hf
    # 20 blocks of 4 tokens: the longest request (66 tokens) fits alone, not
    # with the others, so running sequences get preempted and recomputed.
    llm = LLM(path, PagedKVCacheConfig(20 * BLOCK_BYTES, BLOCK), device="cpu")
    assert _tokens(llm.generate(prompts, GREEDY)) == refs
    assert llm.engine.scheduler.stats.num_preemptions > 0


def test_greedy_with_chunked_prefill(hf):
    path, _, prompts, refs = hf
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu",
              max_num_batched_tokens=7)
    assert _tokens(llm.generate(prompts, GREEDY)) == refs
    assert llm.engine.scheduler.stats.num_partial_prefills > 0


def test_greedy_with_prefix_cache_hits(hf):
    path, model, _, _ = hf
    g = torch.Generator().manual_seed(2)
    shared = torch.randint(3, 256, (41,), generator=g).tolist()
    prompts = [shared + torch.randint(3, 256, (n,), generator=g).tolist() for n in (3, 0, 9)]
    eos = model.config.eos_token_id
    refs = [_greedy(model, p, eos) for p in prompts]
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    first = llm.generate(prompts[:1], GREEDY)
    rest = llm.generate(prompts[1:], GREEDY)
    assert _tokens(first + rest) == refs
    # The shared 41 tokens are 10 full blocks (the prompt's last token is always recomputed).
    assert [o.num_cached_tokens for o in rest] == [40, 40]


@pytest.mark.parametrize("cache", ["paged", "static"])
def test_beam_search_matches_transformers(hf, cache):
    path, model, prompts, _ = hf
    width, max_tokens = 4, 10
    prompt = prompts[2]
    ref = model.generate(torch.tensor([prompt]), num_beams=width, num_return_sequences=width,
                         do_sample=False, max_new_tokens=max_tokens, length_penalty=0.0,
                         early_stopping=False, eos_token_id=None, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    config = PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK) if cache == "paged" \
        else StaticKVCacheConfig(width, 64)
    llm = LLM(path, config, device="cpu")
    out = llm.beam_search(prompt, width, max_tokens, length_penalty=0.0, ignore_eos=True)
    assert [o.token_ids for o in out.outputs] == [s[len(prompt):].tolist()
                                                  for s in ref.sequences]
    scores = torch.tensor([o.cumulative_logprob for o in out.outputs])
    assert torch.allclose(scores, ref.sequences_scores, atol=1e-4)
    assert llm.engine.kv_cache.num_used_blocks == 0


def test_beam_search_with_eos_matches_transformers(hf, tmp_path):
    path, model, prompts, _ = hf
    prompt, width, max_tokens = prompts[2], 3, 10

    def hf_beams(eos):
        out = model.generate(torch.tensor([prompt]), num_beams=width,
                             num_return_sequences=width, do_sample=False,
                             max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=0)
        beams = [s[len(prompt):].tolist() for s in out]
        # transformers pads the beams that ended early.
        return [b[:b.index(eos) + 1] if eos in b else b for b in beams]

    # The end-of-sequence id is the best beam's second token, so that beam
    # ends early while the others run on.
    eos = hf_beams(None)[0][1]
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config["eos_token_id"] = eos
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(tmp_path), PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    out = llm.beam_search(prompt, width, max_tokens)
    assert [o.token_ids for o in out.outputs] == hf_beams(eos)
    assert out.outputs[0].finish_reason == "stop" and len(out.outputs[0].token_ids) == 2


# -- sampling -----------------------------------------------------------------------

def test_seeded_sampling_is_reproducible_whatever_the_batch(hf):
    path, _, prompts, _ = hf
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, n=3, seed=7, max_tokens=12,
                            ignore_eos=True)
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    alone = llm.generate(prompts[3], params)[0]
    crowded = llm.generate(prompts[::-1], [SamplingParams(max_tokens=5)] * 1 + [params] +
                           [SamplingParams(max_tokens=9, seed=1)] * 3)[1]
    assert [o.token_ids for o in alone.outputs] == [o.token_ids for o in crowded.outputs]
    assert len({tuple(o.token_ids) for o in alone.outputs}) == 3, "samples should differ"
    assert all(len(o.token_ids) == 12 for o in alone.outputs)


def test_seeded_sampling_survives_a_crowd_and_preemption(hf):
    path, _, prompts, _ = hf
    params = SamplingParams(temperature=0.9, top_k=20, seed=11, max_tokens=15, ignore_eos=True)
    alone = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu") \
        .generate(prompts[2], params)[0].outputs[0].token_ids
    g = torch.Generator().manual_seed(5)
    others = [torch.randint(3, 256, (int(n),), generator=g).tolist()
              for n in torch.randint(1, 40, (50,), generator=g)]
    crowd = others[:25] + [prompts[2]] + others[25:]
    other = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    for blocks in (4096, 24):  # 24 blocks of 4 tokens: the crowd preempts
        llm = LLM(path, PagedKVCacheConfig(blocks * BLOCK_BYTES, BLOCK), device="cpu")
        out = llm.generate(crowd, [other] * 25 + [params] + [other] * 25)
        assert out[25].outputs[0].token_ids == alone
        assert (llm.engine.scheduler.stats.num_preemptions > 0) == (blocks == 24)


def test_n_samples_share_the_prompt_blocks(hf):
    path, _, prompts, _ = hf
    n, params = 4, dict(temperature=1.0, max_tokens=6, ignore_eos=True, seed=3)
    peaks = []
    for batch in ([prompts[4]], [prompts[4]] * n):
        llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
        outputs = llm.generate(batch, SamplingParams(n=n if len(batch) == 1 else 1, **params))
        assert sum(len(o.outputs) for o in outputs) == n
        peaks.append(llm.engine.cache_stats.peak_used_blocks)
    forked, separate = peaks
    # 46 prompt tokens fill 11 blocks once instead of n times.
    assert forked < separate
    assert separate - forked >= (n - 1) * 11


def test_bad_arguments(hf):
    path = hf[0]
    with pytest.raises(TypeError, match="cache_config"):
        LLM(path, cache_config=1 << 20, device="cpu")
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(path, device="cpu", max_num_seqs=0)
    with pytest.raises(TypeError, match="enforce_eager"):
        LLM(path, device="cpu", enforce_eager="no")
    with pytest.raises(ValueError, match="dtype"):
        LLM(path, device="cpu", dtype="float17")
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(path, device="cpu", max_model_len=0)
    with pytest.raises(ValueError, match="device"):
        LLM(path, device="tpu")
    llm = LLM(path, PagedKVCacheConfig(64 * BLOCK_BYTES, BLOCK), device="cpu")
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([[1, 2], [1, 2, 256]])
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([[]])
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[5] * 250], SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate([[5], [6]], [GREEDY])
    with pytest.raises(ValueError, match="beam_width"):
        llm.beam_search([5, 6], 0, 4)
    assert not llm.engine.has_unfinished, "a rejected request stayed queued"


# -- exception safety ----------------------------------------------------------------

@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt()], ids=repr)
@pytest.mark.parametrize("phase", ["schedule", "execute", "sample"])
def test_generate_is_exception_safe(hf, phase, exc):
    """An exception in any phase of a step aborts the call's requests; the
    engine is idle and the next generate gives the right tokens."""
    path, _, prompts, refs = hf
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    engine = llm.engine
    owner = {"schedule": engine.scheduler, "execute": engine.runner, "sample": engine.sampler}[phase]
    name = {"schedule": "schedule", "execute": "execute", "sample": "launch"}[phase]
    original, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise exc
        return original(*args, **kwargs)

    setattr(owner, name, failing)
    with pytest.raises(type(exc)):
        llm.generate(prompts, GREEDY)
    setattr(owner, name, original)
    assert not engine.has_unfinished and engine.kv_cache.num_used_blocks == 0
    assert _tokens(llm.generate(prompts, GREEDY)) == refs


def test_generate_from_two_threads(hf):
    import threading

    path, _, prompts, refs = hf
    llm = LLM(path, PagedKVCacheConfig(256 * BLOCK_BYTES, BLOCK), device="cpu")
    results = {}

    def run(i):
        results[i] = _tokens(llm.generate(prompts, GREEDY))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: refs, 1: refs}

"""The engine on a GPU (skipped without one): the CUDA prefill and decode
kernels inside the whole serving loop, against transformers on the same GPU."""
import pytest
import torch

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams, StaticKVCacheConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch.manual_seed(0)
    # head_dim 64: a size the CUDA kernels are compiled for.
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llama_cuda")
    model.save_pretrained(path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 512, (n,), generator=g).tolist() for n in (1, 9, 40, 77, 130)]
    return str(path), model.cuda(), prompts


def _greedy(model, prompt):
    out = model.generate(torch.tensor([prompt], device="cuda"), do_sample=False,
                         max_new_tokens=MAX_TOKENS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("enforce_eager", [False, True])
@pytest.mark.parametrize("cache", ["paged", "paged-preempt-chunked", "static"])
def test_greedy_float32_matches_transformers(hf, cache, enforce_eager):
    path, model, prompts = hf
    bytes_per_token = 2 * 3 * 2 * 64 * 4
    config, budget = {
        "paged": (PagedKVCacheConfig(256 * 16 * bytes_per_token), 2048),
        # 45 blocks of 4 tokens: the longest request (154 tokens) fits alone,
        # not with the others, so a running sequence gets preempted.
        "paged-preempt-chunked": (PagedKVCacheConfig(45 * 4 * bytes_per_token, 4), 32),
        "static": (StaticKVCacheConfig(2, 160), 2048),
    }[cache]
    llm = LLM(path, config, device="cuda", dtype=torch.float32, max_num_batched_tokens=budget,
              enforce_eager=enforce_eager)
    assert (llm.engine.runner.graphs is None) == enforce_eager
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    assert [o.outputs[0].token_ids for o in outputs] == [_greedy(model, p) for p in prompts]
    if cache == "paged-preempt-chunked":
        stats = llm.engine.scheduler.stats
        assert stats.num_preemptions > 0 and stats.num_partial_prefills > 0


def test_beam_search_float32_matches_transformers(hf):
    path, model, prompts = hf
    prompt, width = prompts[2], 4
    ref = model.generate(torch.tensor([prompt], device="cuda"), num_beams=width,
                         num_return_sequences=width, do_sample=False, max_new_tokens=12,
                         length_penalty=0.0, pad_token_id=0)
    llm = LLM(path, device="cuda", dtype=torch.float32)
    out = llm.beam_search(prompt, width, 12, length_penalty=0.0)
    assert [o.token_ids for o in out.outputs] == [s[len(prompt):].tolist() for s in ref]


def test_bfloat16_sampling_runs_and_is_reproducible(hf):
    path, _, prompts = hf
    llm = LLM(path, device="cuda", dtype=torch.bfloat16)
    params = SamplingParams(temperature=0.9, top_p=0.9, n=3, seed=5, max_tokens=16)
    a = llm.generate(prompts, params)
    b = llm.generate(prompts[::-1], params)[::-1]
    assert [[o.token_ids for o in r.outputs] for r in a] == \
        [[o.token_ids for o in r.outputs] for r in b]
    assert all(len(o.token_ids) == 16 for r in a for o in r.outputs)
    assert llm.engine.kv_cache.num_used_blocks == 0


def _crowd(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 512, (int(k),), generator=g).tolist()
            for k in torch.randint(1, 90, (n,), generator=g)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_gives_the_eager_tokens(hf, dtype):
    # Batch sizes between buckets (5 -> 8, 13 -> 16, 37 -> 48 with max_num_seqs 48),
    # shrinking as requests of different lengths finish.
    path, _, _ = hf
    prompts = _crowd(37, 3)
    lengths = [4 + i % 19 for i in range(37)]
    tokens = {}
    for eager in (False, True):
        llm = LLM(path, device="cuda", dtype=dtype, max_num_seqs=48, enforce_eager=eager)
        out = []
        for n in (5, 13, 37):
            params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True)
                      for m in lengths[:n]]
            out.append([o.outputs[0].token_ids for o in llm.generate(prompts[:n], params)])
        # A stop id that greedy decoding emits: some requests end early, one
        # overlapped step after their last token was launched.
        flat = [t for batch in out for ids in batch for t in ids[2:]]
        stop = max(set(flat), key=flat.count)
        params = [SamplingParams(temperature=0, max_tokens=m, stop_token_ids=[stop])
                  for m in lengths]
        out.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        tokens[eager] = out
    assert tokens[False] == tokens[True]
    assert any(len(ids) < m for ids, m in zip(tokens[True][-1], lengths)), "no request stopped"


@pytest.mark.parametrize("blocks", [4096, 40])
def test_seeded_request_alone_or_in_a_crowd_of_50(hf, blocks):
    path, _, prompts = hf
    bytes_per_block = 16 * 2 * 3 * 2 * 64 * 2
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=123, max_tokens=20,
                            ignore_eos=True)
    alone = LLM(path, device="cuda", dtype=torch.bfloat16).generate(prompts[3], params)
    crowd = _crowd(50, 4)
    other = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    llm = LLM(path, PagedKVCacheConfig(blocks * bytes_per_block), device="cuda",
              dtype=torch.bfloat16)
    out = llm.generate(crowd[:20] + [prompts[3]] + crowd[20:], [other] * 20 + [params] +
                       [other] * 30)
    assert out[20].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert (llm.engine.scheduler.stats.num_preemptions > 0) == (blocks == 40)


def test_a_kv_budget_beyond_the_gpu_is_a_clear_error(hf):
    path, _, _ = hf
    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(ValueError, match="max_kv_memory_bytes"):
        LLM(path, PagedKVCacheConfig(free + (1 << 30)), device="cuda")
    # A budget that fits leaves room for the graphs: start-up and a step work.
    llm = LLM(path, PagedKVCacheConfig(free // 2), device="cuda", max_num_seqs=64)
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3))[0].outputs[0].token_ids) == 3


def test_head_size_without_a_cuda_kernel_is_refused_at_load(tmp_path):
    # head_dim 16: the CUDA attention kernels have no such size; LLM says so at
    # load, naming the model, instead of failing in the first forward pass.
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="head_dim 16"):
        LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16)

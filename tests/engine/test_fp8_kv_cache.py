"""LLM(kv_cache_dtype=...): an fp8 KV cache end to end on a tiny random model,
twice the blocks of bf16 in the same budget, scales from the checkpoint."""
import os
import sys

import pytest
import torch

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams
from mini_paged_attn.cli import _parser
from mini_paged_attn.models.config import ModelConfig

CONFIG = ModelConfig.tiny(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                          vocab_size=512)
BUDGET = PagedKVCacheConfig(4 * 2**20)


def _llm(**kwargs) -> LLM:
    return LLM(CONFIG, BUDGET, device="cpu", dtype="bfloat16", skip_tokenizer_init=True,
               **kwargs)


@pytest.mark.parametrize("name,dtype", [("fp8", torch.float8_e4m3fn),
                                        ("fp8_e4m3", torch.float8_e4m3fn),
                                        ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_generates_with_twice_the_blocks(name, dtype):
    auto, fp8 = _llm(), _llm(kv_cache_dtype=name)
    assert auto.engine.kv_cache.kv.dtype == torch.bfloat16
    assert fp8.engine.kv_cache.kv.dtype == dtype
    assert fp8.engine.kv_cache.num_blocks == 2 * auto.engine.kv_cache.num_blocks
    assert fp8.engine.kv_cache.reserved_bytes == auto.engine.kv_cache.reserved_bytes
    prompts = [[1, 2, 3, 4, 5] * 8, [7, 8, 9], list(range(40, 110))]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = fp8.generate([{"prompt_token_ids": p} for p in prompts], params)
    for out in outs:
        ids = out.outputs[0].token_ids
        assert len(ids) == 12 and all(0 <= t < CONFIG.vocab_size for t in ids)


def test_auto_is_the_model_dtype_and_unknown_names_fail():
    assert LLM(CONFIG, BUDGET, device="cpu", dtype="float32", skip_tokenizer_init=True,
               kv_cache_dtype="auto").engine.kv_cache.kv.dtype == torch.float32
    for bad in ["fp16", "FP8", None, 8]:
        with pytest.raises(ValueError, match="kv_cache_dtype must be 'auto' or one of"):
            _llm(kv_cache_dtype=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_on_cuda_is_a_clear_error():
    with pytest.raises(NotImplementedError, match="fp8 KV cache is not implemented on CUDA"):
        LLM(CONFIG, BUDGET, device="cuda", kv_cache_dtype="fp8", skip_tokenizer_init=True)


def test_scales_come_from_the_checkpoint(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(hf).save_pretrained(tmp_path)
    # The names vLLM reads, as fp8 checkpoints (e.g. ModelOpt's) store them.
    scales = {"model.layers.0.self_attn.k_proj.k_scale": torch.tensor(0.5),
              "model.layers.0.self_attn.v_proj.v_scale": torch.tensor([0.25]),
              "model.layers.1.self_attn.k_scale": torch.tensor(2.0)}
    safetensors.save_file(scales, str(tmp_path / "kv_scales.safetensors"))
    llm = LLM(str(tmp_path), device="cpu", kv_cache_dtype="fp8", skip_tokenizer_init=True)
    got = [(a.k_scale, a.v_scale) for a in llm.engine.model.attention_layers()]
    assert got == [(0.5, 0.25), (2.0, 1.0), (1.0, 1.0)]
    out = llm.generate([{"prompt_token_ids": [3, 4, 5, 6]}],
                       SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    safetensors.save_file({"model.layers.2.self_attn.v_scale": torch.tensor(0.0)},
                          str(tmp_path / "kv_scales.safetensors"))
    with pytest.raises(ValueError, match="model.layers.2.self_attn.v_scale .* finite value > 0"):
        LLM(str(tmp_path), device="cpu", kv_cache_dtype="fp8", skip_tokenizer_init=True)


def test_fp8_greedy_tokens_mostly_agree_with_bf16():
    # A loose floor (docs/design.md records the measured agreement): the fp8
    # cache must perturb a random model's logits, not garble them.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    from fp8_agreement import greedy_agreement
    assert greedy_agreement(CONFIG, "bfloat16", "fp8", num_prompts=4, max_tokens=16) >= 0.5


def test_cli_flag():
    args = _parser().parse_args(["serve", "some/dir", "--kv-cache-dtype", "fp8_e5m2"])
    assert args.kv_cache_dtype == "fp8_e5m2"
    assert _parser().parse_args(["serve", "some/dir"]).kv_cache_dtype == "auto"

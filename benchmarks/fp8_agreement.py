"""How often greedy decoding with an fp8 KV cache gives the tokens of the
model-dtype cache, on a random model (CPU).

For each prompt both runs generate ``max_tokens`` greedy tokens; agreement is
the fraction of tokens before the two outputs first differ (after a divergence
the contexts differ, so later positions are not comparable).

    python benchmarks/fp8_agreement.py                      # bf16 and fp32 models, e4m3 and e5m2
    python benchmarks/fp8_agreement.py --prompts 32 --max-tokens 64
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams
from mini_paged_attn.models.config import ModelConfig


def _greedy(config: ModelConfig, dtype: str, kv_cache_dtype: str, prompts: List[List[int]],
            max_tokens: int) -> List[List[int]]:
    llm = LLM(config, PagedKVCacheConfig(64 * 2**20), device="cpu", dtype=dtype,
              kv_cache_dtype=kv_cache_dtype, skip_tokenizer_init=True)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outs]


def greedy_agreement(config: ModelConfig, dtype: str, kv_cache_dtype: str, num_prompts: int = 16,
                     max_tokens: int = 32, seed: int = 0) -> float:
    """Fraction of greedy tokens an ``kv_cache_dtype`` cache reproduces before the
    first divergence from the ``"auto"`` (model-dtype) cache."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, config.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(4, 200, (num_prompts,), generator=g)]
    ref = _greedy(config, dtype, "auto", prompts, max_tokens)
    got = _greedy(config, dtype, kv_cache_dtype, prompts, max_tokens)
    agreed = 0
    for a, b in zip(ref, got):
        agreed += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    return agreed / (num_prompts * max_tokens)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    config = ModelConfig.tiny()
    print(f"random ModelConfig.tiny(), {args.prompts} prompts of 4..199 tokens, "
          f"{args.max_tokens} greedy tokens each")
    for dtype in ("bfloat16", "float32"):
        for kv in ("fp8_e4m3", "fp8_e5m2"):
            share = greedy_agreement(config, dtype, kv, args.prompts, args.max_tokens)
            print(f"{dtype} model, {kv} cache vs {dtype} cache: {100 * share:.1f}% of tokens agree")


if __name__ == "__main__":
    main()

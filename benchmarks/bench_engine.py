"""Engine benchmark: LLM.generate (continuous batching over a paged KV cache)
against Hugging Face transformers ``generate`` with padded static batching, on
the same random-weight model and the same workload, in one run.

The workload is ``--num-requests`` prompts of random lengths, each asking for a
random number of greedy tokens (end-of-sequence ignored). transformers serves
them in arrival order in batches of ``--hf-batch-size``: prompts left-padded to
the batch's longest, every batch decoding until its longest request is done.
The engine gets all requests at once. Both count only the tokens requested.

    python benchmarks/bench_engine.py --device cpu                  # tiny model
    python benchmarks/bench_engine.py --device cuda --model-size 0.5b --num-requests 256
    python benchmarks/bench_engine.py --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
import tempfile
import time
from typing import Dict, List

import torch

# Llama-architecture shapes; 0.5b is Qwen2.5-0.5B's (tied embeddings), ~494M parameters.
MODEL_SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 head_dim=64, tie_word_embeddings=True),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: float32 on the CPU, bfloat16 on the GPU")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"))
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--kv-memory-gb", type=float, default=None,
                   help="engine KV budget (default: 0.25 on the CPU, 16 on the GPU)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both systems (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def save_random_model(args, dtype: torch.dtype, path: str):
    """A random-initialised transformers Llama, saved where the engine loads it."""
    import transformers

    torch.manual_seed(args.seed)
    max_len = args.prompt_len[1] + args.output_len[1]
    config = transformers.LlamaConfig(**MODEL_SIZES[args.model_size],
                                      max_position_embeddings=max(2048, max_len),
                                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    return model.to(args.device).eval()


def make_workload(args, vocab_size: int):
    rng = random.Random(args.seed)
    return [([rng.randrange(1, vocab_size) for _ in range(rng.randint(*args.prompt_len))],
             rng.randint(*args.output_len)) for _ in range(args.num_requests)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(args, path: str, dtype: torch.dtype, workload) -> float:
    from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams

    gb = args.kv_memory_gb or (0.25 if args.device == "cpu" else 16.0)
    llm = LLM(path, PagedKVCacheConfig(int(gb * 2**30)), device=args.device, dtype=dtype,
              max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in workload]
    llm.generate([p for p, _ in workload[:4]], params[:4])  # warm-up
    sync(args.device)
    start = time.perf_counter()
    outputs = llm.generate([p for p, _ in workload], params)
    sync(args.device)
    seconds = time.perf_counter() - start
    assert [len(o.outputs[0].token_ids) for o in outputs] == [n for _, n in workload]
    return seconds


@torch.inference_mode()
def run_transformers(args, model, workload) -> float:
    def generate(batch):
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.int64)
        mask = torch.zeros(len(batch), width, dtype=torch.int64)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        n = max(m for _, m in batch)
        out = model.generate(ids.to(args.device), attention_mask=mask.to(args.device),
                             do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=0)
        assert out.shape[1] == width + n

    generate(workload[:2])  # warm-up
    sync(args.device)
    start = time.perf_counter()
    for i in range(0, len(workload), args.hf_batch_size):
        generate(workload[i:i + args.hf_batch_size])
    sync(args.device)
    return time.perf_counter() - start


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else (
        torch.float32 if args.device == "cpu" else torch.bfloat16)
    with tempfile.TemporaryDirectory() as path:
        model = save_random_model(args, dtype, path)
        params = sum(p.numel() for p in model.parameters())
        workload = make_workload(args, model.config.vocab_size)
        engine_s = run_engine(args, path, dtype, workload)
        hf_s = run_transformers(args, model, workload)
    tokens = sum(n for _, n in workload)
    results = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/bench_engine.py"] + sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model_size": args.model_size, "parameters": params, "dtype": str(dtype)[6:],
        "num_requests": len(workload), "output_tokens": tokens,
        "prompt_tokens": sum(len(p) for p, _ in workload), "hf_batch_size": args.hf_batch_size,
        "systems": {name: {"seconds": s, "requests_per_s": len(workload) / s,
                           "output_tokens_per_s": tokens / s}
                    for name, s in (("mini_paged_attn LLM", engine_s),
                                    ("transformers generate", hf_s))},
    }
    print(f"{results['date']}  {results['device']}  torch {results['torch']}  "
          f"{results['model_size']} ({params / 1e6:.1f}M params, {results['dtype']})  "
          f"{len(workload)} requests, {results['prompt_tokens']} prompt + {tokens} output tokens")
    print(f"{'system':<24}{'wall s':>9}{'req/s':>9}{'out tok/s':>12}{'speed-up':>10}")
    for name, r in results["systems"].items():
        print(f"{name:<24}{r['seconds']:>9.2f}{r['requests_per_s']:>9.2f}"
              f"{r['output_tokens_per_s']:>12,.0f}{hf_s / r['seconds']:>9.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

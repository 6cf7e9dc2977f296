"""Engine benchmark: LLM.generate (continuous batching over a paged KV cache)
against Hugging Face transformers on the same random-weight model and the
same workload, in one run.

Workloads (``--workload``):
  random  ``--num-requests`` prompts of random lengths, each asking for a random
          number of greedy tokens (``--prompt-len``, ``--output-len``).
  nano    nano-vllm's bench.py exactly: 256 requests, ``random.seed(0)``, prompts
          of randint(100, 1024) ids in [0, 10000], temperature 0.6, ignore_eos,
          max_tokens randint(100, 1024) (133,966 output tokens).
  fixed   the nano prompts, 512 greedy tokens each.
  prefill the nano prompts, one greedy token each: the prefill phase (prompt
          tokens/s is its number). ``MINI_PAGED_ATTN_CUDA_PREFILL=cuda-core``
          runs it on the CUDA-core prefill kernel instead of the tensor cores.

Baselines (``--baselines``, default ``hf`` except on nano, where both are too
slow): ``hf`` is transformers ``generate`` with padded static batches of
``--hf-batch-size`` in arrival order (prompts left-padded, every batch decoding
until its longest request is done); ``hf-batch`` is transformers
``generate_batch`` (its own continuous batching over a paged cache). Only the
tokens requested count.

On a GPU it also measures a decode step at full batch (``--decode-steps``
steps once every prompt of the workload is prefilled): the median wall time
of ``LLMEngine.step`` and, from torch.profiler, the GPU-busy share (kernel
time over wall time), kernels per step and the top kernels.

    python benchmarks/bench_engine.py --device cpu                  # tiny model
    python benchmarks/bench_engine.py --device cuda --model-size 0.5b --workload nano \\
        --kv-memory-gb 40 --max-num-seqs 512 --max-num-batched-tokens 16384
    python benchmarks/bench_engine.py --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Tuple

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
    # Llama-3-8B's shape (for tensor parallelism: --tensor-parallel-size 2).
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, rope_theta=500000.0),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# (prompt token ids, temperature, max_tokens) per request.
Workload = List[Tuple[List[int], float, int]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: float32 on the CPU, bfloat16 on the GPU")
    p.add_argument("--workload", choices=["random", "nano", "fixed", "prefill"], default="random")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"))
    p.add_argument("--baselines", default=None,
                   help="comma-separated: hf, hf-batch, or none (default: hf; none on nano)")
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--kv-memory-gb", type=float, default=None,
                   help="engine KV budget (default: 0.25 on the CPU, 16 on the GPU)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=4096)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="GPUs (or CPU processes) the engine's model is split across")
    p.add_argument("--decode-steps", type=int, default=30,
                   help="decode steps to time at full batch on a GPU (0: skip)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both systems (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def make_workload(args, vocab_size: int) -> Workload:
    if args.workload == "random":
        rng = random.Random(args.seed)
        return [([rng.randrange(1, vocab_size) for _ in range(rng.randint(*args.prompt_len))],
                 0.0, rng.randint(*args.output_len)) for _ in range(args.num_requests)]
    # nano-vllm's bench.py: the module-level random stream, prompts first.
    random.seed(0)
    prompts = [[random.randint(0, 10000) for _ in range(random.randint(100, 1024))]
               for _ in range(256)]
    if args.workload in ("fixed", "prefill"):
        return [(p, 0.0, 512 if args.workload == "fixed" else 1) for p in prompts]
    return [(p, 0.6, random.randint(100, 1024)) for p in prompts]


def save_random_model(args, dtype: torch.dtype, workload: Workload, path: str):
    """A random-initialised transformers Llama, saved where the engine loads it."""
    import transformers

    torch.manual_seed(args.seed)
    max_len = max(len(p) + n for p, _, n in workload)
    config = transformers.LlamaConfig(**MODEL_SIZES[args.model_size],
                                      max_position_embeddings=max(2048, max_len),
                                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def engine_params(workload: Workload):
    from mini_paged_attn import SamplingParams

    return [SamplingParams(temperature=t, max_tokens=n, ignore_eos=True) for _, t, n in workload]


def make_llm(args, path: str, dtype: torch.dtype):
    from mini_paged_attn import LLM, PagedKVCacheConfig

    gb = args.kv_memory_gb or (0.25 if args.device == "cpu" else 16.0)
    return LLM(path, PagedKVCacheConfig(int(gb * 2**30)), device=args.device, dtype=dtype,
               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
               enforce_eager=args.enforce_eager,
               tensor_parallel_size=args.tensor_parallel_size)


def run_engine(args, llm, workload: Workload) -> float:
    params = engine_params(workload)
    llm.generate([p for p, _, _ in workload[:4]], params[:4])  # warm-up
    sync(args.device)
    start = time.perf_counter()
    outputs = llm.generate([p for p, _, _ in workload], params)
    sync(args.device)
    seconds = time.perf_counter() - start
    assert [len(o.outputs[0].token_ids) for o in outputs] == [n for _, _, n in workload]
    return seconds


def measure_decode(args, llm, workload: Workload) -> Dict:
    """A decode step of the whole workload at once, every prompt prefilled."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    requests = [engine.add_request(p, sp) for (p, _, _), sp in zip(workload,
                                                                    engine_params(workload))]
    while engine.scheduler.waiting or any(s.num_uncomputed_tokens > 1
                                          for s in engine.scheduler.running):
        engine.step()
    batch = len(engine.scheduler.running)
    for _ in range(3):
        engine.step()
    times = []
    for _ in range(args.decode_steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    profiled = 10
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(profiled):
            engine.step()
        wall = time.perf_counter() - start
    kernels: Dict[str, float] = {}
    count = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.time_range.elapsed_us()
            count += 1
    busy_us = sum(kernels.values())
    contexts = [s.num_tokens for s in engine.scheduler.running]
    for request in requests:
        engine.abort(request)
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    step_ms = statistics.median(times) * 1e3
    kernel_ms = busy_us / profiled * 1e-3
    # Busy share against the unprofiled step (the profiler slows the host down),
    # and against the profiled steps themselves.
    return {"batch": batch, "context_min": min(contexts), "context_max": max(contexts),
            "step_ms_median": step_ms, "profiled_step_ms": wall / profiled * 1e3,
            "gpu_busy": kernel_ms / step_ms, "gpu_busy_profiled": busy_us * 1e-6 / wall,
            "kernel_ms_per_step": kernel_ms,
            "kernels_per_step": count / profiled,
            "top_kernels_ms_per_step": [(name[:90], us / profiled * 1e-3) for name, us in top]}


@torch.inference_mode()
def run_transformers(args, model, workload: Workload) -> float:
    def generate(batch):
        width = max(len(p) for p, _, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.int64)
        mask = torch.zeros(len(batch), width, dtype=torch.int64)
        for i, (p, _, _) in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        n = max(m for _, _, m in batch)
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


def run_transformers_batch(args, model, workload: Workload) -> float:
    """transformers' continuous batching; every request asks for the longest
    output (one GenerationConfig serves the batch), counted as requested. Not
    under inference_mode: its generation thread updates tensors made here."""
    from transformers import GenerationConfig

    n = max(m for _, _, m in workload)
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    model.generate_batch([p for p, _, _ in workload[:2]], generation_config=config)
    sync(args.device)
    start = time.perf_counter()
    outputs = model.generate_batch([p for p, _, _ in workload], generation_config=config)
    sync(args.device)
    seconds = time.perf_counter() - start
    assert all(len(o.generated_tokens) >= m for o, (_, _, m) in zip(outputs.values(), workload))
    return seconds


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else (
        torch.float32 if args.device == "cpu" else torch.bfloat16)
    baselines = args.baselines or ("none" if args.workload == "nano" else "hf")
    baselines = [b for b in baselines.split(",") if b != "none"]
    seconds: Dict[str, float] = {}
    decode = None
    with tempfile.TemporaryDirectory() as path:
        vocab = MODEL_SIZES[args.model_size]["vocab_size"]
        workload = make_workload(args, vocab)
        model = save_random_model(args, dtype, workload, path)
        params = sum(p.numel() for p in model.parameters())
        llm = make_llm(args, path, dtype)
        seconds["mini_paged_attn LLM"] = run_engine(args, llm, workload)
        if args.device == "cuda" and args.decode_steps:
            decode = measure_decode(args, llm, workload)
        del llm
        model = model.to(args.device).eval()
        if "hf" in baselines:
            seconds["transformers generate"] = run_transformers(args, model, workload)
        if "hf-batch" in baselines:
            try:
                seconds["transformers generate_batch"] = run_transformers_batch(args, model,
                                                                                workload)
            except Exception as e:  # an API change must not lose the other results
                print(f"transformers generate_batch failed: {e!r}")
    tokens = sum(n for _, _, n in workload)
    prompt_tokens = sum(len(p) for p, _, _ in workload)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "command": " ".join(["python", "benchmarks/bench_engine.py"] + sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model_size": args.model_size, "parameters": params, "dtype": str(dtype)[6:],
        "workload": args.workload, "enforce_eager": args.enforce_eager,
        "num_requests": len(workload), "output_tokens": tokens,
        "prompt_tokens": prompt_tokens, "hf_batch_size": args.hf_batch_size,
        "cuda_prefill_kernel": os.environ.get("MINI_PAGED_ATTN_CUDA_PREFILL", "auto"),
        "systems": {name: {"seconds": s, "requests_per_s": len(workload) / s,
                           "output_tokens_per_s": tokens / s,
                           "prompt_tokens_per_s": prompt_tokens / s}
                    for name, s in seconds.items()},
        "decode_step": decode,
    }
    print(f"{results['date']}  {results['device']}  torch {results['torch']}  "
          f"{results['model_size']} ({params / 1e6:.1f}M params, {results['dtype']})  "
          f"{args.workload}: {len(workload)} requests, {results['prompt_tokens']} prompt + "
          f"{tokens} output tokens")
    slowest = max(seconds.values())
    print(f"{'system':<30}{'wall s':>9}{'req/s':>9}{'out tok/s':>12}{'prompt tok/s':>14}"
          f"{'vs slowest':>11}")
    for name, r in results["systems"].items():
        print(f"{name:<30}{r['seconds']:>9.2f}{r['requests_per_s']:>9.2f}"
              f"{r['output_tokens_per_s']:>12,.0f}{r['prompt_tokens_per_s']:>14,.0f}"
              f"{slowest / r['seconds']:>10.2f}x")
    if decode:
        print(f"decode step at batch {decode['batch']} (contexts {decode['context_min']}-"
              f"{decode['context_max']}): {decode['step_ms_median']:.2f} ms median, GPU busy "
              f"{decode['gpu_busy']:.0%} ({decode['kernel_ms_per_step']:.2f} ms of kernels, "
              f"{decode['kernels_per_step']:.0f} kernels a step; {decode['gpu_busy_profiled']:.0%}"
              f" of the profiled steps, {decode['profiled_step_ms']:.2f} ms each)")
        for name, ms in decode["top_kernels_ms_per_step"]:
            print(f"  {ms:8.3f} ms  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

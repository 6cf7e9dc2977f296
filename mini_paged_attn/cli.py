"""``python -m mini_paged_attn serve MODEL_DIR`` (also the ``mini-paged-attn``
console script): an OpenAI-compatible server for a checkpoint directory."""
from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from ._C import PagedKVCacheConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-paged-attn")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    s.add_argument("model", help="checkpoint directory (config.json, *.safetensors, tokenizer)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    s.add_argument("--served-model-name", default=None, help="default: the directory's name")
    s.add_argument("--device", default=None)
    s.add_argument("--dtype", default=None)
    s.add_argument("--kv-cache-dtype", default="auto",
                   help="auto (the model's dtype), fp8, fp8_e4m3 or fp8_e5m2 (CPU only for now)")
    s.add_argument("--kv-cache-memory-gb", type=float, default=None,
                   help="KV-cache budget (default: the LLM's)")
    s.add_argument("--max-num-seqs", type=int, default=256)
    s.add_argument("--max-num-batched-tokens", type=int, default=2048)
    s.add_argument("--max-model-len", type=int, default=None)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="split the model across N GPUs (or N CPU processes)")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    try:
        import uvicorn

        from .server.api_server import build_app
    except ImportError as e:
        raise SystemExit(f"serving needs fastapi, uvicorn and prometheus-client "
                         f"(pip install 'mini_paged_attn[serve]'): {e}")
    import os

    from .engine.async_llm import AsyncLLM
    from .llm import LLM

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cache = None if args.kv_cache_memory_gb is None else \
        PagedKVCacheConfig(int(args.kv_cache_memory_gb * 2**30))
    llm = LLM(args.model, cache, device=args.device, dtype=args.dtype,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              max_model_len=args.max_model_len, kv_cache_dtype=args.kv_cache_dtype,
              tensor_parallel_size=args.tensor_parallel_size)
    kv = llm.engine.kv_cache
    logging.info("KV cache: %d blocks of %d tokens (%d tokens), max_model_len %d",
                 kv.num_blocks, kv.block_size, kv.num_blocks * kv.block_size,
                 llm.engine.max_model_len)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    server = AsyncLLM(llm)
    try:
        uvicorn.run(build_app(server, name, args.api_key), host=args.host, port=args.port,
                    log_level="info")
    finally:
        server.shutdown()
        llm.close()

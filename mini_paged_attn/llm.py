"""LLM: the offline-inference entry point, ``LLM(...).generate(prompts, params)``."""
from __future__ import annotations

import importlib.util
import sys
import threading
import warnings
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ._C import PagedKVCacheConfig, StaticKVCacheConfig
from .cache.kv_cache import KVCache
from .cache.paged_kv_cache import PagedKVCache
from .cache.sizing import kv_bytes_per_token, num_blocks_for, resolve_kv_cache_dtype
from .cache.slotted_kv_cache import SlottedKVCache
from .checks import check_int, positive
from .engine.beam_search import beam_search
from .engine.llm_engine import LLMEngine
from .engine.memory import check_kv_budget
from .engine.prompts import prompt_list, resolve, token_ids
from .engine.request import Request
from .models.config import ModelConfig
from .models.loader import load_model
from .ops import cuda_head_sizes
from .outputs import RequestOutput
from .parallel.group import kv_heads_per_rank
from .parallel.workers import start as start_tensor_parallel
from .sampling_params import SamplingParams
from .tokenizer import load_tokenizer

DEFAULT_KV_MEMORY_BYTES = 256 * 2**20


class LLM:
    """A Llama-architecture model served with continuous batching.

    Args:
        model: a local Hugging Face checkpoint directory (``config.json`` and
            ``*.safetensors``), or a :class:`ModelConfig` for random weights
            (``ModelConfig.tiny()`` when None).
        cache_config: ``PagedKVCacheConfig`` (a byte budget cut into shared
            blocks; 256 MiB by default) or ``StaticKVCacheConfig`` (one
            contiguous slot of ``max_cache_len`` tokens per sequence).
        device: "cuda" when available, else "cpu", by default.
        dtype: the model's and cache's dtype (a torch.dtype or its name; the
            checkpoint's by default).
        kv_cache_dtype: "auto" (the model's dtype), or "fp8" / "fp8_e4m3"
            (float8_e4m3fn) or "fp8_e5m2": half the bytes of a 16-bit cache, so
            twice the blocks in the same budget (CPU only for now); the scales
            are the checkpoint's ``k_scale`` / ``v_scale`` when it has them, else 1.0.
        max_num_seqs: sequences running at once.
        max_num_batched_tokens: tokens computed per step; longer prompts are
            prefilled in chunks.
        max_model_len: longest prompt + output (the model's context by default;
            at most its ``sliding_window``, within which full attention is exact).
        seed: seed of random weights and of unseeded sampling.
        enforce_eager: on a GPU, run decode steps eagerly instead of replaying
            CUDA graphs (captured at start-up, one per batch-size bucket).
        tokenizer: a tokenizer directory (by default the checkpoint's, when it
            has tokenizer files); text prompts, output text and stop strings use it.
        skip_tokenizer_init: load no tokenizer: token ids in and out only.
        tensor_parallel_size: ranks the model is split across (Megatron-style:
            heads, MLP features and vocabulary). N > 1 starts N - 1 worker
            processes (spawned: a script needs ``if __name__ == "__main__"``),
            one per GPU from ``device`` on (NCCL), or on the CPU (gloo); call
            :meth:`close` (or leave a ``with`` block) to stop them.

    ``generate``, ``stream`` and ``beam_search`` are serialised by a lock (a
    second thread waits for the first) and are exception-safe: if anything
    raises during a call, ``KeyboardInterrupt`` included, that call's requests
    are aborted and the engine is idle and usable again.
    """

    def __init__(self, model: Union[str, ModelConfig, None] = None,
                 cache_config: Union[PagedKVCacheConfig, StaticKVCacheConfig, None] = None, *,
                 device: Union[str, torch.device, None] = None,
                 dtype: Optional[torch.dtype] = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, max_model_len: Optional[int] = None,
                 seed: int = 0, enforce_eager: bool = False, tokenizer: Optional[str] = None,
                 skip_tokenizer_init: bool = False, kv_cache_dtype: str = "auto",
                 tensor_parallel_size: int = 1):
        # Tensor-parallel workers build their LLM from these same arguments
        # (every one, so an argument added later reaches them too).
        worker_args = {k: v for k, v in locals().items()
                       if k not in ("self", "device", "tokenizer", "skip_tokenizer_init")}
        self._workers = None
        max_num_seqs = positive("max_num_seqs", max_num_seqs)
        max_num_batched_tokens = positive("max_num_batched_tokens", max_num_batched_tokens)
        if max_model_len is not None:
            max_model_len = positive("max_model_len", max_model_len)
        seed = check_int("seed", seed)
        if not isinstance(enforce_eager, bool):
            raise TypeError(f"enforce_eager must be a bool, got {enforce_eager!r}")
        dtype = _dtype(dtype)
        device = _device(device)
        self.tokenizer = None if skip_tokenizer_init else _tokenizer(model, tokenizer)
        tp, self._workers = start_tensor_parallel(tensor_parallel_size, model, device,
                                                  worker_args)
        try:
            self.model = load_model(ModelConfig.tiny() if model is None else model, device, dtype,
                                    seed, tp)
            config = self.model.config
            model_dtype = next(self.model.parameters()).dtype
            if device.type == "cuda" and config.head_dim not in cuda_head_sizes(model_dtype):
                raise ValueError(f"model: head_dim {config.head_dim} has no CUDA attention "
                                 f"kernel (supported in {model_dtype}: "
                                 f"{', '.join(map(str, cuda_head_sizes(model_dtype)))})")
            max_model_len = min(max_model_len or config.max_position_embeddings,
                                config.max_position_embeddings)
            if config.sliding_window is not None and max_model_len > config.sliding_window:
                # Within the window full attention is exact; past it the kernels
                # would attend to positions the model must not see.
                warnings.warn(f"max_model_len is capped at the model's sliding_window "
                              f"({config.sliding_window}): sliding-window attention is not "
                              f"implemented", stacklevel=2)
                max_model_len = config.sliding_window
            cache_config = cache_config or PagedKVCacheConfig(DEFAULT_KV_MEMORY_BYTES)
            # This rank's KV heads: the cache holds those only.
            kv_heads = kv_heads_per_rank(config.num_key_value_heads, tp.size)
            dims = (config.num_hidden_layers, kv_heads, config.head_dim,
                    resolve_kv_cache_dtype(kv_cache_dtype, model_dtype, device), device)
            if not isinstance(cache_config, (PagedKVCacheConfig, StaticKVCacheConfig)):
                raise TypeError(f"cache_config must be a PagedKVCacheConfig or "
                                f"StaticKVCacheConfig, got {type(cache_config).__name__}")
            if device.type == "cuda":
                check_kv_budget(self.model, _kv_bytes(cache_config, dims, max_model_len),
                                max_num_batched_tokens, max_num_seqs, max_model_len,
                                graphs=not enforce_eager)
            kv_cache: KVCache
            if isinstance(cache_config, PagedKVCacheConfig):
                kv_cache = PagedKVCache(cache_config, *dims, max_num_seqs, max_model_len)
            else:
                kv_cache = SlottedKVCache(cache_config, *dims, max_model_len)
                max_num_seqs = min(max_num_seqs, cache_config.max_batch_size())
            self.engine = LLMEngine(self.model, kv_cache, max_num_seqs, max_num_batched_tokens,
                                    min(max_model_len, kv_cache.max_seq_len), seed, enforce_eager,
                                    self.tokenizer, self._workers)
            if self._workers is not None:
                self._workers.wait_ready()
        except BaseException:
            self.close()
            raise
        # generate, stream and beam_search hold it: a second thread waits for
        # the first. Re-entrant, so a call made while iterating a stream on the
        # same thread runs the engine (the stream's requests included) instead
        # of waiting for itself.
        self._lock = threading.RLock()

    def generate(self, prompts: Any,
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: Optional[bool] = None) -> List[RequestOutput]:
        """Completes every prompt (text, with a tokenizer; ``{"prompt": text}`` or
        ``{"prompt_token_ids": ids}``; token ids as a list, tuple, 1-D tensor or
        array; or a list of any of these); one ``RequestOutput`` per prompt, in
        order, ``outputs[j]`` holding sample ``j``'s ids (and text). A tqdm bar
        counts finished requests when ``use_tqdm`` (default: when stderr is a
        terminal and tqdm is installed)."""
        jobs = self._jobs(prompts, sampling_params)
        with self._lock:
            requests: List[Request] = []
            bar = _progress_bar(len(jobs), use_tqdm)
            try:
                requests = self._add(jobs)
                while self.engine.has_unfinished:
                    done = self.engine.step()
                    if bar is not None:
                        bar.update(len(done))
            except BaseException:
                # All or nothing: whatever raised (a bad prompt, an error inside
                # a step, KeyboardInterrupt), this call's requests leave the
                # engine and free their blocks, and the engine is idle again.
                for request in requests:
                    self.engine.abort(request)
                raise
            finally:
                if bar is not None:
                    bar.close()
            return [r.output() for r in requests]

    def stream(self, prompts: Any,
               sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None
               ) -> Iterator[RequestOutput]:
        """Like :meth:`generate`, but yields a request's output (cumulative: all
        its tokens and text so far) each time it gains tokens, the last one with
        ``finished`` set. Leaving the loop early (``break``, an exception)
        aborts this call's unfinished requests and frees their blocks. The
        engine is held until the iteration ends."""
        jobs = self._jobs(prompts, sampling_params)
        with self._lock:
            requests: List[Request] = []
            try:
                requests = self._add(jobs)
                sent = {r.request_id: (-1, False) for r in requests}

                def changed():
                    for r in requests:
                        if r.progress != sent[r.request_id]:
                            sent[r.request_id] = r.progress
                            yield r.output()

                while True:
                    yield from changed()
                    # Checked after the yields: a call on this thread may have
                    # run the engine while this generator was suspended.
                    if not self.engine.has_unfinished:
                        break
                    self.engine.step()
                yield from changed()
            finally:
                for r in requests:
                    if not r.finished:
                        self.engine.abort(r)

    def _jobs(self, prompts: Any, sampling_params) -> List[Tuple[Any, Optional[str],
                                                                 SamplingParams]]:
        """(token ids, text, params) per prompt, checked before anything runs."""
        prompts = [resolve(p, self.tokenizer) for p in prompt_list(prompts)]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} "
                             f"prompts")
        return [(ids, text, sp) for (ids, text), sp in zip(prompts, sampling_params)]

    def _add(self, jobs) -> List[Request]:
        """Queues the jobs; if one is refused, none stays queued."""
        requests: List[Request] = []
        try:
            for ids, text, sp in jobs:
                requests.append(self.engine.add_request(ids, sp))
                requests[-1].prompt = text
        except BaseException:
            for request in requests:
                self.engine.abort(request)
            raise
        return requests

    def close(self) -> None:
        """Stops the tensor-parallel workers (nothing to do at tp=1); a
        tensor-parallel LLM cannot run after it. Also on ``del`` and at exit."""
        if getattr(self, "_workers", None) is not None:
            self._workers.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def get_tokenizer(self):
        """The tokenizer that text prompts and outputs go through (None: ids only)."""
        return self.tokenizer

    def chat(self, messages: Union[List[dict], Sequence[List[dict]]],
             sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
             add_generation_prompt: bool = True) -> List[RequestOutput]:
        """Completes one conversation (a list of ``{"role", "content"}`` dicts) or
        a list of them, each rendered by the tokenizer's chat template."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer with a chat template, and this LLM has none")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            text = self.tokenizer.apply_chat_template(
                list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt)
            # The template writes the special tokens it wants (a BOS among them).
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            prompts.append({"prompt_token_ids": ids, "prompt": text})
        return self.generate(prompts, sampling_params)

    def beam_search(self, prompt: List[int], beam_width: int, max_tokens: int,
                    length_penalty: float = 1.0, ignore_eos: bool = False) -> RequestOutput:
        """The ``beam_width`` best continuations of ``prompt`` (token ids), best
        first in ``outputs``, scored as transformers' beam search scores them."""
        beam_width, max_tokens = positive("beam_width", beam_width), positive("max_tokens",
                                                                              max_tokens)
        stop = frozenset() if ignore_eos else self.engine.eos_token_ids
        with self._lock:
            if self.engine.has_unfinished:
                raise RuntimeError("beam_search needs an idle engine")
            try:
                prompt = token_ids(prompt, self.engine.model.config.vocab_size)
                return beam_search(self.engine, prompt, beam_width, max_tokens,
                                   float(length_penalty), stop)
            except BaseException:
                self.engine.abort_all()  # the engine was idle: everything is this call's
                raise


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float": torch.float32, "half": torch.float16}


def _dtype(dtype) -> Optional[torch.dtype]:
    """None (the checkpoint's), a float torch.dtype, or its name."""
    if dtype is None or dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be None, float32, float16 or bfloat16 (a torch.dtype or its "
                     f"name), got {dtype!r}")


def _progress_bar(total: int, use_tqdm: Optional[bool]):
    """A tqdm bar over ``total`` requests, or None."""
    if use_tqdm is None:
        use_tqdm = sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None
    if not use_tqdm:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="generate", unit="req")


def _tokenizer(model, tokenizer: Optional[str]):
    """``tokenizer``'s directory, or the checkpoint's when it holds one, loaded."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if isinstance(model, str):
        try:
            return load_tokenizer(model)
        except FileNotFoundError:
            return None  # a checkpoint without tokenizer files: token ids only
    return None


def _device(device) -> torch.device:
    """The default device (cuda when available), or ``device`` if torch can use it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device: {e}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but torch sees no CUDA GPU")
    return device


def _kv_bytes(cache_config, dims, max_model_len: int) -> int:
    """Bytes the KV cache of ``cache_config`` takes for a model of ``dims``."""
    num_layers, num_kv_heads, head_dim, dtype, _ = dims
    if isinstance(cache_config, PagedKVCacheConfig):
        return num_blocks_for(cache_config, num_kv_heads, head_dim, dtype, num_layers) * \
            cache_config.block_size() * kv_bytes_per_token(num_kv_heads, head_dim, dtype,
                                                           num_layers)
    slot_len = -(-min(cache_config.max_cache_len(), max_model_len) // 16) * 16
    return cache_config.max_batch_size() * slot_len * kv_bytes_per_token(
        num_kv_heads, head_dim, dtype, num_layers)

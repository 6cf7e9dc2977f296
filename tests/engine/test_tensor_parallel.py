"""Tensor parallelism end to end on the CPU: two processes over gloo give
exactly the greedy tokens of one, in float32, for every model family (the KV
heads of a GQA model fewer than the ranks, tied embeddings, Qwen2's biases,
Qwen3's q/k norms), through chunked prefill and copy-on-write forks; a worker
that fails is an error in the driver, and close() (or KeyboardInterrupt
during a step) leaves no process behind. Each test's LLMs run one after the
other in this process, so the process group is left and joined again too."""
import multiprocessing as mp
import os

import pytest

from mini_paged_attn import LLM, PagedKVCacheConfig, SamplingParams, StaticKVCacheConfig
from mini_paged_attn.parallel.workers import WorkerError

transformers = pytest.importorskip("transformers")
from hf_checkpoint import save_random_checkpoint  # noqa: E402  (after the skip)

FAMILIES = {
    # 1 KV head for 2 ranks (replicated), tied embeddings, a vocabulary of odd size.
    "llama-gqa1-tied": ("Llama", dict(num_key_value_heads=1, tie_word_embeddings=True,
                                      vocab_size=127)),
    "qwen2-bias": ("Qwen2", dict(num_key_value_heads=2)),
    "qwen3-qk-norm": ("Qwen3", dict(num_key_value_heads=1, head_dim=32)),
    "mistral": ("Mistral", dict(num_key_value_heads=2, sliding_window=None)),
}
PROMPTS = [[3, 17, 5, 99, 42, 8], list(range(10, 60)), [77], [5, 6, 7, 8] * 5]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _checkpoint(path, family, overrides):
    save_random_checkpoint(path, family, **{"max_position_embeddings": 256, **overrides})
    return str(path)


def _run(llm, prompts, params):
    """Every completion's tokens, and their log-probabilities (which would
    show a wrong cache long before the tokens change)."""
    outputs = [c for o in llm.generate(prompts, params) for c in o.outputs]
    return [c.token_ids for c in outputs], [c.cumulative_logprob for c in outputs]


def _same(got, expected):
    assert got[0] == expected[0]
    assert got[1] == pytest.approx(expected[1], abs=1e-4)


def _workers_gone(llm):
    procs = llm._workers.procs
    return all(not p.is_alive() for p in procs) and not mp.active_children()


@pytest.mark.parametrize("name", FAMILIES)
def test_tp2_greedy_tokens_equal_tp1(tmp_path, name):
    path = _checkpoint(tmp_path, *FAMILIES[name])
    # Small blocks and steps: chunked prefill, several blocks per sequence; n=2
    # forks share the prompt's last block and copy it on write.
    args = dict(cache_config=PagedKVCacheConfig(1 << 20, 4), device="cpu",
                max_num_batched_tokens=32, max_num_seqs=8)
    cases = [(PROMPTS, GREEDY), (PROMPTS[:2], SamplingParams(n=2, temperature=0, max_tokens=6,
                                                             ignore_eos=True))]
    single = LLM(path, **args)
    expected = [_run(single, p, s) for p, s in cases]
    with LLM(path, **args, tensor_parallel_size=2) as llm:
        for (p, s), want in zip(cases, expected):
            _same(_run(llm, p, s), want)
        assert llm.engine.kv_cache.kv.shape[-2] == max(1, single.engine.kv_cache.kv.shape[-2] // 2)
    assert _workers_gone(llm)


def test_tp2_static_cache_and_random_weights():
    """A random-weight model (each rank takes its part of the same matrices)
    in the slotted cache, whose forks copy the parent's slot."""
    from mini_paged_attn.models import ModelConfig
    config = ModelConfig.tiny(num_hidden_layers=2, vocab_size=301)
    args = dict(cache_config=StaticKVCacheConfig(4, 64), device="cpu")
    params = SamplingParams(n=2, temperature=0, max_tokens=5, ignore_eos=True)
    expected = _run(LLM(config, **args), PROMPTS[:2], params)
    with LLM(config, **args, tensor_parallel_size=2) as llm:
        _same(_run(llm, PROMPTS[:2], params), expected)


def test_worker_failure_is_an_error_in_the_driver(tmp_path):
    path = _checkpoint(tmp_path, *FAMILIES["mistral"])
    llm = LLM(path, device="cpu", tensor_parallel_size=2)
    # A step the worker cannot run: it reports the error and exits.
    llm._workers.send(("no-such-step", (), None))
    with pytest.raises(WorkerError, match="worker 1 failed:(.|\n)*Traceback"):
        llm.generate(PROMPTS, GREEDY)
    assert _workers_gone(llm)
    with pytest.raises(WorkerError, match="shut down"):
        llm.generate(PROMPTS, GREEDY)
    llm.close()  # idempotent


def test_killed_worker_and_close(tmp_path):
    path = _checkpoint(tmp_path, *FAMILIES["mistral"])
    llm = LLM(path, device="cpu", tensor_parallel_size=2)
    assert len(_run(llm, PROMPTS[:1], GREEDY)[0][0]) == 12
    os.kill(llm._workers.procs[0].pid, 9)
    llm._workers.procs[0].join(10)
    with pytest.raises(WorkerError, match="exited with code -9"):
        llm.generate(PROMPTS, GREEDY)
    assert _workers_gone(llm)


def test_close_leaves_no_process(tmp_path):
    llm = LLM(cache_config=PagedKVCacheConfig(1 << 20), device="cpu", tensor_parallel_size=2)
    pids = [p.pid for p in llm._workers.procs]
    llm.close()
    assert _workers_gone(llm)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_keyboard_interrupt_mid_step_stops_the_workers(monkeypatch):
    """The worker is left inside the step's collectives: the group shuts down."""
    llm = LLM(cache_config=PagedKVCacheConfig(1 << 20), device="cpu", tensor_parallel_size=2)

    def interrupted(inputs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llm.engine.runner, "run_eager", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(PROMPTS, GREEDY)
    assert _workers_gone(llm)


@pytest.mark.parametrize("size,match", [(0, "int >= 1"), ("2", "int >= 1"), (True, "int >= 1"),
                                        (3, "must divide num_attention_heads")])
def test_bad_tensor_parallel_size(size, match):
    with pytest.raises(ValueError, match=f"tensor_parallel_size.*{match}"):
        LLM(device="cpu", tensor_parallel_size=size)

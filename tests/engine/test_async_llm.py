"""AsyncLLM: many callers (threads and asyncio tasks) share one engine loop,
each receiving exactly its own tokens; closing a stream aborts its request."""
import asyncio
import threading

import pytest

from mini_paged_attn import LLM, SamplingParams
from mini_paged_attn.engine.async_llm import AsyncLLM
from mini_paged_attn.models.config import ModelConfig

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
PROMPTS = [[5 + i, 6, 7 + i % 3] for i in range(12)]


@pytest.fixture(scope="module")
def served():
    llm = LLM(ModelConfig.tiny(), device="cpu", max_num_seqs=16)
    reference = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
    server = AsyncLLM(llm)
    yield server, reference
    server.shutdown()


def test_threads_get_their_own_tokens(served):
    server, reference = served
    results = [None] * len(PROMPTS)

    def client(i):
        outs = list(server.submit(PROMPTS[i], GREEDY))
        assert outs[-1].finished
        results[i] = outs[-1].outputs[0].token_ids

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == reference


def test_asyncio_tasks_get_their_own_tokens(served):
    server, reference = served

    async def client(i):
        last = None
        async for out in server.submit(PROMPTS[i], GREEDY):
            last = out
        return last.outputs[0].token_ids

    async def main():
        return await asyncio.gather(*(client(i) for i in range(len(PROMPTS))))

    assert asyncio.run(main()) == reference


def test_closing_a_stream_aborts_its_request(served):
    server, reference = served
    stream = server.submit([1, 2, 3], SamplingParams(temperature=0, max_tokens=200,
                                                     ignore_eos=True))
    for out in stream:
        if out.outputs[0].token_ids:
            break
    stream.close()
    # The next request runs to completion with the aborted one gone.
    assert list(server.submit(PROMPTS[0], GREEDY))[-1].outputs[0].token_ids == reference[0]
    assert not server.engine.has_unfinished


def test_bad_input_raises_in_the_caller(served):
    server, _ = served
    with pytest.raises(ValueError, match="max_model_len"):
        server.submit([1] * 10, SamplingParams(max_tokens=10**6))
    with pytest.raises(ValueError, match="one prompt"):
        server.submit([[1], [2]], GREEDY)
    assert list(server.submit(PROMPTS[1], GREEDY))[-1].finished

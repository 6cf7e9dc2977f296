"""The OpenAI-compatible server, live on localhost, driven by the official
openai client: completions, chat, logprobs, streaming, concurrent streaming clients
(each exactly its own greedy tokens), a disconnect freeing its request,
400s for bad requests while the server keeps serving, and /metrics."""
import asyncio
import socket
import threading
import time

import pytest

from mini_paged_attn import LLM, SamplingParams
from text_checkpoint import make_text_checkpoint

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from mini_paged_attn.engine.async_llm import AsyncLLM  # noqa: E402
from mini_paged_attn.server.api_server import build_app  # noqa: E402

MODEL = "tiny-bpe"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = make_text_checkpoint(tmp_path_factory.mktemp("served"))
    llm = LLM(path, device="cpu", max_num_seqs=64)
    server = AsyncLLM(llm)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(build_app(server, MODEL), host="127.0.0.1", port=port,
                            log_level="warning")
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield base, llm, server
    http.should_exit = True
    thread.join(timeout=10)
    server.shutdown()


def _client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)


def test_models_completions_and_chat(live):
    base, llm, _ = live
    client = _client(base)
    assert [m.id for m in client.models.list().data] == [MODEL]
    got = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=8,
                                    temperature=0)
    ref = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=8))[0]
    assert got.choices[0].text == ref.outputs[0].text
    assert got.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert got.usage.completion_tokens == len(ref.outputs[0].token_ids)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=6,
        temperature=0)
    ref = llm.chat([{"role": "user", "content": "hello"}],
                   SamplingParams(temperature=0, max_tokens=6))[0]
    assert chat.choices[0].message.content == ref.outputs[0].text


def test_prompt_logprobs(live):
    base, llm, _ = live
    client = _client(base)
    got = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=2,
                                    temperature=0, extra_body={"prompt_logprobs": 2})
    ref = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=2,
                                                         prompt_logprobs=2))[0]
    served = got.choices[0].prompt_logprobs
    assert served[0] is None and len(served) == len(ref.prompt_token_ids)
    tok = llm.get_tokenizer()
    for entry, expected in zip(served[1:], ref.prompt_logprobs[1:]):
        assert {int(t): e["logprob"] for t, e in entry.items()} == pytest.approx(expected)
        assert all(e["decoded_token"] == tok.decode([int(t)]) for t, e in entry.items())
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=2,
        extra_body={"prompt_logprobs": 0})
    assert chat.prompt_logprobs[0] is None and all(len(e) == 1 for e in chat.prompt_logprobs[1:])


def test_completion_and_chat_logprobs(live):
    # The engine's logprobs=2 in OpenAI's shapes, whole and streamed.
    base, llm, _ = live
    client = _client(base)
    tok = llm.get_tokenizer()
    ref = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=5,
                                                         logprobs=2, ignore_eos=True))[0].outputs[0]
    got = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=5,
                                    temperature=0, logprobs=2,
                                    extra_body={"ignore_eos": True}).choices[0].logprobs
    assert got.tokens == [tok.decode([t]) for t in ref.token_ids]
    assert got.token_logprobs == pytest.approx([e[t] for t, e in zip(ref.token_ids, ref.logprobs)])
    for top, entry in zip(got.top_logprobs, ref.logprobs):
        assert top == pytest.approx({tok.decode([t]): v for t, v in entry.items()})
    assert got.text_offset == [sum(len(s) for s in got.tokens[:i]) for i in range(5)]

    stream = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=5,
                                       temperature=0, logprobs=2, stream=True,
                                       extra_body={"ignore_eos": True, "prompt_logprobs": 1})
    chunks = [c.choices[0] for c in stream]
    streamed = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    assert streamed == got.tokens
    assert [o for c in chunks if c.logprobs for o in c.logprobs.text_offset] == got.text_offset
    first = chunks[0].model_extra["prompt_logprobs"]
    assert first[0] is None and all(len(e) in (1, 2) for e in first[1:])
    assert all("prompt_logprobs" not in (c.model_extra or {}) for c in chunks[1:])

    messages = [{"role": "user", "content": "hello"}]
    ref = llm.chat(messages, SamplingParams(temperature=0, max_tokens=4, logprobs=3,
                                            ignore_eos=True))[0].outputs[0]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=3,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [tok.decode([t]) for t in ref.token_ids]
    for c, t, entry in zip(content, ref.token_ids, ref.logprobs):
        assert c.logprob == pytest.approx(entry[t]) and c.bytes == list(c.token.encode())
        best = sorted(entry.values(), reverse=True)[:3]
        assert [a.logprob for a in c.top_logprobs] == pytest.approx(best)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4,
                                            temperature=0, logprobs=True, stream=True,
                                            extra_body={"ignore_eos": True})
    streamed = [e for c in stream if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [c.token for c in content]
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs unset: none
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_concurrent_streaming_clients_get_their_own_tokens(live):
    base, llm, _ = live
    prompts = [f"a b c {i}" for i in range(64)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    reference = [o.outputs[0].text for o in llm.generate(prompts, params)]

    async def one(client, prompt):
        stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                                 temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True})
        return "".join([c.choices[0].text async for c in stream])

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(main()) == reference


def test_a_disconnect_frees_the_request(live):
    base, _, server = live
    with httpx.stream("POST", f"{base}/v1/completions",
                      json={"model": MODEL, "prompt": "The", "max_tokens": 200,
                            "temperature": 0, "stream": True, "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk: the connection closes
    for _ in range(200):
        if not server.engine.has_unfinished:
            break
        time.sleep(0.05)
    assert not server.engine.has_unfinished


@pytest.mark.parametrize("body", [
    {"model": "other", "prompt": "x"},
    {"model": MODEL, "prompt": "x", "temperature": -1},
    {"model": MODEL, "prompt": "x", "max_tokens": 10**6},
    {"model": MODEL, "prompt": "x", "prompt_logprobs": -1},
    {"model": MODEL, "prompt": "x", "logprobs": -2},
    {"model": MODEL},
    {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
], ids=["unknown-model", "bad-temperature", "too-long", "bad-prompt-logprobs", "bad-logprobs",
        "no-prompt", "top-logprobs-without-logprobs"])
def test_bad_requests_are_400_and_the_server_goes_on(live, body):
    base, _, _ = live
    path = "chat/completions" if "messages" in body else "completions"
    r = httpx.post(f"{base}/v1/{path}", json=body)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{base}/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    ok = httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2})
    assert ok.status_code == 200


def test_metrics(live):
    base, _, _ = live
    text = httpx.get(f"{base}/metrics").text
    for name in ("mpa_requests_running", "mpa_kv_blocks_total", "mpa_generation_tokens_total",
                 "mpa_time_to_first_token_seconds_bucket", "mpa_prefix_cache_hit_rate"):
        assert name in text


def test_api_key(live):
    from fastapi.testclient import TestClient

    _, _, server = live
    client = TestClient(build_app(server, MODEL, api_key="sesame"))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
    assert client.get("/health").status_code == 200  # no key needed

"""An OpenAI-compatible HTTP server over one engine (FastAPI + uvicorn, as
vLLM's): ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (with ``stream: true`` as server-sent events
ending in ``data: [DONE]``; ``logprobs`` as OpenAI's, ``prompt_logprobs`` as
vLLM's, in streams too) and ``GET /metrics`` (Prometheus text).

Every connection's requests go to one :class:`AsyncLLM`, so clients share
engine steps. A malformed request is a 400 with an OpenAI-style error; a
client that disconnects mid-stream has its request aborted.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Union

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine.async_llm import AsyncLLM
from ..sampling_params import SamplingParams
from . import logprobs as lp
from .metrics import Metrics


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    max_tokens: Optional[int] = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    n: int = 1
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # vLLM's extra parameters.
    ignore_eos: bool = False
    min_tokens: int = 0
    prompt_logprobs: Optional[int] = None
    stream: bool = False

    def sample_logprobs(self) -> Optional[int]:
        """SamplingParams.logprobs: how many alternatives each token reports."""
        return None

    def params(self) -> SamplingParams:
        return SamplingParams(logprobs=self.sample_logprobs(), n=self.n,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, max_tokens=self.max_tokens,
                              stop=self.stop, seed=self.seed,
                              presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty,
                              repetition_penalty=self.repetition_penalty,
                              ignore_eos=self.ignore_eos, min_tokens=self.min_tokens,
                              prompt_logprobs=self.prompt_logprobs)


class CompletionRequest(_Sampling):
    prompt: Union[str, List[int]]
    logprobs: Optional[int] = None

    def sample_logprobs(self) -> Optional[int]:
        return self.logprobs


class ChatRequest(_Sampling):
    messages: List[Dict[str, Any]] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = None

    def sample_logprobs(self) -> Optional[int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}},
                        status_code=status)


class _ApiKey:
    """Pure ASGI middleware requiring ``Authorization: Bearer KEY`` on /v1 routes
    (Starlette's ``BaseHTTPMiddleware`` would relay every streamed chunk through
    a task group and a memory stream)."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and \
                dict(scope["headers"]).get(b"authorization") != self.expected:
            await _error(401, "invalid API key", "authentication_error")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(server: AsyncLLM, model_name: str, api_key: Optional[str] = None) -> FastAPI:
    app = FastAPI(title="mini_paged_attn")
    metrics = Metrics(server)
    tokenizer = server.llm.get_tokenizer()
    text_of = lp.TokenText(tokenizer)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        return _error(400, str(exc.errors()[:3]))

    if api_key:
        app.add_middleware(_ApiKey, key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "mini_paged_attn"}]}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def _check(body: _Sampling) -> Optional[JSONResponse]:
        if body.model is not None and body.model != model_name:
            return _error(400, f"model {body.model!r} is not served (this server has "
                               f"{model_name!r})")
        return None

    async def _run(prompt: Any, body: _Sampling, chat: bool):
        bad = _check(body)
        if bad is not None:
            return bad
        try:
            # In a worker thread: admission waits for the engine's current step.
            stream = await asyncio.to_thread(server.submit, prompt, body.params(),
                                             asyncio.get_running_loop())
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(_sse(stream, rid, body, chat), media_type="text/event-stream")
        start, last = time.monotonic(), None
        async for out in stream:
            if last is None and out.outputs and out.outputs[0].token_ids:
                metrics.first_token(time.monotonic() - start)
            last = out
        metrics.finished(last, time.monotonic() - start)
        return _response(last, rid, body, chat)

    def _logprobs(c, body: _Sampling, chat: bool, start: int = 0, offset: int = 0):
        """The choice's logprobs for its tokens from ``start`` on, or None."""
        if c.logprobs is None or start >= len(c.token_ids):
            return None
        ids, entries = c.token_ids[start:], c.logprobs[start:len(c.token_ids)]
        if chat:
            return lp.chat_logprobs(ids, entries, text_of, body.top_logprobs or 0)
        return lp.completion_logprobs(ids, entries, text_of, offset)

    def _response(out, rid: str, body: _Sampling, chat: bool) -> Dict[str, Any]:
        choices = []
        prompt_logprobs = lp.prompt_logprobs(out.prompt_logprobs, text_of)
        for c in out.outputs:
            choice = {"index": c.index, "finish_reason": c.finish_reason,
                      "logprobs": _logprobs(c, body, chat)}
            if chat:
                choice["message"] = {"role": "assistant", "content": c.text}
            else:
                # As vLLM: in every choice of a completion, at the top of a chat answer.
                choice.update(text=c.text, prompt_logprobs=prompt_logprobs)
            choices.append(choice)
        generated = sum(len(c.token_ids) for c in out.outputs)
        response = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": model_name, "choices": choices,
                    "usage": {"prompt_tokens": len(out.prompt_token_ids),
                              "completion_tokens": generated,
                              "total_tokens": len(out.prompt_token_ids) + generated}}
        if chat:
            response["prompt_logprobs"] = prompt_logprobs
        return response

    async def _sse(stream, rid: str, body: _Sampling, chat: bool) -> AsyncIterator[str]:
        sent: Dict[int, int] = {}  # choice index -> characters sent
        sent_tokens: Dict[int, int] = {}  # choice index -> tokens whose logprobs were sent
        start, first = time.monotonic(), True
        last = None
        try:
            async for out in stream:
                last = out
                for c in out.outputs:
                    # A character still being completed by the next token is held back.
                    text = c.text if c.finish_reason is not None else c.text.rstrip("\ufffd")
                    offset = sent.get(c.index, 0)
                    delta = text[offset:]
                    if not delta and c.finish_reason is None:
                        continue
                    sent[c.index] = len(text)
                    if first and c.token_ids:
                        metrics.first_token(time.monotonic() - start)
                        first = False
                    first_chunk = c.index not in sent_tokens
                    piece = {"index": c.index, "finish_reason": c.finish_reason,
                             "logprobs": _logprobs(c, body, chat, sent_tokens.get(c.index, 0),
                                                   offset)}
                    sent_tokens[c.index] = len(c.token_ids)
                    chunk = {"id": rid, "created": int(time.time()), "model": model_name,
                             "object": "chat.completion.chunk" if chat else "text_completion",
                             "choices": [piece]}
                    if chat:
                        piece["delta"] = {"role": "assistant", "content": delta}
                    else:
                        piece["text"] = delta
                    if first_chunk and out.prompt_logprobs is not None:
                        prompt = lp.prompt_logprobs(out.prompt_logprobs, text_of)
                        (chunk if chat else piece)["prompt_logprobs"] = prompt
                    yield f"data: {json.dumps(chunk)}\n\n"
            if last is not None:
                metrics.finished(last, time.monotonic() - start)
            yield "data: [DONE]\n\n"
        finally:
            stream.close()  # a disconnected client cancels this generator: abort

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await _run(body.prompt, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        if tokenizer is None:
            return _error(400, "chat needs a tokenizer with a chat template; this model has none")
        try:
            text = tokenizer.apply_chat_template(body.messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:  # a malformed conversation or template error
            return _error(400, f"cannot apply the chat template: {e}")
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return await _run({"prompt_token_ids": ids, "prompt": text}, body, chat=True)

    return app

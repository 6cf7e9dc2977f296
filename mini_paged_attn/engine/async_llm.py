"""AsyncLLM: one ``LLM`` serving many callers at once, for servers.

A background thread owns the engine loop: it admits the requests callers
submit (from any thread, or any asyncio task), runs steps while anything is
unfinished (every caller's requests share them: continuous batching), and hands
each request's outputs to its :class:`RequestStream` as they change. A stream
that is closed or left early aborts its request, whose blocks are freed at the
next step. An exception inside a step ends the requests that were running with
that exception; the loop keeps serving.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, List, Optional, Tuple

from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .request import Request

_END = object()  # after a stream's last output


def _put_all(items: List[Tuple["asyncio.Queue", Any]]) -> None:  # on the event loop
    for q, item in items:
        q.put_nowait(item)


def _deliver(items: List[Tuple["RequestStream", Any]]) -> None:  # engine thread
    """Hands each item to its stream: one wake-up per event loop for the whole
    batch (a wake-up is a write to the loop's self-pipe, once per stream per
    step it cost more than the rest of the hand-off)."""
    by_loop: dict = {}
    for stream, item in items:
        if stream._loop is None:
            stream._queue.put(item)
        else:
            by_loop.setdefault(stream._loop, []).append((stream._queue, item))
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(_put_all, batch)


class RequestStream:
    """The outputs of one request (cumulative: all its tokens and text so far),
    the last with ``finished`` set. Iterate it (blocking) or ``async for`` it
    (from the event loop it was submitted on)."""

    def __init__(self, owner: "AsyncLLM", loop: Optional[asyncio.AbstractEventLoop]):
        self._owner = owner
        self._loop = loop
        self._queue: Any = asyncio.Queue() if loop is not None else queue.Queue()
        self.request: Optional[Request] = None
        self._done = False

    def _put(self, item: Any) -> None:  # engine thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        else:
            self._queue.put(item)

    def _item(self, item: Any) -> RequestOutput:
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def __iter__(self) -> "RequestStream":
        return self

    def __next__(self) -> RequestOutput:
        if self._done:
            raise StopIteration
        return self._item(self._queue.get())

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            return self._item(await self._queue.get())
        except StopIteration:
            raise StopAsyncIteration from None

    def abort(self) -> None:
        """Stops the request (if still running) and ends the stream."""
        if not self._done:
            self._done = True
            self._owner._abort(self)

    close = abort


class AsyncLLM:
    """Serves ``llm`` (an ``LLM``) from a background thread; see the module doc."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.engine = llm.engine
        self._cond = threading.Condition()
        # (stream, token ids, text, params, where the admission's error goes)
        self._pending: List[Tuple[RequestStream, Any, Optional[str], SamplingParams,
                                  "queue.Queue"]] = []
        self._aborts: List[RequestStream] = []
        self._active: List[Tuple[RequestStream, Request, Tuple[int, bool]]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="mini_paged_attn-engine",
                                        daemon=True)
        self._thread.start()

    def submit(self, prompt: Any, sampling_params: Optional[SamplingParams] = None,
               loop: Optional[asyncio.AbstractEventLoop] = None) -> RequestStream:
        """Queues one prompt (any form ``LLM.generate`` takes) and returns its
        stream, for ``async for`` on ``loop`` (default: the running loop, if
        any) or plain iteration. Bad input raises here, in the caller, with
        nothing queued. It waits for the engine thread to admit the request
        (at most one step): from an event loop, call it in a worker thread."""
        jobs = self.llm._jobs(prompt, sampling_params)
        if len(jobs) != 1:
            raise ValueError(f"submit takes one prompt, got {len(jobs)}")
        ((ids, text, sp),) = jobs
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        stream = RequestStream(self, loop)
        errors: "queue.Queue[Optional[BaseException]]" = queue.Queue()
        with self._cond:
            if self._stopped:
                raise RuntimeError("this AsyncLLM is shut down")
            self._pending.append((stream, ids, text, sp, errors))
            self._cond.notify()
        error = errors.get()  # admitted (or refused) by the engine thread
        if error is not None:
            raise error
        return stream

    def _abort(self, stream: RequestStream) -> None:
        with self._cond:
            self._aborts.append(stream)
            self._cond.notify()

    def shutdown(self) -> None:
        """Aborts everything running and stops the engine thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    # -- the engine thread ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._aborts or self._stopped or self._active):
                    self._cond.wait()
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, []
                stopped = self._stopped
            with self.llm._lock:
                for stream, ids, text, sp, errors in pending:
                    self._admit(stream, ids, text, sp, errors)
                for stream in aborts + ([s for s, _, _ in self._active] if stopped else []):
                    self._drop(stream)
                if stopped:
                    return
                if self.engine.has_unfinished:
                    try:
                        self.engine.step()
                    except BaseException as e:  # the running requests end with it
                        for stream, request, _ in list(self._active):
                            self.engine.abort(request)
                            stream._put(e)
                        self._active = []
                        continue
                self._publish()

    def _admit(self, stream, ids, text, sp, errors) -> None:
        try:
            request = self.engine.add_request(ids, sp)
        except BaseException as e:
            errors.put(e)
            return
        request.prompt = text
        stream.request = request
        self._active.append((stream, request, (-1, False)))
        errors.put(None)

    def _drop(self, stream: RequestStream) -> None:
        for i, (s, request, _) in enumerate(self._active):
            if s is stream:
                self.engine.abort(request)
                del self._active[i]
                s._put(_END)
                return

    def _publish(self) -> None:
        """Sends every active request whose output changed; ends finished ones."""
        still, items = [], []
        for stream, request, sent in self._active:
            state = request.progress
            if state != sent:
                items.append((stream, request.output()))
            if request.finished:
                items.append((stream, _END))
            else:
                still.append((stream, request, state))
        self._active = still
        _deliver(items)

"""One HTTP request's generation on the engine, for the ASGI app: submit a plan's jobs, wait for
their slots, relay their chunks through the plan's assembler, and cancel them when the client goes.

A request is answered with an error status whenever that is still possible: a streamed answer
starts (200 and its first event) only once every job has a slot, so a request that waited too
long in the queue gets 503 with ``Retry-After``, whether it asked to stream or not. A client that
disconnects cancels its sequences within a quarter second (``_POLL``), streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from .._engine import EngineStoppedError, QueueTimeoutError
from .._generation import GenerationChunk
from .._grammar_gate import GrammarError
from .._openai.service import Plan
from ._service import ApiError, ModelService

__all__ = ["answer", "generation_error", "RETRY_AFTER_S"]

_POLL = 0.25  # seconds between checks for a client that went away
RETRY_AFTER_S = 1  # what a 503 tells the client to wait before it tries again


def generation_error(error: BaseException | None) -> ApiError:
    """The HTTP error for a job that ended with ``error``."""
    if isinstance(error, QueueTimeoutError):
        return ApiError(str(error), None, 503, "queue_timeout", "server_overloaded",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, EngineStoppedError):
        return ApiError(f"the server cannot generate: {error}", None, 503, "engine_stopped", "server_error")
    if isinstance(error, GrammarError):  # the request's grammar reached a dead end
        return ApiError(f"invalid grammar: {error}", "grammar")
    return ApiError(f"generation failed: {error}", None, 500, type_="server_error")


class _Disconnected(Exception):
    """The client went away."""


class _Run:
    """A plan's jobs in the engine; their chunks (and slot admissions) arrive on one asyncio queue
    as ``(job index, chunk)``, ``(job index, None)`` meaning the job got its slot."""

    def __init__(self, service: ModelService, plan: Plan, request: Any):
        self.service, self.plan, self.request = service, plan, request
        self.queue: asyncio.Queue = asyncio.Queue()
        self.reqs: list[Any] = []
        self.early: list[tuple[int, GenerationChunk]] = []  # chunks that came while waiting for slots
        self._last_poll = time.monotonic()

    def submit(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue

        def post(item: tuple[int, GenerationChunk | None]) -> None:  # runs on the engine thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                pass

        jobs = self.plan.jobs
        if len(jobs) > self.service.engine.max_queue:
            raise ApiError(f"the request makes {len(jobs)} generations (choices x prompts) but the server queues at "
                           f"most {self.service.engine.max_queue}", "n")
        try:
            for job in jobs:
                self.reqs.append(self.service.submit(job, lambda c, i=job.index: post((i, c)),
                                                     on_start=lambda i=job.index: post((i, None))))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for r in self.reqs:
            r.cancel()  # a no-op for finished ones

    async def _next(self) -> tuple[int, GenerationChunk | None]:
        """The next item; raises _Disconnected once the client has gone (some ASGI servers only
        tell through ``receive``, not by failing ``send``, so look there every quarter second)."""
        while True:
            now = time.monotonic()
            if now - self._last_poll > _POLL:
                self._last_poll = now
                if await self.request.is_disconnected():
                    raise _Disconnected()
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            try:
                return await asyncio.wait_for(self.queue.get(), _POLL)
            except asyncio.TimeoutError:
                continue

    async def admitted(self) -> None:
        """Waits until every job has a slot; raises the HTTP error of a job that fails first."""
        waiting = len(self.reqs)
        while waiting:
            i, c = await self._next()
            if c is None:
                waiting -= 1
                continue
            if c.finish_reason == "error":
                raise generation_error(self.reqs[i].error)
            self.early.append((i, c))
            if c.finish_reason is not None:  # ended without a start (cancelled while queued)
                waiting -= 1

    async def events(self) -> AsyncIterator[dict]:
        """The plan's output, as the assembler makes it; raises ApiError for a failed generation."""
        asm = self.plan.assembler
        pending = len(self.reqs)
        early, self.early = self.early, []
        while pending:
            if early:
                i, c = early.pop(0)
            else:
                i, c = await self._next()
                if c is None:
                    continue
            if c.finish_reason == "error":
                raise generation_error(self.reqs[i].error)
            for obj in asm.on_chunk(i, c):
                yield obj
            if c.finish_reason is not None:
                pending -= 1
                for obj in asm.on_end(i, c.finish_reason, len(self.reqs[i].completion_tokens)):
                    yield obj


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def answer(service: ModelService, request: Any, plan: Plan) -> Any:
    """Runs ``plan`` for ``request``: the whole JSON response, or a streaming response of SSE."""
    from fastapi.responses import StreamingResponse

    run = _Run(service, plan, request)
    run.submit()
    asm = plan.assembler
    ok = False
    try:
        await run.admitted()
        if not plan.stream:
            async for _ in run.events():
                pass
            return asm.response()
        ok = True
    except _Disconnected:
        service.counters["client_disconnects_total"] += 1
        raise ApiError("client disconnected", None, 499) from None
    finally:
        if not ok:
            run.cancel()  # a no-op for finished jobs; frees the slots at once if we bailed out

    async def stream() -> AsyncIterator[bytes]:
        done = False
        try:
            for job in plan.jobs:
                for obj in asm.opening(job.index):
                    yield _sse(obj)
            try:
                async for obj in run.events():
                    yield _sse(obj)
            except ApiError as exc:
                done = True  # the error is the answer's last event
                yield _sse(exc.body())
                return
            for obj in asm.closing():
                yield _sse(obj)
            yield b"data: [DONE]\n\n"
            done = True
        except (_Disconnected, ConnectionResetError):
            return
        finally:
            if not done:
                run.cancel()
                service.counters["client_disconnects_total"] += 1

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

"""The embedded OpenAI-compatible server: a FastAPI app over the continuous-batching engine.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both stream as Server-Sent Events
ending in ``data: [DONE]``), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text), ``POST /tokenize``, ``POST /detokenize``.

Requests never wait behind a global lock: each one is a sequence in the engine, and its handler
awaits the engine's chunks on an asyncio queue. A client that disconnects cancels its sequence.
Binds to 127.0.0.1 by default; with ``api_key`` every route but ``/health`` needs
``Authorization: Bearer <key>``.

    from cyllama.llama.server.embedded import start_server
    start_server("model.gguf", port=8000)          # blocks; Ctrl-C stops it gracefully
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
from typing import Any, AsyncIterator, Mapping

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError:  # pragma: no cover
    raise ImportError("the embedded server needs FastAPI and uvicorn: pip install 'cyllama[server]'") from None

from ..._generation import GenerationChunk
from ._service import ApiError, ModelService

__all__ = ["create_app", "EmbeddedServer", "start_server"]

_WAIT_POLL = 0.5  # seconds between disconnect checks of a non-streaming request


def create_app(service: ModelService, api_key: str | None = None, close_service: bool = False) -> Any:
    """The FastAPI application serving ``service``."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        if close_service:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="cyllama", description="OpenAI-compatible server on llama.cpp", lifespan=lifespan)
    app.state.service = service

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    app.add_middleware(_Guard, service=service, api_key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def bridge(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Queue, Any]:
        q: asyncio.Queue = asyncio.Queue()

        def on_chunk(c: GenerationChunk) -> None:  # runs on the engine thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, c)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                pass
        return q, on_chunk

    async def collect(request: Request, q: asyncio.Queue, req: Any) -> list[GenerationChunk]:
        chunks = []
        while True:
            try:
                c = await asyncio.wait_for(q.get(), _WAIT_POLL)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    req.cancel()
                    service.counters["client_disconnects_total"] += 1
                    raise ApiError(499, "client disconnected") from None
                continue
            chunks.append(c)
            if c.finish_reason is not None:
                if c.finish_reason == "error":
                    raise ApiError(500, f"generation failed: {req.error}", "server_error")
                return chunks

    async def next_chunk(request: Request, q: asyncio.Queue, last_check: list[float]) -> GenerationChunk | None:
        """The next chunk, or None once the client has gone (some ASGI servers only tell through
        ``receive``, not by failing ``send``, so look there every quarter second)."""
        while True:
            now = time.monotonic()
            if now - last_check[0] > 0.25:
                last_check[0] = now
                if await request.is_disconnected():
                    return None
            try:
                return q.get_nowait()
            except asyncio.QueueEmpty:
                pass
            try:
                return await asyncio.wait_for(q.get(), 0.25)
            except asyncio.TimeoutError:
                continue

    def sse(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"

    def sse_stream(request: Request, body: Mapping[str, Any], q: asyncio.Queue, req: Any, n_prompt: int,
                   head: dict, opening: list[dict], piece: Any, closing: Any) -> StreamingResponse:
        """Server-Sent Events for one generation: ``opening`` events, ``piece(chunk)`` per chunk,
        ``closing(last)`` and the usage chunk (when asked) at the end, then ``data: [DONE]``.
        A client that goes away cancels the sequence."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            done = False
            try:
                for obj in opening:
                    yield sse(obj)
                checked = [time.monotonic()]
                while True:
                    c = await next_chunk(request, q, checked)
                    if c is None:
                        return
                    if c.finish_reason == "error":
                        yield sse({"error": {"message": f"generation failed: {req.error}", "type": "server_error"}})
                        break
                    obj = piece(c)
                    if obj is not None:
                        yield sse(obj)
                    if c.finish_reason is not None:
                        for obj in closing(c):
                            yield sse(obj)
                        if include_usage:
                            yield sse({**head, "choices": [],
                                       "usage": service.usage(n_prompt, len(req.completion_tokens))})
                        break
                yield b"data: [DONE]\n\n"
                done = True
            finally:
                if not done:
                    req.cancel()
                    service.counters["client_disconnects_total"] += 1
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def finish(reason: str) -> str:
        return "length" if reason == "length" else "stop"

    # -- routes ----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "slots_busy": service.engine.busy_slots, "slots_total": service.engine.n_slots}

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> Any:
        return service.models()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        return service.tokenize(await body_of(request))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        return service.detokenize(await body_of(request))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await body_of(request)
        return await asyncio.get_running_loop().run_in_executor(None, service.embed, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await body_of(request)
        tokens, cfg, grammar = service.prepare_chat(body)
        loop = asyncio.get_running_loop()
        q, on_chunk = bridge(loop)
        req = service.submit(tokens, cfg, grammar, on_chunk)
        cid, created = service.new_id("chatcmpl"), int(time.time())
        base = {"id": cid, "created": created, "model": body.get("model") or service.model_id,
                "system_fingerprint": "cyllama"}
        if not body.get("stream"):
            chunks = await collect(request, q, req)
            text = "".join(c.text for c in chunks)
            n = len(req.completion_tokens)
            return {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": service.chat_logprobs(chunks) if cfg.logprobs else None,
                                 "finish_reason": finish(chunks[-1].finish_reason)}],
                    "usage": service.usage(len(tokens), n)}
        head = {**base, "object": "chat.completion.chunk"}

        def piece(c: GenerationChunk) -> dict | None:
            if not (c.text or (cfg.logprobs and c.token is not None)):
                return None
            return {**head, "choices": [{"index": 0, "delta": {"content": c.text}, "finish_reason": None,
                                         "logprobs": service.chat_logprobs([c]) if cfg.logprobs else None}]}

        def closing(c: GenerationChunk) -> list[dict]:
            return [{**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                          "finish_reason": finish(c.finish_reason)}]}]

        opening = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]}]
        return sse_stream(request, body, q, req, len(tokens), head, opening, piece, closing)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await body_of(request)
        prompts, cfg, grammar = service.prepare_completion(body)
        echo = bool(body.get("echo"))
        loop = asyncio.get_running_loop()
        cid, created = service.new_id("cmpl"), int(time.time())
        base = {"id": cid, "object": "text_completion", "created": created,
                "model": body.get("model") or service.model_id, "system_fingerprint": "cyllama"}
        if body.get("stream"):
            if len(prompts) != 1:
                raise ApiError(400, "streaming takes a single prompt", param="prompt")
            tokens = prompts[0]
            q, on_chunk = bridge(loop)
            req = service.submit(tokens, cfg, grammar, on_chunk)

            def piece(c: GenerationChunk) -> dict | None:
                if not (c.text or c.finish_reason is not None):
                    return None
                return {**base, "choices": [{"text": c.text, "index": 0,
                                             "logprobs": service.completion_logprobs([c]) if cfg.logprobs else None,
                                             "finish_reason": finish(c.finish_reason) if c.finish_reason else None}]}

            opening = [{**base, "choices": [{"text": service.vocab.detokenize(tokens), "index": 0, "logprobs": None,
                                             "finish_reason": None}]}] if echo else []
            return sse_stream(request, body, q, req, len(tokens), base, opening, piece, lambda c: [])
        pending = []
        for tokens in prompts:
            q, on_chunk = bridge(loop)
            pending.append((tokens, q, service.submit(tokens, cfg, grammar, on_chunk)))
        choices, n_prompt, n_gen = [], 0, 0
        try:
            for i, (tokens, q, req) in enumerate(pending):
                chunks = await collect(request, q, req)
                text = "".join(c.text for c in chunks)
                prefix = service.vocab.detokenize(tokens) if echo else ""
                choices.append({"text": prefix + text, "index": i,
                                "logprobs": service.completion_logprobs(chunks, len(prefix)) if cfg.logprobs else None,
                                "finish_reason": finish(chunks[-1].finish_reason)})
                n_prompt += len(tokens)
                n_gen += len(req.completion_tokens)
        finally:
            for _, _, req in pending:
                req.cancel()  # no-op for finished ones; frees the rest if we bailed out
        return {**base, "choices": choices, "usage": service.usage(n_prompt, n_gen)}

    return app


class _Guard:
    """Plain ASGI middleware (BaseHTTPMiddleware would hide client disconnects from streaming
    handlers): counts requests and errors, and checks the API key on every route but /health."""

    def __init__(self, app: Any, service: ModelService, api_key: str | None):
        self.app, self.service, self.api_key = app, service, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counters = self.service.counters
        counters["http_requests_total"] += 1
        if self.api_key and scope.get("path") != "/health":
            auth = ""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    auth = v.decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                counters["http_errors_total"] += 1
                err = ApiError(401, "invalid or missing API key (Authorization: Bearer <key>)",
                               "authentication_error", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return

        async def send_counting(message: dict) -> None:
            if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
                counters["http_errors_total"] += 1
            await send(message)

        await self.app(scope, receive, send_counting)


class EmbeddedServer:
    """Runs the app with uvicorn in a background thread: ``start()``, ``stop()``, or ``with``.

    ``port=0`` picks a free port (see :attr:`port` after ``start()``).
    """

    def __init__(self, model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
                 n_ctx: int = 2048, n_gpu_layers: int = 99, n_parallel: int = 4, n_threads: int | None = None,
                 api_key: str | None = None, max_queue: int = 64, model_alias: str | None = None,
                 chat_template: str | None = None, log_level: str = "warning"):
        self.host, self.port = host, port
        self.api_key = api_key
        self.log_level = log_level
        self.service = ModelService(model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_parallel=n_parallel,
                                    n_threads=n_threads, max_queue=max_queue, model_alias=model_alias,
                                    chat_template=chat_template)
        self.app = create_app(self.service, api_key)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _make_server(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level=self.log_level,
                                timeout_graceful_shutdown=5, access_log=False)
        return uvicorn.Server(config)

    def start(self, timeout: float = 30.0) -> "EmbeddedServer":
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._server = server = self._make_server()

        def run() -> None:
            try:
                server.run()
            except SystemExit:  # uvicorn exits this way when it cannot bind; start() reports it
                pass

        self._thread = threading.Thread(target=run, name="cyllama-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"the server could not start on {self.host}:{self.port} (is the port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the server did not start in time")
            time.sleep(0.02)
        if self.port == 0:
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, close_model: bool = True) -> None:
        """Stops accepting requests, lets running ones end (5 s grace), frees the model."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        if close_model:
            self.service.close()

    def serve_forever(self) -> None:
        """Runs in this thread until Ctrl-C (or SIGTERM), then shuts down gracefully."""
        self._server = self._make_server()
        try:
            self._server.run()
        finally:
            self.service.close()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, n_ctx: int = 2048,
                 n_gpu_layers: int = 99, *, block: bool = True, **kwargs: Any) -> EmbeddedServer:
    """Starts the embedded server. Blocks until Ctrl-C unless ``block=False`` (then returns it running).

    Extra keyword arguments: ``n_parallel`` (slots, default 4), ``n_threads``, ``api_key``,
    ``max_queue``, ``model_alias``, ``chat_template``, ``log_level``.
    """
    server = EmbeddedServer(model_path, host, port, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, **kwargs)
    if not block:
        return server.start()
    print(f"cyllama: serving {server.service.model_id} on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    return server

"""The embedded OpenAI-compatible server: a FastAPI app over the continuous-batching engine.

Routes: ``GET /`` (a chat page; ``chat_page=False`` or ``--no-chat-page`` turns it off),
``GET /props``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both stream as Server-Sent Events
ending in ``data: [DONE]``), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``,
``GET /metrics`` (Prometheus text), ``POST /tokenize``, ``POST /detokenize``.

Requests never wait behind a global lock: each one is a sequence in the engine, and its handler
awaits the engine's chunks on an asyncio queue (:mod:`._requests`). A client that disconnects
cancels its sequence. A malformed request is a 4xx in OpenAI's error shape; a body over
``max_body_bytes`` is a 413; a full queue, or a wait for a slot longer than the service's
``queue_timeout``, is a 503 with ``Retry-After``. ``/openapi.json`` describes the request bodies.
Binds to 127.0.0.1 by default; with ``api_key`` every route but ``/health`` needs
``Authorization: Bearer <key>``.

    from cyllama.server.embedded import start_server   # or cyllama.llama.server.embedded
    start_server("model.gguf", port=8000)          # blocks; Ctrl-C stops it gracefully
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
from typing import Any, AsyncIterator, Sequence

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
except ImportError:  # pragma: no cover
    raise ImportError("the embedded server needs FastAPI and uvicorn: pip install 'cyllama[server]'") from None

from .._openai.schema import InvalidRequestError
from .._openai.service import Plan
from ._openapi import install_openapi
from ._requests import answer
from ._service import ApiError, ModelService
from .chat_page import add_chat_page, add_props

__all__ = ["create_app", "EmbeddedServer", "start_server", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 32 * 1024 * 1024


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: strict JSON (no NaN or Infinity, no unpaired surrogate
    escapes, which no text encoding can carry), else an ApiError (400)."""
    try:
        body = json.loads(raw or b"null", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    if b"\\ud" in raw.lower():  # an escaped surrogate: check that each one is paired
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError("the request body is not valid JSON: it has an unpaired UTF-16 surrogate escape") from None
    return body


def create_app(service: ModelService, api_key: str | None = None, close_service: bool = False,
               cors_origins: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               chat_page: bool = True) -> Any:
    """The FastAPI application serving ``service``. ``cors_origins`` (off by default, since the
    server may hold an API key) lets browser pages from those origins call it; ``chat_page``
    serves a chat page at ``/``."""
    from contextlib import asynccontextmanager

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        if close_service:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="cyllama", description="OpenAI-compatible server on llama.cpp", lifespan=lifespan)
    app.state.service = service
    oa = service.openai

    def error(exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app.add_middleware(_Guard, service=service, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(InvalidRequestError)
    async def api_error(_request: Request, exc: InvalidRequestError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        msg = (f"Unknown request URL: {request.method} {request.url.path}" if exc.status_code == 404 else
               f"Method {request.method} is not allowed for {request.url.path}" if exc.status_code == 405 else
               str(exc.detail))
        return error(InvalidRequestError(msg, None, exc.status_code, type_=kind))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        e = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        return error(InvalidRequestError(f"invalid value for '{where}': {e.get('msg', 'invalid')}", where or None))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return error(InvalidRequestError(f"internal error: {type(exc).__name__}: {exc}", None, 500,
                                         type_="server_error"))

    async def body_of(request: Request) -> dict[str, Any]:
        return parse_body(await request.body())

    # -- routes ----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Any:
        engine = service.engine
        body = {"status": "ok" if engine.running else "error", "slots_busy": engine.busy_slots,
                "slots_total": engine.n_slots, "queue_length": engine.queue_length}
        return body if engine.running else JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> Any:
        return oa.models()

    add_props(app, service)
    if chat_page:
        add_chat_page(app)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        return oa.model_info(model_id)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        return service.tokenize(await body_of(request))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        return service.detokenize(await body_of(request))

    async def audio(request: Request, translate: bool) -> Any:
        from starlette.responses import PlainTextResponse

        try:
            form = await request.form()
        except ApiError:  # the body is too large
            raise
        except Exception as exc:  # not multipart, or python-multipart missing
            raise ApiError(f"send multipart/form-data with a 'file' part ({exc})", "file") from None
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise ApiError("the request needs a 'file' part with the audio", "file")
        data = await upload.read()
        temperature = form.get("temperature")
        try:
            temperature = float(temperature) if temperature not in (None, "") else None
        except ValueError:
            raise ApiError("temperature must be a number", "temperature") from None
        kind, body = await asyncio.get_running_loop().run_in_executor(None, lambda: service.transcribe(
            data, translate=translate, language=form.get("language") or None, prompt=form.get("prompt") or None,
            temperature=temperature, response_format=str(form.get("response_format") or "json"),
            words="word" in form.getlist("timestamp_granularities[]")))
        return PlainTextResponse(body) if kind == "text/plain" else body

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        return await audio(request, False)

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Any:
        return await audio(request, True)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await body_of(request)
        return await asyncio.get_running_loop().run_in_executor(None, oa.embeddings, body)

    def chat_plan(body: Any) -> Plan:
        plan = oa.chat(body)
        for job in plan.jobs:  # images are decoded and tokenized here, off the event loop
            if job.media is not None:
                chunks = job.media()
                job.media = (lambda c=chunks: c)
        return plan

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await body_of(request)
        if oa.mtmd is None:
            return await answer(service, request, oa.chat(body))
        return await answer(service, request, await asyncio.get_running_loop().run_in_executor(None, chat_plan, body))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(service, request, oa.completion(await body_of(request)))

    install_openapi(app)
    return app


class _Guard:
    """Plain ASGI middleware (BaseHTTPMiddleware would hide client disconnects from streaming
    handlers): counts requests and errors, limits the body size (by its Content-Length, and as it
    arrives for a chunked body) and checks the API key on every route but /health and the chat
    page (which asks for the key)."""

    def __init__(self, app: Any, service: ModelService, api_key: str | None, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.service, self.api_key, self.max_body = app, service, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counters = self.service.counters
        counters["http_requests_total"] += 1
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                counters["http_errors_total"] += 1
                err = ApiError(f"the request body is larger than {self.max_body} bytes", None, 413)
                await JSONResponse(err.body(), status_code=413)(scope, receive, send)
                return
        public = scope.get("path") == "/health" or (scope.get("path") == "/" and scope.get("method") == "GET")
        if self.api_key and not public and scope.get("method") != "OPTIONS":
            auth = ""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    auth = v.decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                counters["http_errors_total"] += 1
                err = ApiError("invalid or missing API key (Authorization: Bearer <key>)", None, 401,
                               "invalid_api_key", "authentication_error")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return

        async def send_counting(message: dict) -> None:
            if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
                counters["http_errors_total"] += 1
            await send(message)

        received = 0

        async def receive_limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # the handler's read fails with a 413
                    raise ApiError(f"the request body is larger than {self.max_body} bytes", None, 413)
            return message

        await self.app(scope, receive_limited, send_counting)


class EmbeddedServer:
    """Runs the app with uvicorn in a background thread: ``start()``, ``stop()``, or ``with``.

    ``port=0`` picks a free port (see :attr:`port` after ``start()``).
    """

    def __init__(self, model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
                 n_ctx: int = 2048, n_gpu_layers: int = 99, n_parallel: int = 4, n_threads: int | None = None,
                 api_key: str | None = None, max_queue: int = 64, model_alias: str | None = None,
                 chat_template: str | None = None, log_level: str = "warning",
                 cors_origins: list[str] | None = None, lookup: int = 0,
                 mmproj: str | os.PathLike | None = None, allow_image_urls: bool = False,
                 draft_model: str | os.PathLike | None = None, draft_max: int = 16,
                 whisper_model: str | os.PathLike | None = None,
                 rpc_servers: str | Sequence[str] | None = None, tensor_split: Sequence[float] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, queue_timeout: float | None = None,
                 chat_page: bool = True):
        self.host, self.port = host, port
        self.api_key = api_key
        self.log_level = log_level
        self.service = ModelService(model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_parallel=n_parallel,
                                    n_threads=n_threads, max_queue=max_queue, model_alias=model_alias,
                                    chat_template=chat_template, lookup=lookup, mmproj=mmproj,
                                    allow_image_urls=allow_image_urls, draft_model=draft_model,
                                    draft_max=draft_max, whisper_model=whisper_model,
                                    rpc_servers=rpc_servers, tensor_split=tensor_split, queue_timeout=queue_timeout)
        self.app = create_app(self.service, api_key, cors_origins=cors_origins, max_body_bytes=max_body_bytes,
                              chat_page=chat_page)
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
    ``max_queue``, ``model_alias``, ``chat_template``, ``log_level``, ``cors_origins``, ``lookup``
    (speculative decoding by prompt lookup: up to that many draft tokens per step), ``mmproj``
    (a multimodal projector: chat messages may carry images as data: URLs, and audio),
    ``max_body_bytes`` (larger bodies get 413), ``queue_timeout`` (seconds a request may wait for
    a slot before it gets 503).
    """
    server = EmbeddedServer(model_path, host, port, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, **kwargs)
    if not block:
        return server.start()
    print(f"cyllama: serving {server.service.model_id} on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    return server

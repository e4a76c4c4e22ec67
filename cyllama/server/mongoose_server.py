"""The embedded server's app served by the Mongoose C event loop (``cymongoose``'s ASGI adapter).

``cymongoose`` is GPL-licensed, so it is an optional extra (``pip install cyllama[mongoose]``),
never a hard dependency. Routes and behaviour are those of :mod:`.embedded`.

    server = MongooseServer("model.gguf", port=8080)
    server.start()      # runs in the background
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any, Sequence

from ._service import ModelService
from .embedded import MAX_BODY_BYTES, create_app

__all__ = ["MongooseServer"]


def _require_cymongoose() -> Any:
    try:
        from cymongoose import asgi
    except ImportError:
        raise ImportError("MongooseServer needs the optional 'cymongoose' package "
                          "(GPL-licensed): pip install 'cyllama[mongoose]'") from None
    return asgi


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _CloseAfterResponse:
    """Adds ``Connection: close``: cymongoose's ASGI adapter stalls when a kept-alive connection
    carries a streamed response after another response, so each connection serves one request."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class MongooseServer:
    """OpenAI-compatible server on Mongoose. ``port=0`` picks a free port."""

    def __init__(self, model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080,
                 n_ctx: int = 2048, n_threads: int | None = None, *, n_gpu_layers: int = 99, n_parallel: int = 4,
                 api_key: str | None = None, max_queue: int = 64, model_alias: str | None = None,
                 chat_template: str | None = None, cors_origins: list[str] | None = None, lookup: int = 0,
                 mmproj: str | os.PathLike | None = None, allow_image_urls: bool = False,
                 draft_model: str | os.PathLike | None = None, draft_max: int = 16,
                 whisper_model: str | os.PathLike | None = None,
                 rpc_servers: str | Sequence[str] | None = None, tensor_split: Sequence[float] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, queue_timeout: float | None = None,
                 chat_page: bool = True):
        self._asgi = _require_cymongoose()
        self.host = host
        self.port = port if port else _free_port(host)
        self.service = ModelService(model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_parallel=n_parallel,
                                    n_threads=n_threads, max_queue=max_queue, model_alias=model_alias,
                                    chat_template=chat_template, lookup=lookup, mmproj=mmproj,
                                    allow_image_urls=allow_image_urls, draft_model=draft_model,
                                    draft_max=draft_max, whisper_model=whisper_model,
                                    rpc_servers=rpc_servers, tensor_split=tensor_split, queue_timeout=queue_timeout)
        self.app = _CloseAfterResponse(create_app(self.service, api_key, cors_origins=cors_origins,
                                                  max_body_bytes=max_body_bytes, chat_page=chat_page))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _check_port(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((self.host, self.port))
            except OSError as exc:
                raise OSError(exc.errno, f"port {self.port} on {self.host} is in use") from None

    def start(self, timeout: float = 30.0) -> "MongooseServer":
        """Starts serving in a background thread; returns once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._check_port()
        ready = threading.Event()

        async def main() -> None:
            self._stop = asyncio.Event()
            server = self._asgi.ASGIServer(self.app)
            try:
                await server.start(f"http://{self.host}:{self.port}")
            except BaseException as exc:
                self._error = exc
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.stop()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="cyllama-mongoose", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the Mongoose server did not start in time")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"the Mongoose server could not start: {self._error}")
        return self

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, close_model: bool = True) -> None:
        """Stops the event loop and (by default) frees the model."""
        if self._thread is not None and self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
            self._thread.join(15)
        self._thread = None
        if close_model:
            self.service.close()

    def __enter__(self) -> "MongooseServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

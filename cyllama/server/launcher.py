"""Run llama.cpp's ``llama-server`` binary as a managed child process.

>>> with ServerLauncher("model.gguf", port=0) as server:      # doctest: +SKIP
...     requests.post(server.api_base + "/chat/completions", json={...})

The binary comes from cyllama's library folder (``cyllama._ffi.lib_dir()``, where
``build_lib.py`` puts it) unless ``server_binary=`` names another one. The server runs in its
own process group with its output in a log file; :meth:`ServerLauncher.start` returns once
``GET /health`` answers 200. A launcher that is never stopped is stopped by a finalizer when it is
garbage-collected or when Python exits normally (a Python killed by a signal cannot do that).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from ._process import NativeProcess, _connect_host

__all__ = ["ServerLauncher", "find_server_binary"]

_BINARY_NAME = "llama-server.exe" if sys.platform == "win32" else "llama-server"


def find_server_binary(server_binary: str | os.PathLike | None = None) -> Path:
    """The ``llama-server`` executable to run: ``server_binary`` if given (a path, or a bare
    name looked up on ``PATH``), otherwise the one in cyllama's library folder."""
    if server_binary is not None:
        text = os.fspath(server_binary)
        path = Path(text).expanduser()
        if not path.exists() and os.sep not in text and "/" not in text:
            import shutil

            found = shutil.which(text)
            if found:
                path = Path(found)
        if not path.exists():
            raise FileNotFoundError(f"llama-server binary not found: {path}")
    else:
        from .._ffi import lib_dir

        path = lib_dir() / _BINARY_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"the llama-server binary was not found in cyllama's library folder ({path.parent}). "
                "Build it with `python build_lib.py` in the cyllama source tree, point CYLLAMA_LIB_DIR "
                "at a folder that holds it, or pass server_binary=.")
    if path.is_dir():
        raise IsADirectoryError(f"llama-server binary path is a directory: {path}")
    if not os.access(path, os.X_OK):
        raise PermissionError(f"llama-server binary is not executable: {path}")
    return path


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ServerLauncher(NativeProcess):
    """Starts, watches and stops one ``llama-server`` process.

    Parameters mirror llama-server's flags: ``n_ctx`` (``-c``; 0 takes the model's training
    context), ``n_gpu_layers`` (``-ngl``; -1 means all, None leaves llama-server's default),
    ``n_parallel`` (``-np``; None leaves llama-server's default), ``n_threads`` (``-t``).
    ``extra_args`` are appended as they are. ``api_key`` is passed through the environment
    (``LLAMA_API_KEY``) so that it does not show in process listings. ``port=0`` picks a free
    port at :meth:`start`. ``log_file`` receives the server's stdout and stderr (appended);
    without it they go to a temporary file that :meth:`stop` removes (see :meth:`log_tail`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        n_ctx: int = 2048,
        n_gpu_layers: int | str | None = -1,
        n_parallel: int | None = 1,
        n_threads: int | None = None,
        server_binary: str | os.PathLike | None = None,
        extra_args: Sequence[str] = (),
        api_key: str | None = None,
        startup_timeout: float = 60.0,
        log_file: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
    ):
        from .._errors import check_path

        self.model_path = check_path(model_path, "model")
        self.binary = find_server_binary(server_binary)
        if isinstance(extra_args, (str, bytes)):
            raise TypeError("extra_args must be a sequence of strings, not one string")
        self._init_process(host, port, startup_timeout, log_file, env)
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        self.extra_args = [os.fspath(a) for a in extra_args]
        self.api_key = api_key
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxies

    # -- properties ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` (a wildcard host is reached through loopback)."""
        return f"http://{_url_host(_connect_host(self.host))}:{self.port}"

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL, ``base_url + "/v1"``."""
        return self.base_url + "/v1"

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line :meth:`start` runs (without the API key, which goes by environment)."""
        cmd = [str(self.binary), "-m", str(self.model_path), "--host", self.host, "--port", str(self.port)]
        if self.n_ctx is not None:
            cmd += ["-c", str(int(self.n_ctx))]
        if self.n_gpu_layers is not None:
            ngl = self.n_gpu_layers
            cmd += ["-ngl", "all" if isinstance(ngl, int) and ngl < 0 else str(ngl)]
        if self.n_parallel is not None:
            cmd += ["-np", str(int(self.n_parallel))]
        if self.n_threads is not None:
            cmd += ["-t", str(int(self.n_threads))]
        return cmd + self.extra_args

    # -- lifecycle (the rest is NativeProcess's) ---------------------------------------------------

    _name = "llama-server"

    def _where(self) -> str:
        return self.base_url

    def _check_start(self) -> None:
        from .._errors import check_path

        check_path(self.model_path, "model")
        if not self.binary.exists():
            raise FileNotFoundError(f"llama-server binary not found: {self.binary}")

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        if self.api_key is not None:
            env["LLAMA_API_KEY"] = self.api_key
        return env

    def _health(self, timeout: float = 2.0) -> int | None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        req = urllib.request.Request(self.base_url + "/health", headers=headers)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError, ValueError):
            return None
        except Exception:  # http.client errors while the server is coming up
            return None

    def _ready(self) -> bool:
        return self._health() == 200

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"ServerLauncher({str(self.model_path)!r}, {self.base_url}, {state})"

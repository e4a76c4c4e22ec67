"""Run llama.cpp's ``rpc-server`` binary: a machine that lends its memory and compute to a model
loaded elsewhere with ``rpc_servers=["host:port"]``.

>>> with RpcServer(port=0) as server:                        # doctest: +SKIP
...     llm = LLM("model.gguf", rpc_servers=[server.endpoint])

The protocol has no authentication and no encryption: anyone who can connect can run
computations and read the memory the server holds. The server binds to loopback by default;
expose it only on a private network you trust. One server serves one client at a time.

llama.cpp's ``rpc-server`` writes to client sockets without guarding against SIGPIPE, so with the
signal's default action a client that disconnects while the server answers (one that gave up
waiting for a busy server, or was killed) ends the server. cyllama starts it with SIGPIPE ignored
(:class:`RpcServer`, ``cyllama rpc-server``): the write fails and the server drops that client.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from ..llama.rpc import DEFAULT_PORT, RpcError, check_rpc_server
from ._process import NativeProcess, _connect_host

__all__ = ["RpcServer", "find_rpc_server_binary", "rpc_server_command", "SECURITY_WARNING", "is_loopback"]

_BINARY_NAME = "rpc-server.exe" if sys.platform == "win32" else "rpc-server"

SECURITY_WARNING = ("the RPC protocol has no authentication or encryption: anyone who can reach this port can "
                    "run computations on this machine and read the memory it holds. Bind to loopback, or "
                    "to a private network you trust; never to the internet.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def find_rpc_server_binary(binary: str | os.PathLike | None = None) -> Path:
    """The ``rpc-server`` executable: ``binary`` if given, otherwise the one in cyllama's library folder."""
    if binary is not None:
        path = Path(os.fspath(binary)).expanduser()
    else:
        from .._ffi import lib_dir

        path = lib_dir() / _BINARY_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"the rpc-server binary was not found at {path}. Build it with `python build_lib.py` in the cyllama "
            "source tree (GGML_RPC=ON), or point CYLLAMA_LIB_DIR at a folder that holds it.")
    if path.is_dir() or not os.access(path, os.X_OK):
        raise PermissionError(f"rpc-server binary is not an executable file: {path}")
    return path


def rpc_server_command(binary: Path, host: str, port: int, *, n_threads: int | None = None, cache: bool = False,
                       devices: Sequence[str] | None = None) -> list[str]:
    """The ``rpc-server`` command line for these options (checked here: the binary exits on bad ones)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"host must be an address to bind, got {host!r}")
    cmd = [str(binary), "--host", host, "--port", str(port)]
    if n_threads is not None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        cmd += ["--threads", str(n_threads)]
    if devices:
        if isinstance(devices, str):
            devices = devices.split(",")
        cmd += ["--device", ",".join(d.strip() for d in devices)]
    if cache:
        cmd.append("--cache")
    return cmd


class RpcServer(NativeProcess):
    """Starts, checks and stops one ``rpc-server`` process.

    ``host`` (default loopback) and ``port`` (``0`` picks a free one) are where it listens;
    ``n_threads`` its CPU threads; ``cache`` keeps large tensors in a local file cache (under
    ``$LLAMA_CACHE``), so that loading the same model again sends less; ``devices`` names the
    ggml devices it offers (default: its GPUs, else its CPU). :meth:`start` returns once the
    server answers the RPC handshake. Output goes to ``log_file`` or a temporary file.
    """

    _name = "rpc-server"
    _restore_signals = False  # the server inherits Python's ignored SIGPIPE (see the module docstring)

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, n_threads: int | None = None,
                 cache: bool = False, devices: Sequence[str] | None = None,
                 binary: str | os.PathLike | None = None, startup_timeout: float = 30.0,
                 log_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        self.binary = find_rpc_server_binary(binary)
        self._init_process(host, port, startup_timeout, log_file, env)
        self.n_threads, self.cache, self.devices = n_threads, bool(cache), devices
        rpc_server_command(self.binary, host, port or 1, n_threads=n_threads, cache=cache, devices=devices)

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``rpc_servers`` (a wildcard host is reached through loopback)."""
        return f"{_connect_host(self.host)}:{self.port}"

    def _where(self) -> str:
        return self.endpoint

    def command(self) -> list[str]:
        return rpc_server_command(self.binary, self.host, self.port, n_threads=self.n_threads, cache=self.cache,
                                  devices=self.devices)

    def _ready(self) -> bool:
        """Whether the server answers the RPC handshake (see :func:`check_rpc_server`)."""
        try:
            check_rpc_server(self.endpoint, timeout=2.0)
        except RpcError:
            return False
        return True

    def kill(self) -> None:
        """Kills the server at once (SIGKILL): how a crashed or powered-off machine looks to clients."""
        if self.is_running():
            self._proc.kill()
            self._proc.wait(timeout=10)

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"RpcServer({self.endpoint}, {state})"

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

import errno
import ipaddress
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Mapping, Sequence

from ..llama.rpc import DEFAULT_PORT, RpcError, check_rpc_server
from .launcher import _connect_host, _free_port, _port_in_use, _tail, _terminate

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


class RpcServer:
    """Starts, checks and stops one ``rpc-server`` process.

    ``host`` (default loopback) and ``port`` (``0`` picks a free one) are where it listens;
    ``n_threads`` its CPU threads; ``cache`` keeps large tensors in a local file cache (under
    ``$LLAMA_CACHE``), so that loading the same model again sends less; ``devices`` names the
    ggml devices it offers (default: its GPUs, else its CPU). :meth:`start` returns once the
    server answers the RPC handshake. Output goes to ``log_file`` or a temporary file.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, n_threads: int | None = None,
                 cache: bool = False, devices: Sequence[str] | None = None,
                 binary: str | os.PathLike | None = None, startup_timeout: float = 30.0,
                 log_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        self.binary = find_rpc_server_binary(binary)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self.host = host
        self._requested_port = self.port = port
        self.n_threads, self.cache, self.devices = n_threads, bool(cache), devices
        rpc_server_command(self.binary, host, port or 1, n_threads=n_threads, cache=cache, devices=devices)
        self.startup_timeout = float(startup_timeout)
        self.log_file = Path(log_file).expanduser() if log_file is not None else None
        self.env = dict(env) if env else {}
        self._proc: subprocess.Popen | None = None
        self._log_fh: IO[bytes] | None = None
        self._log_path: str | None = None
        self._tmp_log: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.RLock()

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``rpc_servers`` (a wildcard host is reached through loopback)."""
        return f"{_connect_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return Path(self._log_path) if self._log_path else None

    def command(self) -> list[str]:
        return rpc_server_command(self.binary, self.host, self.port, n_threads=self.n_threads, cache=self.cache,
                                  devices=self.devices)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> "RpcServer":
        """Spawns the server and waits until it answers the RPC handshake. Raises OSError (port in
        use), RuntimeError (it exited; with its last log lines) or TimeoutError."""
        with self._lock:
            if self.is_running():
                raise RuntimeError(f"rpc-server is already running (pid {self.pid}) at {self.endpoint}")
            self._stop_process(0.0)
            if self._requested_port == 0:
                self.port = _free_port(self.host)
            else:
                self.port = self._requested_port
                if _port_in_use(self.host, self.port):
                    raise OSError(errno.EADDRINUSE, f"port {self.port} on {self.host} is already in use; choose "
                                                    "another port, or port=0 for a free one")
            self._spawn()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_file, "ab")
            self._log_path, self._tmp_log = str(self.log_file), None
        else:
            fd, name = tempfile.mkstemp(prefix="cyllama-rpc-server-", suffix=".log")
            self._log_fh = os.fdopen(fd, "wb")
            self._log_path = self._tmp_log = name
        env = {**os.environ, **self.env}
        kwargs: dict = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        # restore_signals=False: the server inherits Python's ignored SIGPIPE (see the module docstring)
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                      stderr=subprocess.STDOUT, env=env, close_fds=True, restore_signals=False,
                                      **kwargs)
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 5.0, self._log_fh, self._tmp_log)

    def wait_ready(self, timeout: float | None = None) -> "RpcServer":
        """Waits until the server answers the RPC handshake (see :func:`check_rpc_server`)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("rpc-server was not started; call start()")
        timeout = self.startup_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                tail = self.log_tail(20)
                raise RuntimeError(f"rpc-server {how} during startup ({' '.join(self.command())})"
                                   + (f"; last log lines:\n{tail}" if tail else ""))
            try:
                check_rpc_server(self.endpoint, timeout=2.0)
                return self
            except RpcError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"rpc-server at {self.endpoint} did not answer within {timeout:g} s "
                                       f"(log: {self._log_path})") from None
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote."""
        if self._log_fh is not None:
            try:
                self._log_fh.flush()
            except (OSError, ValueError):
                pass
        return _tail(self._log_path, lines)

    def kill(self) -> None:
        """Kills the server at once (SIGKILL): how a crashed or powered-off machine looks to clients."""
        if self.is_running():
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stops the server (SIGTERM, SIGKILL after ``timeout``); returns its exit code."""
        with self._lock:
            proc = self._proc
            self._stop_process(timeout)
            return proc.poll() if proc is not None else None

    def _stop_process(self, timeout: float) -> None:
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if self._proc is not None:
            _terminate(self._proc, timeout, self._log_fh, self._tmp_log)
        elif self._log_fh is not None:
            self._log_fh.close()
        self._log_fh = None
        if self._tmp_log is not None:
            self._log_path = None
        self._tmp_log = None

    def __enter__(self) -> "RpcServer":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"RpcServer({self.endpoint}, {state})"

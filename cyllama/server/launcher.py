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

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Mapping, Sequence

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


def _connect_host(host: str) -> str:
    """The address a client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in _connect_host(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]") or "127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (or would stop a server binding it)."""
    bind_host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bind_host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # the server will report the bad host itself
    for family, socktype, proto, _, addr in infos:
        with socket.socket(family, socktype, proto) as s:
            if os.name == "posix":
                # Lets the check ignore TIME_WAIT leftovers; a live listener still makes bind fail.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1), errno.EACCES):
                    return True
    # A listener on a wildcard address of another family may not stop the bind; try to connect.
    try:
        with socket.create_connection((_connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


def _signal_group(proc: subprocess.Popen, kill: bool) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        elif kill:
            proc.kill()
        else:
            proc.terminate()
    except (ProcessLookupError, PermissionError):
        pass
    except OSError:
        pass


def _terminate(proc: subprocess.Popen, timeout: float, log_fh: IO[bytes] | None, tmp_log: str | None) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout``, reap it, drop the log."""
    try:
        if proc.poll() is None:
            _signal_group(proc, kill=False)
            try:
                proc.wait(timeout=max(timeout, 0.0))
            except subprocess.TimeoutExpired:
                _signal_group(proc, kill=True)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
                    pass
    finally:
        if log_fh is not None:
            try:
                log_fh.close()
            except OSError:
                pass
        if tmp_log is not None:
            try:
                os.unlink(tmp_log)
            except OSError:
                pass


def _tail(path: str | os.PathLike | None, lines: int, max_bytes: int = 64 * 1024) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class ServerLauncher:
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
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if isinstance(extra_args, (str, bytes)):
            raise TypeError("extra_args must be a sequence of strings, not one string")
        self.host = host
        self._requested_port = port
        self.port = port
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        self.extra_args = [os.fspath(a) for a in extra_args]
        self.api_key = api_key
        self.startup_timeout = float(startup_timeout)
        self.log_file = Path(log_file).expanduser() if log_file is not None else None
        self.env = dict(env) if env else {}
        self._proc: subprocess.Popen | None = None
        self._log_fh: IO[bytes] | None = None
        self._log_path: str | None = None
        self._tmp_log: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.RLock()
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
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """Where the running (or last) server writes its output."""
        return Path(self._log_path) if self._log_path else None

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

    # -- lifecycle ----------------------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be loading: see :meth:`wait_ready`)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self, timeout: float | None = None) -> "ServerLauncher":
        """Spawns the server and waits until it is ready (``timeout`` defaults to ``startup_timeout``).

        Raises FileNotFoundError (model or binary gone), OSError (port in use), RuntimeError (the
        server exited during startup; the message ends with its last log lines) or TimeoutError.
        """
        with self._lock:
            if self.is_running():
                raise RuntimeError(f"llama-server is already running (pid {self.pid}) at {self.base_url}")
            self._cleanup()
            from .._errors import check_path

            check_path(self.model_path, "model")
            if not self.binary.exists():
                raise FileNotFoundError(f"llama-server binary not found: {self.binary}")
            if self._requested_port == 0:
                self.port = _free_port(self.host)
            else:
                self.port = self._requested_port
                if _port_in_use(self.host, self.port):
                    raise OSError(errno.EADDRINUSE,
                                  f"port {self.port} on {self.host} is already in use; choose another "
                                  "port, or port=0 for a free one")
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
            fd, name = tempfile.mkstemp(prefix="cyllama-llama-server-", suffix=".log")
            self._log_fh = os.fdopen(fd, "wb")
            self._log_path = self._tmp_log = name
        env = os.environ.copy()
        env.update(self.env)
        if self.api_key is not None:
            env["LLAMA_API_KEY"] = self.api_key
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                          stderr=subprocess.STDOUT, env=env, close_fds=True, **kwargs)
        except BaseException:
            self._cleanup()
            raise
        # The backstop: runs on garbage collection or at interpreter exit if stop() never ran.
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 5.0, self._log_fh, self._tmp_log)

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

    def wait_ready(self, timeout: float | None = None) -> "ServerLauncher":
        """Polls ``GET /health`` until it answers 200; raises RuntimeError if the process exits
        and TimeoutError after ``timeout`` seconds (default ``startup_timeout``)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("llama-server was not started; call start()")
        timeout = self.startup_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            rc = proc.poll()
            if rc is not None:
                raise RuntimeError(self._exit_message(rc))
            if self._health() == 200 and proc.poll() is None:
                return self
            if time.monotonic() >= deadline:
                tail = self.log_tail(20)
                raise TimeoutError(f"llama-server did not become ready at {self.base_url} within {timeout:g} s "
                                   f"(log: {self._log_path})" + (f"; last log lines:\n{tail}" if tail else ""))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _exit_message(self, rc: int) -> str:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        if self._log_fh is not None:
            try:
                self._log_fh.flush()
            except (OSError, ValueError):
                pass
        tail = self.log_tail(30)
        msg = f"llama-server {how} during startup (command: {' '.join(self.command())})"
        return msg + (f"; last log lines:\n{tail}" if tail else "; it wrote no log output")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote (empty once a temporary log is removed by stop())."""
        return _tail(self._log_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Sends SIGTERM to the server's process group, SIGKILL after ``timeout`` seconds, and reaps
        it. Returns its exit code (None if it was never started). Safe to call more than once."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None:
                finalizer.detach()
            _terminate(proc, timeout, self._log_fh, self._tmp_log)
            self._log_fh = None
            if self._tmp_log is not None:
                self._log_path = None
            self._tmp_log = None
            return proc.poll()

    def _cleanup(self) -> None:
        """Forgets a previous (exited) process and closes its log."""
        if self._proc is not None or self._log_fh is not None:
            proc = self._proc
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None:
                finalizer.detach()
            if proc is not None:
                _terminate(proc, 0.0, self._log_fh, self._tmp_log)
            elif self._log_fh is not None:
                self._log_fh.close()
            self._proc = self._log_fh = None
            self._tmp_log = None

    def __enter__(self) -> "ServerLauncher":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"ServerLauncher({str(self.model_path)!r}, {self.base_url}, {state})"

"""A native tool (``llama-server``, ``rpc-server``) run as a managed child process: its own process
group, its output in a log file, a free port when asked for port 0, a readiness probe while it
starts, SIGTERM then SIGKILL to stop it, and a finalizer that stops one that is never stopped (on
garbage collection or at normal interpreter exit).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Mapping, TypeVar


def _connect_host(host: str) -> str:
    """The address a client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


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


_P = TypeVar("_P", bound="NativeProcess")


class NativeProcess:
    """What :class:`~cyllama.server.launcher.ServerLauncher` and
    :class:`~cyllama.server.rpc_server.RpcServer` share: one process of a native tool listening on
    ``host:port``. A subclass sets :attr:`_name` and implements :meth:`command`, :meth:`_where` (the
    address for messages) and :meth:`_ready` (the readiness probe); it may extend
    :meth:`_environment` and :meth:`_check_start`.
    """

    _name = "process"
    _restore_signals = True  # False: the child inherits Python's ignored signals (SIGPIPE)

    def _init_process(self, host: str, port: int, startup_timeout: float, log_file: str | os.PathLike | None,
                      env: Mapping[str, str] | None) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self.host = host
        self._requested_port = self.port = port
        self.startup_timeout = float(startup_timeout)
        self.log_file = Path(log_file).expanduser() if log_file is not None else None
        self.env = dict(env) if env else {}
        self._proc: subprocess.Popen | None = None
        self._log_fh: IO[bytes] | None = None
        self._log_path: str | None = None
        self._tmp_log: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.RLock()

    # -- what a subclass provides -------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _check_start(self) -> None:
        """Checks made before each start (files that may have gone since construction)."""

    # -- properties ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """Where the running (or last) process writes its output."""
        return Path(self._log_path) if self._log_path else None

    def is_running(self) -> bool:
        """Whether the process is alive (it may still be starting: see :meth:`wait_ready`)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self: _P, timeout: float | None = None) -> _P:
        """Spawns the process and waits until it is ready (``timeout`` defaults to ``startup_timeout``).

        Raises FileNotFoundError (a file it needs is gone), OSError (port in use), RuntimeError (the
        process exited during startup; the message ends with its last log lines) or TimeoutError.
        """
        with self._lock:
            if self.is_running():
                raise RuntimeError(f"{self._name} is already running (pid {self.pid}) at {self._where()}")
            self._cleanup()
            self._check_start()
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
            fd, name = tempfile.mkstemp(prefix=f"cyllama-{self._name}-", suffix=".log")
            self._log_fh = os.fdopen(fd, "wb")
            self._log_path = self._tmp_log = name
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                          stderr=subprocess.STDOUT, env=self._environment(), close_fds=True,
                                          restore_signals=self._restore_signals, **kwargs)
        except BaseException:
            self._cleanup()
            raise
        # The backstop: runs on garbage collection or at interpreter exit if stop() never ran.
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 5.0, self._log_fh, self._tmp_log)

    def wait_ready(self: _P, timeout: float | None = None) -> _P:
        """Polls the readiness probe until it succeeds; raises RuntimeError if the process exits
        and TimeoutError after ``timeout`` seconds (default ``startup_timeout``)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self._name} was not started; call start()")
        timeout = self.startup_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            rc = proc.poll()
            if rc is not None:
                raise RuntimeError(self._exit_message(rc))
            if self._ready() and proc.poll() is None:
                return self
            if time.monotonic() >= deadline:
                tail = self.log_tail(20)
                raise TimeoutError(f"{self._name} did not become ready at {self._where()} within {timeout:g} s "
                                   f"(log: {self._log_path})" + (f"; last log lines:\n{tail}" if tail else ""))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _exit_message(self, rc: int) -> str:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        tail = self.log_tail(30)
        msg = f"{self._name} {how} during startup (command: {' '.join(self.command())})"
        return msg + (f"; last log lines:\n{tail}" if tail else "; it wrote no log output")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote (empty once a temporary log is removed by stop())."""
        if self._log_fh is not None:
            try:
                self._log_fh.flush()
            except (OSError, ValueError):
                pass
        return _tail(self._log_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Sends SIGTERM to the process group, SIGKILL after ``timeout`` seconds, and reaps it.
        Returns its exit code (None if it was never started). Safe to call more than once."""
        with self._lock:
            proc = self._proc
            self._release(timeout)
            return proc.poll() if proc is not None else None

    def _release(self, timeout: float) -> None:
        """Stops the process (if any) and closes its log; a temporary log is removed."""
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

    def _cleanup(self) -> None:
        """Forgets a previous (exited) process and closes its log."""
        self._release(0.0)
        self._proc = None

    def __enter__(self: _P) -> _P:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""llama.cpp's RPC backend (ggml-rpc): a model's layers on other machines running ``rpc-server``.

Each ``host:port`` names an ``rpc-server`` (llama.cpp's own, ``cyllama rpc-server`` starts it).
:func:`rpc_devices` turns the endpoints into ggml devices through the RPC backend's registry
(``ggml_backend_rpc_add_server``, found with ``ggml_backend_reg_get_proc_address`` as llama.cpp's
``common/arg.cpp`` does); a model loaded with them in ``llama_model_params.devices`` places its
layers there. The devices are not added to ggml's global registry, so models loaded without
``rpc_servers`` (and :func:`cyllama.llama.devices`) never touch the servers.

ggml-rpc aborts the whole process (``GGML_ABORT``) when it cannot connect, when the handshake
fails, and when a server dies or drops the connection during a call. So before a server is
handed to ggml, Python connects and performs the protocol's HELLO handshake itself
(:func:`check_rpc_server`), turning an unreachable host, a wrong port, a busy server or a version
mismatch into :class:`~cyllama.RpcError`. Freeing a model or context whose server has gone away
would abort too, so the free is skipped (the memory is leaked, with a warning) when a server no
longer accepts connections. A server dying *during* a computation cannot be caught in-process:
ggml ends the process, after :func:`install_abort_message` has written which servers were in use
and what to do. Run such a process under a supervisor (see ``docs/multi-host.md``).

An ``rpc-server`` serves one client connection at a time, and the protocol has no
authentication: bind it to loopback or a private network only.
"""

from __future__ import annotations

import atexit
import collections
import errno
import logging
import os
import re
import select
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from .._errors import RpcError
from .._ffi import ffi
from ._backend import ggml_backend_load_all, lib

__all__ = ["RpcError", "DEFAULT_PORT", "CONNECT_TIMEOUT", "supports_rpc", "parse_rpc_servers",
           "check_rpc_server", "refuses_connections", "rpc_devices", "model_devices", "load_model",
           "guarded_free", "install_abort_message"]

log = logging.getLogger("cyllama")

DEFAULT_PORT = 50052
CONNECT_TIMEOUT = 5.0  # seconds for the connection and the handshake of one server

# The wire protocol of the pinned ggml-rpc (ggml-rpc.h, ggml-rpc.cpp; tests/test_rpc.py checks them):
# request  | cmd (1 byte) | size (uint64) | data |, response | size (uint64) | data |
PROTO_MAJOR, PROTO_MINOR = 7, 0  # RPC_PROTO_MAJOR_VERSION, RPC_PROTO_MINOR_VERSION
_CMD_HELLO = 14                   # RPC_CMD_HELLO, fixed across versions
_CONN_CAPS_SIZE = 24              # RPC_CONN_CAPS_SIZE (transport.h)
_HELLO_RSP_SIZE = 4 + _CONN_CAPS_SIZE  # major, minor, patch, padding, conn_caps

_ENDPOINT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?):(\d{1,5})$")

_lock = threading.RLock()
_live: collections.Counter[str] = collections.Counter()  # endpoint -> models of this process on it
_registered: list[str] = []  # endpoints handed to ggml, in order
_add_server: Any = None


def supports_rpc() -> bool:
    """Whether this build has llama.cpp's RPC backend."""
    ggml_backend_load_all()
    return lib.ggml_backend_reg_by_name(b"RPC") != ffi.NULL


def _split(endpoint: str) -> tuple[str, int]:
    m = _ENDPOINT.match(endpoint)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"RPC server {endpoint!r} must be 'host:port' (an IPv4 address or host name, and a "
                         "port in 1..65535), e.g. '192.168.1.10:50052'")
    return m.group(1), int(m.group(2))


def parse_rpc_servers(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The endpoints in ``value``: a list of ``"host:port"`` or one comma-separated string
    (llama-cpp-python's and llama.cpp's ``--rpc`` form). ``None`` and ``""`` mean none.

    Raises ``TypeError`` for other types and ``ValueError`` for a malformed or repeated endpoint.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.strip():
            return ()
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(f"rpc_servers must be a list of 'host:port' strings or one comma-separated string, "
                        f"got {type(value).__name__}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"rpc_servers entries must be 'host:port' strings, got {item!r}")
        endpoint = item.strip()
        if not endpoint:
            raise ValueError(f"rpc_servers has an empty entry: {value!r}")
        _split(endpoint)
        if endpoint in out:
            raise ValueError(f"RPC server {endpoint} is listed twice")
        out.append(endpoint)
    return tuple(out)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect(endpoint: str, timeout: float) -> socket.socket:
    """A TCP connection to ``endpoint`` (IPv4, resolved as ggml-rpc resolves it)."""
    host, port = _split(endpoint)
    try:
        addr = socket.gethostbyname(host)
    except OSError as exc:
        raise RpcError(f"RPC server {endpoint}: cannot resolve host {host!r} ({exc})") from None
    try:
        return socket.create_connection((addr, port), timeout=timeout)
    except ConnectionRefusedError:
        raise RpcError(f"RPC server {endpoint}: connection refused, nothing listens on port {port} "
                       "(is rpc-server running there, on this port?)") from None
    except socket.timeout:
        raise RpcError(f"RPC server {endpoint}: no connection within {timeout:g} s "
                       "(the host is unreachable, or a firewall drops the packets)") from None
    except OSError as exc:
        raise RpcError(f"RPC server {endpoint}: cannot connect ({exc.strerror or exc})") from None


def check_rpc_server(endpoint: str, timeout: float = CONNECT_TIMEOUT) -> tuple[int, int, int]:
    """Connects to an ``rpc-server`` and performs the protocol's HELLO handshake, as ggml-rpc does
    before using it. Returns the server's protocol version ``(major, minor, patch)``.

    Raises :class:`~cyllama.RpcError` (a ``ConnectionError``) naming the problem: the host does
    not resolve or cannot be reached, nothing listens on the port, the peer is not an rpc-server
    (a wrong port), the server is busy with another client (it serves one at a time), or it
    speaks another protocol version. Nothing is registered with ggml.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    deadline = time.monotonic() + timeout
    with _connect(endpoint, timeout) as sock:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        not_rpc = (f"RPC server {endpoint}: the peer is not an rpc-server speaking protocol "
                   f"{PROTO_MAJOR}.x (a wrong port?)")
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            head = _recv_exact(sock, 8)
            if len(head) < 8:
                raise RpcError(not_rpc + ": it closed the connection during the handshake")
            if struct.unpack("<Q", head)[0] != _HELLO_RSP_SIZE:
                raise RpcError(not_rpc + ": its answer to the handshake has the wrong size")
            body = _recv_exact(sock, _HELLO_RSP_SIZE)
        except socket.timeout:
            raise RpcError(f"RPC server {endpoint}: connected, but no answer to the handshake within "
                           f"{timeout:g} s. An rpc-server serves one client at a time, so it is probably busy "
                           "with another process; or this port is not an rpc-server") from None
        except ConnectionError:
            raise RpcError(not_rpc + ": it reset the connection during the handshake") from None
        if len(body) < _HELLO_RSP_SIZE:
            raise RpcError(not_rpc + ": it closed the connection during the handshake")
    major, minor, patch = body[0], body[1], body[2]
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise RpcError(f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this build "
                       f"{PROTO_MAJOR}.{PROTO_MINOR}.x: run an rpc-server from the same llama.cpp version")
    return major, minor, patch


def refuses_connections(endpoint: str, wait: float = 0.25) -> bool:
    """Whether the host at ``endpoint`` answers that nothing listens there any more (refused, or
    the network says it is unreachable, within ``wait`` seconds): a server that died or stopped.

    No handshake and no blocking: an rpc-server busy with this process's own connection has a
    one-place accept queue that soon stops answering new connections, which counts as alive. An
    "alive" answer is reused for a second (closing a context and then its model asks twice).
    """
    seen = _alive_at.get(endpoint)
    if seen is not None and time.monotonic() - seen < 1.0:
        return False
    gone = _refuses(endpoint, wait)
    if not gone:
        _alive_at[endpoint] = time.monotonic()
    return gone


_alive_at: dict[str, float] = {}


def _refuses(endpoint: str, wait: float) -> bool:
    host, port = _split(endpoint)
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        err = sock.connect_ex((addr, port))
        if err in _IN_PROGRESS:
            _, ready, _ = select.select([], [sock], [], wait)
            if not ready:
                return False  # still connecting: a full accept queue, or a slow network
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return err in _GONE


_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)}
_GONE = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET, errno.ETIMEDOUT,
         getattr(errno, "WSAECONNREFUSED", -1)}


def _add_server_fn() -> Any:
    global _add_server
    if _add_server is None:
        ggml_backend_load_all()
        reg = lib.ggml_backend_reg_by_name(b"RPC")
        if reg == ffi.NULL:
            raise RuntimeError("this build of llama.cpp has no RPC backend (build it with GGML_RPC=ON)")
        ptr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
        if ptr == ffi.NULL:
            raise RuntimeError("the RPC backend does not export ggml_backend_rpc_add_server")
        _add_server = ffi.cast("ggml_backend_reg_t (*)(const char *)", ptr)
    return _add_server


def rpc_devices(endpoints: Iterable[str], timeout: float = CONNECT_TIMEOUT) -> list[Any]:
    """The ggml devices of the RPC servers at ``endpoints`` (each server may offer several).

    Each server is checked first (:func:`check_rpc_server`; only a TCP connect for a server a
    model of this process already uses, whose one connection is ours), then added through the
    RPC backend's ``ggml_backend_rpc_add_server``.
    """
    endpoints = parse_rpc_servers(list(endpoints))
    with _lock:
        add_server = _add_server_fn()
        for endpoint in endpoints:
            if _live[endpoint] > 0:  # our own connection is open: the handshake would queue behind it
                if refuses_connections(endpoint):
                    raise RpcError(f"RPC server {endpoint} (used by a model loaded earlier) no longer accepts "
                                   "connections")
            else:
                check_rpc_server(endpoint, timeout)
        install_abort_message()
        out = []
        for endpoint in endpoints:
            reg = add_server(endpoint.encode())
            n = lib.ggml_backend_reg_dev_count(reg) if reg != ffi.NULL else 0
            if n == 0:
                raise RpcError(f"RPC server {endpoint} offers no devices")
            if endpoint not in _registered:
                _registered.append(endpoint)
            out.extend(lib.ggml_backend_reg_dev_get(reg, i) for i in range(n))
        return out


def _local_offload_devices() -> list[Any]:
    """The local GPUs llama.cpp picks by default (discrete GPUs; integrated ones if there are none)."""
    gpus, igpus, ids = [], [], set()
    props = ffi.new("struct ggml_backend_dev_props *")
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = int(lib.ggml_backend_dev_type(dev))
        if kind == lib.GGML_BACKEND_DEVICE_TYPE_GPU:
            lib.ggml_backend_dev_get_props(dev, props)
            dev_id = ffi.string(props.device_id) if props.device_id != ffi.NULL else None
            if dev_id is None or dev_id not in ids:
                gpus.append(dev)
                if dev_id is not None:
                    ids.add(dev_id)
        elif kind == lib.GGML_BACKEND_DEVICE_TYPE_IGPU:
            if not igpus or lib.ggml_backend_dev_backend_reg(dev) == lib.ggml_backend_dev_backend_reg(igpus[-1]):
                igpus.append(dev)
    return gpus + (igpus if not gpus else [])


def model_devices(endpoints: Sequence[str], timeout: float = CONNECT_TIMEOUT) -> list[Any]:
    """The devices a model with ``rpc_servers`` is placed on, in llama.cpp's default order: the RPC
    servers' devices first (fewer network transfers), then the local GPUs. Layers that are not
    offloaded (``n_gpu_layers``) stay on the local CPU. ``tensor_split`` follows this order."""
    devs = rpc_devices(endpoints, timeout) + _local_offload_devices()
    if len(devs) > int(lib.llama_max_devices()):
        raise ValueError(f"{len(devs)} devices (RPC servers and local GPUs) exceed llama.cpp's maximum of "
                         f"{int(lib.llama_max_devices())}")
    return devs


def hold(endpoints: Sequence[str]) -> None:
    """Records that a model of this process is loaded on ``endpoints``."""
    with _lock:
        _live.update(endpoints)


def guarded_free(free: Callable[[Any], None], endpoints: Sequence[str], *, release: bool = False
                 ) -> Callable[[Any], None]:
    """``free`` for a native object with buffers on ``endpoints``, skipped (leaking the object, with
    a warning) when a server no longer accepts connections: ggml-rpc would abort the process
    trying to free its remote memory (see :func:`refuses_connections`). ``release`` marks the end of a model's use of the servers."""
    endpoints = tuple(endpoints)

    def guarded(ptr: Any) -> None:
        try:
            gone = [e for e in endpoints if refuses_connections(e)]
            if gone:
                log.warning("RPC server(s) %s went away: not freeing a native object that has memory there "
                            "(ggml-rpc would abort the process); restart this process to reclaim it",
                            ", ".join(gone))
                return
            free(ptr)
        finally:
            if release:
                with _lock:
                    _live.subtract(endpoints)
                    for e in endpoints:
                        if _live[e] <= 0:
                            del _live[e]

    return guarded


_previous_abort: Any = None
_abort_installed = False


@ffi.callback("void(*)(const char *)", onerror=lambda *a: None)
def _on_abort(message: Any) -> None:  # pragma: no cover - runs as the process ends
    text = ffi.string(message).decode("utf-8", "replace") if message != ffi.NULL else "ggml aborted"
    out = text.rstrip("\n") + "\n"
    if _registered and ("RPC" in text or "connect" in text):
        out += (f"cyllama: ggml stopped the process; it was using the RPC servers {', '.join(_registered)}. "
                "ggml-rpc cannot recover when a server dies or drops the connection during a call: restart "
                "the rpc-server and this process (see docs/multi-host.md).\n")
    try:
        os.write(2, out.encode("utf-8", "replace"))
    except OSError:
        pass
    if _previous_abort not in (None, ffi.NULL):
        _previous_abort(message)


def _restore_abort() -> None:
    global _abort_installed
    if _abort_installed:
        lib.ggml_set_abort_callback(_previous_abort if _previous_abort is not None else ffi.NULL)
        _abort_installed = False


def install_abort_message() -> None:
    """Makes ggml's abort (which ends the process) say which RPC servers were in use and what to
    do. Installed when the first RPC server is used; removed at interpreter exit."""
    global _previous_abort, _abort_installed
    with _lock:
        if not _abort_installed:
            _previous_abort = lib.ggml_set_abort_callback(_on_abort)
            _abort_installed = True
            atexit.register(_restore_abort)


def load_model(endpoints: Sequence[str], load: Callable[[list[Any]], Any]) -> Any:
    """Loads a model placed on the RPC servers at ``endpoints``: ``load(devices)`` runs with the
    devices of :func:`model_devices`, under the lock that keeps this process's checks from
    queueing behind its own connections. A model that loads is recorded as using the servers."""
    with _lock:
        ptr = load(model_devices(endpoints))
        if ptr != ffi.NULL:
            hold(endpoints)
        return ptr

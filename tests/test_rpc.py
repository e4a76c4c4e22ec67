"""A model split across machines with llama.cpp's RPC backend: two real ``rpc-server`` processes on
loopback stand in for two machines.

ggml-rpc aborts the process when a server dies during a call, so every test where a server dies
runs the client in a child process and asserts on how that process ends. The greedy comparisons
accept a divergence only where the two tokens are near-tied (as tests/test_speculative.py does).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from cyllama import LLM, GenerationConfig, LlamaContext, LlamaContextParams, LlamaModel, LlamaModelParams, RpcError
from cyllama._ffi import ffi, lib_dir
from cyllama._generation import eval_prompt
from cyllama.llama import rpc
from cyllama.server import RpcServer, ServerLauncher
from conftest import native_log_lines

ROOT = Path(__file__).resolve().parent.parent
NEAR_TIE = 0.3
PROMPT = "The three primary colors are"
N_PREDICT = 24


def mem_mib(pid: int) -> float:
    """The process's allocated data memory (VmData: what it allocated, whether or not the pages
    are resident now, which depends on the machine's memory pressure)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmData")


def greedy_tokens(llm: LLM, prompt: list[int]) -> list[int]:
    llm.reset()
    cfg = GenerationConfig(temperature=0.0, max_tokens=N_PREDICT, repeat_penalty=1.0, n_threads=2)
    return [c.token for c in llm.run(prompt, cfg) if c.token is not None]


def assert_same_greedy(model: LlamaModel, prompt: list[int], expected: list[int], got: list[int]) -> None:
    """``got`` equals ``expected``, or parts from it first where the two tokens are near-tied
    (evaluated on a local context)."""
    if expected == got:
        return
    i = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    assert i < min(len(expected), len(got)), f"one output is a prefix of the other: {expected} vs {got}"
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=len(prompt) + i + 16, n_threads=2))
    try:
        eval_prompt(ctx, prompt + expected[:i])
        logits = ctx.get_logits_ith(-1).copy()
    finally:
        ctx.close()
    margin = float(logits.max()) - min(float(logits[expected[i]]), float(logits[got[i]]))
    assert margin < NEAR_TIE, f"outputs part at token {i} where the model is sure (margin {margin:.3f})"


@contextlib.contextmanager
def two_servers():
    a, b = RpcServer(port=0, n_threads=1), RpcServer(port=0, n_threads=1)
    a.start()
    try:
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def servers():
    with two_servers() as pair:
        yield pair


@pytest.fixture(scope="module")
def local(model_path):
    """The local greedy reference: (prompt tokens, output tokens)."""
    with LLM(model_path, n_threads=2) as llm:
        prompt = llm.tokenize(PROMPT)
        return prompt, greedy_tokens(llm, prompt)


def child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -- endpoints and parameters ---------------------------------------------------------------------
def test_protocol_constants_match_the_pinned_header():
    header = (lib_dir().parent / "include" / "ggml-rpc.h").read_text()
    assert f"#define RPC_PROTO_MAJOR_VERSION    {rpc.PROTO_MAJOR}" in header
    assert f"#define RPC_PROTO_MINOR_VERSION    {rpc.PROTO_MINOR}" in header
    assert rpc.supports_rpc()


def test_parse_rpc_servers_accepts_both_forms():
    assert rpc.parse_rpc_servers("10.0.0.2:50052, gpu-box.lan:50053") == ("10.0.0.2:50052", "gpu-box.lan:50053")
    assert rpc.parse_rpc_servers(["10.0.0.2:50052"]) == ("10.0.0.2:50052",)
    assert rpc.parse_rpc_servers(None) == rpc.parse_rpc_servers("") == ()
    for bad, match in [("10.0.0.2", "host:port"), ("10.0.0.2:0", "host:port"), ("10.0.0.2:70000", "host:port"),
                       ("[::1]:50052", "host:port"), ("a:1,a:1", "twice"), ("a:1,", "empty"), ("a b:1", "host:port")]:
        with pytest.raises(ValueError, match=match):
            rpc.parse_rpc_servers(bad)
    with pytest.raises(TypeError):
        rpc.parse_rpc_servers(50052)
    with pytest.raises(TypeError):
        rpc.parse_rpc_servers(["a:1", 2])


def test_model_params_rpc_servers_and_tensor_split():
    p = LlamaModelParams(rpc_servers="h1:1,h2:2", tensor_split=[3, 1])
    assert p.rpc_servers == ("h1:1", "h2:2") and p.tensor_split == [3.0, 1.0]
    assert p._struct.tensor_split[0] == 3.0 and p._struct.tensor_split[1] == 1.0
    assert p.to_dict()["rpc_servers"] == ("h1:1", "h2:2")
    p.tensor_split = None
    assert p.tensor_split is None and p._struct.tensor_split == ffi.NULL
    for bad in ([1, -1], [float("nan")], [float("inf")], [1] * 17):
        with pytest.raises(ValueError):
            LlamaModelParams(tensor_split=bad)
    with pytest.raises(TypeError):
        LlamaModelParams(tensor_split="3,1")
    with pytest.raises(ValueError):
        LlamaModelParams(rpc_servers="no-port")


# -- through two servers --------------------------------------------------------------------------
def test_handshake(servers):
    for s in servers:
        assert rpc.check_rpc_server(s.endpoint) == (rpc.PROTO_MAJOR, rpc.PROTO_MINOR, 0)


def test_greedy_output_through_rpc_equals_local(model_path, servers, local):
    prompt, expected = local
    with LLM(model_path, n_threads=2, rpc_servers=[s.endpoint for s in servers]) as llm:
        assert llm.model.rpc_servers == tuple(s.endpoint for s in servers)
        got = greedy_tokens(llm, prompt)
        again = greedy_tokens(llm, prompt)  # a second call on the same remote buffers
        with LLM(model_path, n_threads=2) as reference:
            assert_same_greedy(reference.model, prompt, expected, got)
            assert_same_greedy(reference.model, prompt, got, again)


_BUFFER = re.compile(r"RPC\d+\[([\d.:]+)\] model buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def placement(model_path):
    """Loads the model on two fresh servers (memory growth is only meaningful on a server whose
    allocator has not held a model before): (MiB each server's memory grew by, the model buffer
    MiB on each server from llama.cpp's log, in server order, the weights' MiB, the MiB still
    allocated after the model closed)."""
    with two_servers() as (a, b):
        before = mem_mib(a.pid), mem_mib(b.pid)
        with native_log_lines() as lines:
            model = LlamaModel(model_path, LlamaModelParams(rpc_servers=[a.endpoint, b.endpoint]))
        try:
            grown = mem_mib(a.pid) - before[0], mem_mib(b.pid) - before[1]
            buffers = {m.group(1): float(m.group(2)) for line in lines if (m := _BUFFER.search(line))}
            assert set(buffers) == {a.endpoint, b.endpoint}, lines[-30:]
            weights = model.size / (1 << 20)
        finally:
            model.close()
        # the servers free asynchronously (ggml-rpc does not wait for the answer to a free)
        deadline = time.monotonic() + 10
        while True:
            left = mem_mib(a.pid) - before[0], mem_mib(b.pid) - before[1]
            if max(left) < 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return grown, [buffers[a.endpoint], buffers[b.endpoint]], weights, left


def test_layers_go_to_the_remote_devices(placement):
    grown, buffers, weights, left = placement
    # every layer is offloaded: the servers allocate the model buffers llama.cpp reports for them
    # (the weights but the input embeddings, which stay local)
    assert sum(buffers) > 0.6 * weights and min(buffers) > 15, (buffers, weights)
    for got, buffer in zip(grown, buffers):
        assert 0.95 * buffer <= got <= buffer + 8, (grown, buffers)
    assert max(left) < 4, left  # closing the model frees the remote memory


def test_tensor_split_is_honoured(model_path):
    with two_servers() as (a, b):
        before = mem_mib(a.pid), mem_mib(b.pid)
        with LLM(model_path, n_threads=2, rpc_servers=[a.endpoint, b.endpoint], tensor_split=[1, 0]) as llm:
            grown = mem_mib(a.pid) - before[0], mem_mib(b.pid) - before[1]
            assert grown[0] > 0.6 * llm.model.size / (1 << 20), grown  # every layer on the first server
            assert grown[1] < 8, grown
            assert llm("The sky is", max_tokens=4, temperature=0)  # and it generates


def test_two_models_share_a_server_in_one_process(model_path, servers):
    a, _ = servers
    with LLM(model_path, n_threads=2, rpc_servers=a.endpoint) as x, \
            LLM(model_path, n_threads=2, rpc_servers=a.endpoint) as y:
        assert x("Hello", max_tokens=3, temperature=0) == y("Hello", max_tokens=3, temperature=0)
        x.model.check_rpc_servers()


def test_drop_in_llama_takes_the_comma_separated_string(model_path, servers):
    from cyllama.llama_cpp import Llama

    llm = Llama(str(model_path), n_gpu_layers=-1, rpc_servers=",".join(s.endpoint for s in servers),
                n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.model_params.rpc_servers == tuple(s.endpoint for s in servers)
        out = llm("The sky is", max_tokens=4, temperature=0)
        assert out["choices"][0]["text"]
    finally:
        llm.close()


def test_llama_server_through_the_same_rpc_servers_agrees(model_path, servers, local, placement):
    """llama.cpp's own client (llama-server --rpc) on the same servers gives the same greedy tokens."""
    prompt, expected = local
    endpoints = ",".join(s.endpoint for s in servers)
    with ServerLauncher(model_path, port=0, n_ctx=256, n_threads=2,
                        extra_args=["--rpc", endpoints, "-lv", "4"]) as server:
        r = requests.post(server.base_url + "/completion", timeout=120, json={
            "prompt": prompt, "n_predict": N_PREDICT, "temperature": 0, "repeat_penalty": 1.0,
            "return_tokens": True, "cache_prompt": False})
        r.raise_for_status()
        native = r.json()["tokens"]
        log = server.log_tail(2000)
    # llama.cpp places the layers as we do: the same model buffer on each server
    native_buffers = {m.group(1): float(m.group(2)) for line in log.splitlines() if (m := _BUFFER.search(line))}
    assert [native_buffers.get(s.endpoint) for s in servers] == placement[1]
    with LLM(model_path, n_threads=2) as reference:
        assert_same_greedy(reference.model, prompt, expected, native)


# -- servers that cannot be used --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakePeer:
    """A TCP listener on loopback that answers each connection with ``reply`` (None: stays silent)."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.conns = reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.recv(64)
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_nothing_listening_is_a_clear_error(model_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    t = time.monotonic()
    with pytest.raises(RpcError, match="connection refused"):
        LLM(model_path, rpc_servers=[endpoint])
    with pytest.raises(ConnectionError, match=re.escape(endpoint)):
        LlamaModel(model_path, LlamaModelParams(rpc_servers=endpoint))
    assert time.monotonic() - t < 5


def test_unresolvable_and_unreachable_hosts(model_path):
    with pytest.raises(RpcError, match="cannot resolve host"):
        LLM(model_path, rpc_servers="no-such-host.invalid:50052")
    t = time.monotonic()
    with pytest.raises(RpcError, match="192.0.2.1:50052"):  # TEST-NET-1: routed nowhere
        rpc.check_rpc_server("192.0.2.1:50052", timeout=1.0)
    assert time.monotonic() - t < 3


def test_a_wrong_port_is_a_clear_error():
    http = FakePeer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    silent = FakePeer(None)
    old = FakePeer(struct.pack("<Q", 28) + bytes([6, 0, 0, 0]) + bytes(24))  # an rpc-server of protocol 6
    try:
        with pytest.raises(RpcError, match="not an rpc-server"):
            rpc.check_rpc_server(http.endpoint)
        with pytest.raises(RpcError, match="no answer to the handshake"):
            rpc.check_rpc_server(silent.endpoint, timeout=1.0)
        with pytest.raises(RpcError, match=r"speaks protocol 6\.0\.0"):
            rpc.check_rpc_server(old.endpoint)
    finally:
        http.close()
        silent.close()
        old.close()


def test_a_server_busy_with_another_client_is_a_clear_error(model_path, servers):
    a, _ = servers
    other = socket.create_connection(("127.0.0.1", a.port))  # another client holds its one connection
    try:
        other.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
        assert len(other.recv(64)) > 0
        with pytest.raises(RpcError, match="busy"):
            rpc.check_rpc_server(a.endpoint, timeout=1.0)
    finally:
        other.close()
    rpc.check_rpc_server(a.endpoint)  # free again once that client leaves
    assert a.is_running()  # and the abandoned handshake did not end it (SIGPIPE)


def test_vocab_only_does_not_contact_the_servers(model_path):
    model = LlamaModel(model_path, LlamaModelParams(vocab_only=True, rpc_servers=f"127.0.0.1:{_free_port()}"))
    try:
        assert model.rpc_servers == () and model.n_vocab > 0
    finally:
        model.close()


def test_rpc_servers_with_no_offloaded_layers_warns(model_path, servers):
    with pytest.warns(UserWarning, match="n_gpu_layers=0"):
        LlamaModel(model_path, LlamaModelParams(n_gpu_layers=0, rpc_servers=servers[0].endpoint)).close()


def test_bad_arguments_never_reach_ggml(model_path):
    with pytest.raises(ValueError):
        LLM(model_path, rpc_servers="localhost")
    with pytest.raises(ValueError):
        LLM(model_path, rpc_servers="localhost:50052", tensor_split=[-1])
    with pytest.raises(ValueError, match="timeout"):
        rpc.check_rpc_server("localhost:50052", timeout=0)


# -- a server that dies -----------------------------------------------------------------------------
LOAD_AND_WAIT = """
    import sys
    from cyllama import LLM, RpcError
    llm = LLM(sys.argv[1], n_threads=1, rpc_servers=sys.argv[2])
    llm("Hi", max_tokens=2, temperature=0)
    print("READY", flush=True)
    if sys.argv[3] == "generate":
        while True:
            llm("Once upon a time", max_tokens=64, temperature=0)
    sys.stdin.readline()
    try:
        llm.model.check_rpc_servers()
    except RpcError as exc:
        print("RpcError:", exc, flush=True)
    llm.close()
    print("CLOSED", flush=True)
"""


def test_a_server_dying_mid_generation_ends_the_client_with_a_clear_message(model_path):
    with RpcServer(port=0, n_threads=1) as server:
        proc = child(LOAD_AND_WAIT, str(model_path), server.endpoint, "generate")
        try:
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
            time.sleep(0.3)
            server.kill()
            t = time.monotonic()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert time.monotonic() - t < 30  # ends, does not hang
    assert proc.returncode != 0
    assert "Remote RPC server crashed" in err or "Failed to connect" in err, err[-2000:]  # ggml-rpc's words
    assert f"it was using the RPC servers {server.endpoint}" in err and "restart the rpc-server" in err


def test_a_server_gone_while_idle_is_an_rpc_error_and_closing_does_not_abort(model_path):
    with RpcServer(port=0, n_threads=1) as server:
        proc = child(LOAD_AND_WAIT, str(model_path), server.endpoint, "wait")
        try:
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
            server.kill()
            out, err = proc.communicate("\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert f"RpcError: RPC server(s) {server.endpoint}" in out and "refuse connections" in out
    assert out.strip().endswith("CLOSED")
    assert "went away: not freeing" in err


# -- command line ---------------------------------------------------------------------------------
def test_cli_rpc_server_binds_loopback_and_warns():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cyllama", "rpc-server", "--port", str(port), "-t", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert rpc.check_rpc_server(f"127.0.0.1:{port}", timeout=1.0)[0] == rpc.PROTO_MAJOR
                break
            except RpcError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "no authentication" in err
    assert f"endpoint       : 127.0.0.1:{port}" in out


def test_cli_generate_with_rpc(servers):
    endpoints = ",".join(s.endpoint for s in servers)
    ok = subprocess.run([sys.executable, "-m", "cyllama", "generate", "--rpc", endpoints, "-ts", "1,1", "-n", "6",
                         "--threads", "2", "-q", "-p", "Hello"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "cyllama", "generate", "--rpc", f"127.0.0.1:{_free_port()}", "-n", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "connection refused" in bad.stderr, bad.stderr[-2000:]


def test_serve_with_rpc(model_path, servers):
    from cyllama.server import EmbeddedServer

    with EmbeddedServer(model_path, port=0, n_ctx=256, n_parallel=1, n_threads=2,
                        rpc_servers=[s.endpoint for s in servers]) as s:
        r = requests.post(s.base_url + "/v1/completions", timeout=120,
                          json={"prompt": "The sky is", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        assert s.service.model.rpc_servers == tuple(x.endpoint for x in servers)

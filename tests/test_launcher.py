"""ServerLauncher: the real llama-server binary on the real default model, plus failure modes."""

from __future__ import annotations

import gc
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

from conftest import run_isolated
from cyllama.llama.server import ServerLauncher
from cyllama.llama.server.launcher import find_server_binary

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never route loopback traffic through a proxy from the environment
    return s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _script(tmp_path: Path, body: str, name: str = "fake-server") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_real_server_health_and_chat(model_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    # One thread: ggml's spinning worker threads crawl on a busy 2-core machine.
    launcher = ServerLauncher(model_path, port=0, n_ctx=512, n_threads=1, log_file=log)
    assert not launcher.is_running()
    with launcher as server:
        assert server.is_running()
        assert server.port != 0
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        http = _session()
        r = http.get(server.base_url + "/health", timeout=10)
        assert r.status_code == 200
        r = http.post(server.api_base + "/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 8
        pid = server.pid
        assert server.wait_ready(1) is server  # already ready: returns at once
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    assert not launcher.is_running()
    assert _wait_gone(pid)
    assert launcher.returncode is not None
    assert log.exists() and log.stat().st_size > 0  # the named log is kept
    assert launcher.stop() == launcher.returncode  # idempotent


def test_api_key_is_enforced(model_path: Path) -> None:
    with ServerLauncher(model_path, port=0, n_ctx=256, n_threads=1, api_key="sekrit",
                        extra_args=["--no-warmup"]) as server:
        assert "sekrit" not in " ".join(server.command())
        http = _session()
        assert http.get(server.api_base + "/models", timeout=10).status_code == 401
        ok = http.get(server.api_base + "/models", headers={"Authorization": "Bearer sekrit"}, timeout=10)
        assert ok.status_code == 200


def test_busy_port_is_refused_before_starting(model_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        launcher = ServerLauncher(model_path, port=port)
        with pytest.raises(OSError, match=str(port)):
            launcher.start()
        assert launcher.pid is None and not launcher.is_running()


def test_missing_binary(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ServerLauncher(model_path, server_binary=tmp_path / "nope" / "llama-server")
    monkeypatch.setenv("CYLLAMA_LIB_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="build_lib.py"):
        ServerLauncher(model_path)
    with pytest.raises(FileNotFoundError, match="build_lib.py"):
        find_server_binary()


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        ServerLauncher(tmp_path / "missing.gguf", port=0)


def test_model_removed_before_start(model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m.gguf"
    copy.write_bytes(b"GGUF")
    launcher = ServerLauncher(copy, port=0)
    copy.unlink()
    with pytest.raises(FileNotFoundError):
        launcher.start()


def test_corrupt_model_dies_with_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"NOTAGGUF" + os.urandom(4096))
    launcher = ServerLauncher(bad, port=0, startup_timeout=30)
    with pytest.raises(RuntimeError) as info:
        launcher.start()
    msg = str(info.value)
    assert "exited with code" in msg
    assert "last log lines" in msg and "failed to load model" in msg
    assert not launcher.is_running()
    assert launcher.log_path is None  # the temporary log was removed


def test_bogus_argument_dies_with_log_tail(model_path: Path) -> None:
    launcher = ServerLauncher(model_path, port=0, extra_args=["--no-such-flag-xyz"])
    with pytest.raises(RuntimeError, match="no-such-flag-xyz"):
        launcher.start()


def test_timeout_kills_the_whole_process_group(model_path: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # A "server" that never answers and leaves a child behind in its process group.
    fake = _script(tmp_path, f'sleep 60 &\necho $! > "{pidfile}"\necho "starting up"\nwait')
    launcher = ServerLauncher(model_path, port=0, server_binary=fake, startup_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="starting up"):
        launcher.start()
    assert time.monotonic() - t0 < 15
    assert not launcher.is_running()
    child = int(pidfile.read_text())
    assert _wait_gone(child), "the server's child outlived stop()"


def test_stop_escalates_to_sigkill(model_path: Path, tmp_path: Path) -> None:
    fake = _script(tmp_path, "trap '' TERM\nwhile true; do sleep 0.1; done")
    launcher = ServerLauncher(model_path, port=0, server_binary=fake)
    launcher._spawn()  # running, ignoring SIGTERM (never ready, so start() is not used)
    assert launcher.is_running()
    time.sleep(0.3)  # let the shell install its trap
    t0 = time.monotonic()
    assert launcher.stop(timeout=0.5) == -9
    assert time.monotonic() - t0 < 5
    assert not launcher.is_running()


def test_forgotten_launcher_is_stopped_by_gc(model_path: Path, tmp_path: Path) -> None:
    fake = _script(tmp_path, "exec sleep 60")
    launcher = ServerLauncher(model_path, port=0, server_binary=fake)
    launcher._spawn()
    pid = launcher.pid
    assert _pid_alive(pid)
    del launcher
    gc.collect()
    assert _wait_gone(pid)


def test_forgotten_server_does_not_outlive_python(model_path: Path, tmp_path: Path) -> None:
    p = run_isolated(f"""
        from cyllama.llama.server import ServerLauncher
        s = ServerLauncher({str(model_path)!r}, port=0, n_ctx=256, n_threads=1, extra_args=["--no-warmup"])
        s.start()
        print(s.pid, flush=True)
        keep = [s]  # still referenced at exit: only the atexit hook can stop it
    """, timeout=60)
    assert p.returncode == 0, p.stderr
    pid = int(p.stdout.split()[-1])
    assert _wait_gone(pid, 5)


def test_port_zero_picks_a_free_port(model_path: Path, tmp_path: Path) -> None:
    fake = _script(tmp_path, "exec sleep 60")
    a = ServerLauncher(model_path, port=0, server_binary=fake)
    with pytest.raises(TimeoutError):
        a.start(timeout=0.2)
    assert a.port != 0 and a.base_url.endswith(f":{a.port}")
    assert str(a.port) in a.command()
    assert not a.is_running()
    with pytest.raises(ValueError):
        ServerLauncher(model_path, port=70000)

"""Fuzzing the embedded server from its own OpenAPI document (schemathesis): valid and invalid
requests to every route get answers, never a 500 or a hang; errors are in OpenAI's shape; the
server process stays alive and ends with every slot free.

Bounded for CI (a few examples per route, deterministic, about a minute);
``CYLLAMA_FUZZ_EXAMPLES=N`` runs N random examples per route instead.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = int(os.environ.get("CYLLAMA_FUZZ_EXAMPLES", "0"))
STATUSES: collections.Counter = collections.Counter()  # (path, status) seen
CAP = {"max_tokens": 4, "max_completion_tokens": 4, "n_predict": 4, "n": 2}  # short generations: fuzz the input


@pytest.fixture(scope="module")
def fuzz_server(model_path):
    """``cyllama serve`` in its own process: a native crash shows as a dead process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cyllama", "serve", "-m", str(model_path), "--port", str(port),
                             "-c", "256", "-np", "2", "--threads", "2", "--max-queue", "16", "--max-body-mb", "1",
                             "--queue-timeout", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    yield proc, url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _capped(body):
    if isinstance(body, dict):
        for k, v in CAP.items():
            if isinstance(body.get(k), int) and not isinstance(body.get(k), bool) and body[k] > v:
                body[k] = v
    return body


def _check(case, proc) -> None:
    if isinstance(case.body, dict):
        case.body = _capped(case.body)
    response = case.call(timeout=60)  # a hang is a failure
    STATUSES[case.operation.path, response.status_code] += 1
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}")
    ctype = response.headers.get("content-type") or [""]  # schemathesis keeps each header's values in a list
    if response.status_code >= 400 and ctype[0].startswith("application/json"):
        err = response.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert proc.poll() is None, "the server process died"


def test_fuzz_routes(fuzz_server) -> None:
    """Every operation of /openapi.json, with valid (positive) and invalid (negative) inputs."""
    proc, url = fuzz_server
    api = schemathesis.openapi.from_url(url + "/openapi.json")
    ops = [r.ok() for r in api.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"}
    opts = settings(max_examples=EXAMPLES or 12, derandomize=not EXAMPLES, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    for op in ops:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @opts
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                _check(case, proc)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no body, no parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE, op.label
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"):  # both sides reached
        seen = {status for (p, status) in STATUSES if p == path}
        assert any(200 <= c < 300 for c in seen) and any(400 <= c < 500 for c in seen), (path, seen)


def test_fuzzed_server_is_alive_and_idle(fuzz_server) -> None:
    proc, url = fuzz_server
    assert proc.poll() is None
    deadline = time.monotonic() + 30
    while True:
        health = requests.get(url + "/health", timeout=10).json()
        if health["slots_busy"] == 0 and health["queue_length"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert health == {**health, "status": "ok", "slots_busy": 0, "queue_length": 0}
    r = requests.post(url + "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    metrics = requests.get(url + "/metrics", timeout=10).text
    assert "\ncyllama_slots_busy 0" in metrics

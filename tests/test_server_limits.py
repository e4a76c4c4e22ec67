"""The embedded server under bad input and load: malformed requests are 4xx in OpenAI's error shape
(never a 500), bodies have a size limit, a long wait for a slot is a 503 with Retry-After, and a
client that goes away frees its slot at once."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from cyllama.server.embedded import EmbeddedServer  # noqa: E402

CHAT = [{"role": "user", "content": "Hi"}]
LONG = {"prompt": "Count from one to one thousand:", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
LONGER = {**LONG, "max_tokens": 900}  # ~10 s on two loaded cores: a cancellation ends it long before


@pytest.fixture(scope="module")
def server(model_path):
    with EmbeddedServer(model_path, port=0, n_ctx=1024, n_parallel=2, n_threads=2, max_queue=8,
                        max_body_bytes=64 * 1024) as s:
        yield s


def _post(server, path, body, **kw):
    return requests.post(server.base_url + path, json=body, timeout=60, **kw)


def _raw(server, path, data: bytes):
    return requests.post(server.base_url + path, data=data, timeout=60, headers={"content-type": "application/json"})


def _wait(pred, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _assert_openai_error(r, status: int | None = None, param: str | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"]
    if param is not None:
        assert (err["param"] or "").startswith(param), err
    return err


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"999999": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": [[1]]}, "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"1": 1000}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": True, "stream_options": "yes"}, "stream_options"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": True, "stream_options": {"usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"messages": CHAT, "grammar": "root ::= ("}, "grammar"),
    ("/v1/chat/completions", {"messages": CHAT, "grammar": 'item ::= "a"'}, "grammar"),
    ("/v1/chat/completions", {"messages": CHAT, "grammar": "root ::= root"}, "grammar"),
    ("/v1/chat/completions", {"messages": CHAT, "grammar": ""}, "grammar"),
    ("/v1/chat/completions", {"messages": CHAT, "top_k": 2**40}, "top_k"),
    ("/v1/chat/completions", {"messages": CHAT, "dry_multiplier": 1, "dry_allowed_length": 2**40}, "dry_allowed_length"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template_kwargs": {"add_generation_prompt": False}},
     "chat_template_kwargs"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 9}, "n"),  # more generations than the queue holds
    ("/v1/completions", {"prompt": [1, 2, 49152]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], [-3]]}, "prompt"),
    ("/v1/completions", {"prompt": [10**30]}, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, "prompt"),
    ("/v1/embeddings", {"input": [10**30]}, "input"),
    ("/detokenize", {"tokens": [10**30]}, "tokens"),
])
def test_malformed_requests_are_4xx_in_openai_shape(server, path, body, param) -> None:
    before = server.service.engine.metrics["requests_total"]
    _assert_openai_error(_post(server, path, {"max_tokens": 2, **body} if path.startswith("/v1/c") else body),
                         400, param)
    assert server.service.engine.metrics["requests_total"] == before  # refused before it was queued


@pytest.mark.parametrize("raw", [
    b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "Hi"}], "top_n_sigma": Infinity}',
    b'{"messages": [{"role": "user", "content": "\\ud800 unpaired"}]}',
    b'{"messages": [{"role": "user", "content": "Hi"}]',
    b'\xff\xfe{}',
    b'[1, 2]',
])
def test_invalid_json_is_400(server, raw) -> None:
    _assert_openai_error(_raw(server, "/v1/chat/completions", raw), 400)


def test_paired_surrogate_escapes_are_fine(server) -> None:
    body = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 1}'
    assert _raw(server, "/v1/chat/completions", body).status_code == 200


def test_grammar_dead_end_is_the_requests_fault(server) -> None:
    """A grammar that parses but allows no token fails while generating: a 400 when the answer has
    not started, an error event in OpenAI's shape in a stream; the slot is freed either way."""
    body = {"prompt": "x", "max_tokens": 4, "grammar": "root ::= [\\x00]"}
    _assert_openai_error(_post(server, "/v1/completions", body), 400, "grammar")
    with _post(server, "/v1/completions", {**body, "stream": True}, stream=True) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: {")]
    assert events[-1]["error"]["param"] == "grammar"
    assert _wait(lambda: server.service.engine.busy_slots == 0)


def test_body_size_limit(server) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    err = _assert_openai_error(_raw(server, "/v1/chat/completions", big), 413)
    assert "larger than" in err["message"]

    def chunks():  # no Content-Length: the limit applies as the body arrives
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = requests.post(server.base_url + "/v1/chat/completions", data=chunks(), timeout=60,
                      headers={"content-type": "application/json"})
    _assert_openai_error(r, 413)
    small = json.dumps({"messages": CHAT, "max_tokens": 1}).encode()
    r = requests.post(server.base_url + "/v1/chat/completions", data=iter([small]), timeout=60,
                      headers={"content-type": "application/json"})
    assert r.status_code == 200


def test_non_streaming_client_disconnect_frees_its_slot_at_once(server) -> None:
    engine, counters = server.service.engine, server.service.counters
    cancelled, disconnects = engine.metrics["requests_cancelled"], counters["client_disconnects_total"]
    generated = engine.metrics["generated_tokens_total"]
    body = json.dumps(LONGER).encode()
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert _wait(lambda: engine.busy_slots == 1)
    assert _wait(lambda: engine.metrics["generated_tokens_total"] > generated)
    sock.close()
    # the handler looks every quarter second: the sequence is cancelled, not run to its end
    assert _wait(lambda: engine.busy_slots == 0, 30)
    assert engine.metrics["requests_cancelled"] == cancelled + 1
    assert engine.metrics["generated_tokens_total"] - generated < LONGER["max_tokens"]
    assert _wait(lambda: counters["client_disconnects_total"] == disconnects + 1)


def test_openapi_describes_the_request_bodies(server) -> None:
    doc = requests.get(server.base_url + "/openapi.json", timeout=30).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    top = schema["properties"]["top_logprobs"]["anyOf"]
    assert "messages" in schema["required"] and {"type": "integer", "minimum": 0, "maximum": 20} in top
    assert "4XX" in chat["responses"] and "Error" in doc["components"]["schemas"]
    assert "requestBody" in doc["paths"]["/detokenize"]["post"]


def test_queue_timeout_and_full_queue_are_503_with_retry_after(model_path) -> None:
    with EmbeddedServer(model_path, port=0, n_ctx=256, n_parallel=1, n_threads=2, max_queue=2,
                        queue_timeout=0.5) as s:
        engine = s.service.engine
        with cf.ThreadPoolExecutor(4) as ex:
            busy = ex.submit(_post, s, "/v1/completions", LONG)
            assert _wait(lambda: engine.busy_slots == 1)
            t0 = time.monotonic()
            waited = [ex.submit(_post, s, "/v1/completions", {**LONG, "max_tokens": 2}),
                      ex.submit(_post, s, "/v1/completions", {**LONG, "max_tokens": 2, "stream": True})]
            for f in waited:
                r = f.result(timeout=60)
                assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
                assert r.headers["content-type"].startswith("application/json")  # a stream that never started
                assert r.json()["error"]["code"] == "queue_timeout"
            assert time.monotonic() - t0 < 10
            assert busy.result(timeout=120).status_code == 200
        metrics = requests.get(s.base_url + "/metrics", timeout=30).text
        assert "\ncyllama_requests_timed_out_total 2" in metrics
        # a full queue is a 503 with Retry-After too
        with cf.ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda _: _post(s, "/v1/completions", {**LONG, "max_tokens": 40}), range(6)))
        full = [r for r in rs if r.status_code == 503]
        assert full and all(r.headers["Retry-After"] == "1" and r.json()["error"]["code"] in ("queue_full",
                                                                                               "queue_timeout")
                            for r in full)
        assert _wait(lambda: engine.busy_slots == 0 and engine.queue_length == 0)
        # an engine that no longer runs: /health says so, requests get 503 at once
        engine.close()
        h = requests.get(s.base_url + "/health", timeout=30)
        assert h.status_code == 503 and h.json()["status"] == "error"
        r = _post(s, "/v1/completions", {"prompt": "x", "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stopped"


def test_serve_cli_limits(model_path, tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cyllama", "serve", "-m", str(model_path), "--port", str(port),
                             "-c", "128", "-np", "1", "--threads", "2", "--max-body-mb", "0.01",
                             "--queue-timeout", "30"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(url + "/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return proc.poll() is not None
        assert _wait(up, 60) and proc.poll() is None
        r = requests.post(url + "/v1/completions", json={"prompt": "x" * 20_000}, timeout=30)
        assert r.status_code == 413
        assert requests.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=60).ok
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    bad = subprocess.run([sys.executable, "-m", "cyllama", "serve", "--queue-timeout", "-1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "non-negative" in bad.stderr

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cyllama", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_info() -> None:
    p = run("info", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["llama.cpp commit"] == "0c1e570"
    assert "CPU" in data["backends"]
    assert "AVX" in data["system info"] or "NEON" in data["system info"] or "CPU" in data["system info"]


def test_generate_streams_an_answer_with_stats() -> None:
    p = run("generate", "-p", "What is the capital of France?", "-n", "24", "--stream")
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
    assert "tok/s" in p.stderr and "generated 24 tokens" in p.stderr and "finish: length" in p.stderr


def test_generate_with_json_schema(tmp_path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                                  "required": ["city"]}))
    p = run("generate", "-p", "Which city is the capital of France? Answer in JSON.", "--json-schema", str(schema),
            "-n", "40", "-q")
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout)["city"], str)


def test_chat_keeps_the_conversation() -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "cyllama", "chat", "-n", "24"], input="Hello!\nAnd again?\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if "reused from cache" in line]
    assert lines, p.stderr  # the second turn reused the first turn's KV cache


def test_generate_bad_model_is_a_clear_error(tmp_path) -> None:
    p = run("generate", "-m", str(tmp_path / "missing.gguf"), "-n", "4")
    assert p.returncode == 1
    assert "not found" in p.stderr and "Traceback" not in p.stderr

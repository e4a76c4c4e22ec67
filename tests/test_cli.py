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
    assert "tok/s" in p.stderr and "generated:" in p.stderr


def test_generate_bad_model_is_a_clear_error(tmp_path) -> None:
    p = run("generate", "-m", str(tmp_path / "missing.gguf"), "-n", "4")
    assert p.returncode == 1
    assert "not found" in p.stderr and "Traceback" not in p.stderr

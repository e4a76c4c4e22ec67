"""``python -m cyllama.llama_cpp.server``: llama-cpp-python's server settings on cyllama's server."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyllama import _assets
from cyllama.llama_cpp.server.settings import (SETTINGS, UNSUPPORTED, SettingsError, parse_settings,
                                               server_kwargs)

ROOT = Path(__file__).resolve().parent.parent
ASSET = _assets.ASSETS["llama.cpp-source"]


def upstream_setting_names() -> list[str]:
    """The field names of llama-cpp-python's ModelSettings and ServerSettings, from the sdist."""
    import tarfile

    tar = _assets.cache_dir() / "downloads" / ASSET.filename
    if not tar.exists():
        pytest.skip(f"{ASSET.filename} is not downloaded yet")
    with tarfile.open(tar) as tf:
        text = tf.extractfile(f"llama_cpp_python-{ASSET.version}/llama_cpp/server/settings.py").read().decode()
    names = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and node.name in ("ModelSettings", "ServerSettings"):
            names += [n.target.id for n in node.body if isinstance(n, ast.AnnAssign)]
    return names


def test_every_upstream_setting_is_accepted_with_its_default() -> None:
    names = upstream_setting_names()
    assert len(names) > 50 and set(names) == set(SETTINGS) - {"n_parallel"}
    values = parse_settings(["--model", "m.gguf"])
    assert values["host"] == "localhost" and values["port"] == 8000 and values["n_ctx"] == 2048
    assert values["n_gpu_layers"] == 0 and values["verbose"] is True


def test_settings_map_onto_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("MODEL", "HOST", "PORT", "CONFIG_FILE"):
        monkeypatch.delenv(env, raising=False)
    v = parse_settings(["--model", "m.gguf", "--n_ctx", "512", "--n_gpu_layers", "-1", "--chat_format",
                        "chatml-function-calling", "--draft_model", "prompt-lookup-decoding", "--verbose", "false",
                        "--n_threads", "2", "--embedding", "true", "--cache", "true"])
    kw = server_kwargs(v)
    assert kw["n_ctx"] == 512 and kw["n_gpu_layers"] == 999 and kw["lookup"] == 10 and kw["n_threads"] == 2
    assert kw["chat_template"].startswith("{% for message in messages %}") and v["verbose"] is False
    monkeypatch.setenv("MODEL", "env.gguf")
    monkeypatch.setenv("PORT", "9001")
    v = parse_settings([])
    assert v["model"] == "env.gguf" and v["port"] == 9001


def test_bad_settings_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("MODEL", "HOST", "PORT", "CONFIG_FILE"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(SettingsError, match="unknown setting.*--n_ctxx"):
        parse_settings(["--model", "m.gguf", "--n_ctxx", "5"])
    with pytest.raises(SettingsError, match="--model is required"):
        parse_settings([])
    unsupported = [s for s in SETTINGS.values() if s.effect == UNSUPPORTED]
    assert {"lora_path", "tensor_split", "type_k"} <= {s.name for s in unsupported}
    with pytest.raises(SettingsError, match="--lora_path"):
        parse_settings(["--model", "m.gguf", "--lora_path", "x.gguf"])
    with pytest.raises(SettingsError, match="chat_format 'functionary-v2'"):
        server_kwargs(parse_settings(["--model", "m.gguf", "--chat_format", "functionary-v2"]))
    cfg = tmp_path / "c.json"
    cfg.write_text('{"port": 8123, "nope": 1, "models": [{"model": "m.gguf"}]}')
    with pytest.raises(SettingsError, match="unknown setting 'nope'"):
        parse_settings(["--config_file", str(cfg)])
    cfg.write_text('{"port": 8123, "models": [{"model": "m.gguf", "n_ctx": 256}]}')
    v = parse_settings(["--config_file", str(cfg)])
    assert v["port"] == 8123 and v["n_ctx"] == 256 and v["model"] == "m.gguf"
    cfg.write_text('{"models": [{"model": "a.gguf"}, {"model": "b.gguf"}]}')
    with pytest.raises(SettingsError, match="one model"):
        parse_settings(["--config_file", str(cfg)])
    proc = subprocess.run([sys.executable, "-m", "cyllama.llama_cpp.server", "--model", "m.gguf", "--bogus", "1"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "unknown setting(s) --bogus" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cyllama.llama_cpp.server", "--model", str(tmp_path / "no.gguf")],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_answers_the_openai_client(model_path: Path) -> None:
    openai = pytest.importorskip("openai")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "HOST", "PORT", "CONFIG_FILE")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "cyllama.llama_cpp.server", "--model", str(model_path),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "2",
                             "--api_key", "sekrit", "--verbose", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekrit", max_retries=0, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        assert models.data[0].id == model_path.name
        r = client.chat.completions.create(model=model_path.name, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hi."}])
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert isinstance(r.choices[0].message.content, str) and r.usage.completion_tokens >= 1
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

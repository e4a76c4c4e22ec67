"""The README examples of llama-cpp-python in ``examples/llama_cpp/`` (only the import changed) run
on cyllama's drop-in, each in its own interpreter, on the default model."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tiny_mmproj import make_mmproj, write_png  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "llama_cpp"


def run(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> str:
    e = {k: v for k, v in os.environ.items() if k != "MODEL"}
    e.update(env or {}, PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLES)]))
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=EXAMPLES, env=e,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_completion() -> None:
    out = ast.literal_eval(run("completion.py").strip().splitlines()[-1])
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"].startswith("Q: Name the planets in the solar system? A: ")
    assert out["usage"]["completion_tokens"] <= 32


def test_chat_completion() -> None:
    out = ast.literal_eval(run("chat_completion.py").strip().splitlines()[-1])
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"


def test_json_mode() -> None:
    lines = run("json_mode.py").strip().splitlines()
    assert isinstance(json.loads("\n".join(lines[:-1])), dict)
    assert list(json.loads(lines[-1])) == ["team_name"]


def test_function_calling() -> None:
    call = ast.literal_eval(run("function_calling.py").strip().splitlines()[-1])
    assert call["name"] == "UserDetail"
    args = json.loads(call["arguments"])
    assert set(args) == {"name", "age"} and isinstance(args["age"], int)


def test_embeddings() -> None:
    n, *shape = run("embeddings.py").split()
    assert n == "2" and shape[-1] == "576"  # per token (4 tokens) for this generative model


def test_speculative() -> None:
    assert run("speculative.py").strip().startswith("6, 7, 8")


def test_from_pretrained_from_the_hf_cache_offline(tmp_path: Path, model_path: Path) -> None:
    """The README's repository and pattern, found in a Hugging Face cache holding our model."""
    snap = tmp_path / "hub" / "models--lmstudio-community--Qwen3.5-0.8B-GGUF" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    os.symlink(model_path, snap / "Qwen3.5-0.8B-Q8_0.gguf")
    out = run("from_pretrained.py", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert out.splitlines()[0] == str(snap / "Qwen3.5-0.8B-Q8_0.gguf")


def test_multimodal(tmp_path: Path, model_path: Path) -> None:
    mmproj = make_mmproj(tmp_path / "tiny-mmproj.gguf", 576)
    y, x = np.mgrid[0:48, 0:64]
    png = write_png(tmp_path / "a.png", np.stack([x * 4, y * 5, (x + y) * 2], -1) % 256)
    role, prompt_tokens = run("multimodal.py", str(model_path), mmproj, png).split()
    assert role == "assistant" and int(prompt_tokens) > 20

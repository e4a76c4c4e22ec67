"""Every script in examples/ runs against the default model and prints what it promises.

Each runs in its own interpreter with the model path as its first argument (the convention of
all the model scripts; see examples/README.md). A new script must be added to EXPECTED.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyllama import _assets

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script -> (modules it needs beyond the core, strings its output must contain)
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "batch.py": ((), ("4 answers in", "#1 [", "#2 [", "#3 [")),
    "cancel.py": ((), ("finish_reason='cancelled'", "== still usable ==")),
    "chat.py": ((), ("assistant:", "reused from the KV cache")),
    "complete_and_stream.py": ((), ("joined == returned text: True", "prompt_tokens=", "tok/s=")),
    "core_generate.py": ((), ("The three primary colours are", "llama perf: load")),
    "embeddings.py": (("numpy",), ("embeddings: shape (4, 576)", "closest to 'Where is the cat?'")),
    "gguf_inspect.py": ((), ("general.architecture", "general.name = 'renamed by cyllama'")),
    "langchain_chain.py": (("langchain_core",), ("== tool call ==", "'name': 'GetWeather'", "== embeddings ==")),
    "llama_cpp_dropin.py": ((), ("[usage: {'prompt_tokens'", "completion tokens]")),
    "openai_client.py": (("openai",), ("get_weather {'city':", "2 embeddings of 576 dimensions")),
    "server_client.py": (("openai", "fastapi", "uvicorn"), ("serving on http://127.0.0.1:", "server stopped")),
    "structured_output.py": ((), ("parsed: name=", "parsed a dict with keys")),
    "transcribe.py": ((), ("ask what you can do for your country",)),
}
MODEL_SCRIPTS = set(EXPECTED) - {"transcribe.py"}  # transcribe.py takes an audio file instead


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    needs, expected = EXPECTED[script]
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{script} needs {module}, which is not installed")
    args = [str(_assets.default_model_path())] if script in MODEL_SCRIPTS else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    out = proc.stdout
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{out[-2000:]}\n{proc.stderr[-4000:]}"
    for s in expected:
        assert s in out, f"{script} did not print {s!r}:\n{out[-3000:]}"

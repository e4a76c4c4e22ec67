"""Shared fixtures: the real default model, vocab-only GGUFs, and a crash-isolating runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cyllama import LlamaContext, LlamaContextParams, LlamaModel, LlamaModelParams, _assets

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_path() -> Path:
    return _assets.default_model_path()


@pytest.fixture(scope="session")
def model(model_path: Path) -> LlamaModel:
    m = LlamaModel(model_path)
    yield m
    m.close()


@pytest.fixture()
def ctx(model: LlamaModel) -> LlamaContext:
    c = LlamaContext(model, LlamaContextParams(n_ctx=512, n_batch=512, n_seq_max=4))
    yield c
    c.close()


@pytest.fixture(scope="session")
def vocab_model():
    opened = {}

    def get(name: str) -> LlamaModel:
        if name not in opened:
            opened[name] = LlamaModel(_assets.vocab_model_path(name), LlamaModelParams(vocab_only=True))
        return opened[name]

    yield get
    for m in opened.values():
        m.close()


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter so that a native crash fails one test, not the run."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode >= 0, f"the process was killed by signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc

"""Shared fixtures: the real default model, vocab-only GGUFs, the default whisper model and the JFK
sample, a crash-isolating runner, and llama.cpp's log lines captured."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from cyllama import LlamaContext, LlamaContextParams, LlamaModel, LlamaModelParams, _assets, set_verbose

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


@contextlib.contextmanager
def native_log_lines() -> Iterator[list[str]]:
    """Collects every line llama.cpp, ggml and whisper.cpp log inside the block (verbose on)."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("cyllama.native")
    handler, level = Grab(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    set_verbose(True)
    try:
        yield lines
    finally:
        set_verbose(False)
        log.removeHandler(handler)
        log.setLevel(level)


# -- whisper (module-scoped: each test module opens its own context) --------------------------------

@pytest.fixture(scope="module")
def whisper_model() -> Path:
    from cyllama.whisper import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def jfk() -> Path:
    return _assets.speech_sample_path()


@pytest.fixture(scope="module")
def wctx(whisper_model: Path):
    from cyllama.whisper import WhisperContext

    ctx = WhisperContext(whisper_model)
    yield ctx
    ctx.close()

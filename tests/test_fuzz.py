"""Bounded fuzzing in CI (longer runs: ``python tests/fuzz_gguf.py --n 5000``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cyllama import _assets

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_gguf import fuzz  # noqa: E402


@pytest.mark.parametrize("vocab", ["gpt-2", "llama-spm"])
def test_mutated_gguf_files_never_kill_the_process(vocab) -> None:
    try:
        src = _assets.vocab_model_path(vocab)
    except Exception as exc:  # offline and not cached
        pytest.skip(f"llama.cpp's vocab models are not available: {exc}")
    crashes = fuzz(src, 60, seed=sum(map(ord, vocab)))
    assert crashes == [], crashes

"""conftest.py for llama-cpp-python's own test files, run against ``cyllama.llama_cpp``.

``tests/test_llama_cpp_upstream.py`` copies this file, as ``conftest.py``, next to the test files it
extracts from the llama-cpp-python sdist, and runs pytest there in a fresh interpreter. Nothing
here is imported by cyllama's own test run (the name matches no test pattern).

It does three things before the test modules are imported:

* ``llama_cpp`` and every ``llama_cpp.X`` resolve to ``cyllama.llama_cpp`` and its submodules;
* ``huggingface_hub.hf_hub_download`` returns the models we ship in place of the ones the tests
  name (their only change: the model paths), or skips the test with the reason when we have no
  model of that kind;
* ``./vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` (the path ``test_llama.py`` opens)
  points to the vocab-only GGUF of the same llama.cpp source.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest

import cyllama.llama_cpp as _dropin
from cyllama import _assets

# -- llama_cpp -> cyllama.llama_cpp --------------------------------------------------------------
sys.modules["llama_cpp"] = _dropin
for _info in pkgutil.iter_modules(_dropin.__path__):
    sys.modules[f"llama_cpp.{_info.name}"] = importlib.import_module(f"cyllama.llama_cpp.{_info.name}")

# -- models ------------------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent


def _chat_model() -> Path:
    return _assets.default_model_path()


def _embedding_model() -> Path:
    """The default model declared mean-pooled (``<arch>.pooling_type = 1``), as a sentence embedding
    model such as bge-small declares its pooling: one vector per input."""
    from cyllama.llama.gguf import GGUFContext

    out = HERE / "models" / "embedding-mean-pooled.gguf"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        with GGUFContext.from_file(_chat_model()) as g:
            g.set_val_u32(f"{g.get_val_str('general.architecture')}.pooling_type", 1)
            g.write_to_file(out)
    return out


def _missing(why: str) -> Callable[[], Path]:
    def skip() -> Path:
        pytest.skip(why)

    return skip


#: (repo_id, filename) the tests download -> the local model used in its place.
MODELS: Dict[Tuple[str, str], Callable[[], Path]] = {
    # the general text-generation model of test_llama.py (its Qwen-specific assertions are skipped below)
    ("lmstudio-community/Qwen3.5-0.8B-GGUF", "Qwen3.5-0.8B-Q8_0.gguf"): _chat_model,
    # a small transformer for the prompt-cache tests
    ("ggml-org/models", "tinyllamas/stories15M-q4_0.gguf"): _chat_model,
    ("CompendiumLabs/bge-small-en-v1.5-gguf", "bge-small-en-v1.5-q4_k_m.gguf"): _embedding_model,
    ("QuantFactory/mamba-130m-hf-GGUF", "mamba-130m-hf.Q2_K.gguf"): _missing(
        "needs a recurrent (Mamba) GGUF model, which is not available offline from the package registry"),
    ("tiiuae/Falcon-H1-Tiny-90M-Instruct-GGUF", "Falcon-H1-Tiny-90M-Instruct-Q2_K.gguf"): _missing(
        "needs a hybrid (Falcon-H1) GGUF model, which is not available offline from the package registry"),
}

#: Tests whose assertions hold only for the exact model they name (token ids, sampled text).
_QWEN = "Qwen3.5-0.8B, which is not available offline from the package registry"
MODEL_SPECIFIC = {
    "test_llama.py::test_real_model": f"asserts the token ids of the tokenizer of {_QWEN}",
    "test_llama.py::test_real_llama": f"asserts the text sampled from {_QWEN}",
    "test_llama.py::test_real_llama_repeated_prompt_cache": f"asserts the greedy continuation of {_QWEN}",
}


def hf_hub_download(repo_id: str, filename: str, *args: Any, **kwargs: Any) -> str:
    try:
        get = MODELS[(repo_id, filename)]
    except KeyError:
        raise LookupError(f"no local model for {repo_id}/{filename}: add it to MODELS in this conftest") from None
    return str(get())


def _link_vocab_model() -> None:
    dest = Path("vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_assets.vocab_model_path("llama-spm"), dest)


try:
    import huggingface_hub
except ImportError:  # pragma: no cover - the dev extra installs it
    pass
else:
    huggingface_hub.hf_hub_download = hf_hub_download

_link_vocab_model()


def pytest_collection_modifyitems(config: Any, items: list) -> None:
    for item in items:
        why = MODEL_SPECIFIC.get(item.nodeid.split("[")[0])
        if why:
            item.add_marker(pytest.mark.skip(reason=why))

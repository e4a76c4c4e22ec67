"""Llama.from_pretrained finds files already in the Hugging Face cache, offline too, and raises
huggingface_hub's error when a file is in no cache (a fake cache laid out as huggingface_hub does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cyllama import _assets
from cyllama.llama_cpp import Llama
from cyllama.llama_cpp._pretrained import find_in_hf_cache, hf_cache_root

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """``models--org--name/{blobs,refs/main,snapshots/<commit>}`` with snapshot links to blobs."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snap = repo_dir / "snapshots" / COMMIT
    for i, (name, data) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    return snap


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "hub"
    data = _assets.vocab_model_path("llama-spm").read_bytes()
    fake_hf_cache(root, "org/repo", {"README.md": b"hi", "sub/ggml-vocab-llama-spm-q8_0.gguf": data,
                                     "other-f16.gguf": b"GGUF"})
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CYLLAMA_CACHE_DIR", str(tmp_path / "cyllama-cache"))  # nothing there
    return root


def test_from_pretrained_offline_from_the_hf_cache(hub: Path) -> None:
    for pattern in ("*q8_0.gguf", "sub/ggml-vocab-llama-spm-q8_0.gguf", "*Q8_0.GGUF"):
        llm = Llama.from_pretrained("org/repo", pattern, vocab_only=True, verbose=False)
        assert llm.tokenize(b"Hello World") == [1, 15043, 2787]
        assert Path(llm.model_path).parent == hub / "models--org--repo" / "snapshots" / COMMIT / "sub"
        llm.close()
    assert hf_cache_root() == hub and hf_cache_root("x") == Path("x")


def test_offline_misses_raise_huggingface_hubs_error(hub: Path) -> None:
    errors = pytest.importorskip("huggingface_hub.errors")
    for repo, pattern in (("org/repo", "*q4_0.gguf"), ("org/missing", "*q8_0.gguf")):
        with pytest.raises(errors.LocalEntryNotFoundError, match="HF_HUB_OFFLINE") as info:
            Llama.from_pretrained(repo, pattern, vocab_only=True, verbose=False)
        assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError, match="several"):
        Llama.from_pretrained("org/repo", "*.gguf", vocab_only=True, verbose=False)
    with pytest.raises(ValueError):
        Llama.from_pretrained("../etc", "*.gguf", vocab_only=True, verbose=False)


def test_a_split_model_needs_all_its_shards(tmp_path: Path) -> None:
    snap = fake_hf_cache(tmp_path, "org/split", {"m-00001-of-00002.gguf": b"a"})
    assert find_in_hf_cache("org/split", "*.gguf", tmp_path) is None
    (snap / "m-00002-of-00002.gguf").write_bytes(b"b")
    assert find_in_hf_cache("org/split", "*.gguf", tmp_path) == snap / "m-00001-of-00002.gguf"
    # a dangling link (an interrupted download) is not a cached file
    os.symlink("nowhere", snap / "x-q4_0.gguf")
    assert find_in_hf_cache("org/split", "*q4_0.gguf", tmp_path) is None


def test_cache_dir_argument_is_the_hf_cache(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    llm = Llama.from_pretrained("org/repo", "*q8_0.gguf", cache_dir=hub, vocab_only=True, verbose=False)
    assert str(hub) in llm.model_path
    llm.close()

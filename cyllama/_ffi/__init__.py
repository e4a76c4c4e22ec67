"""The cffi ABI-mode binding: declarations mirroring the pinned headers, and the library loader.

Only this package and the core classes (``cyllama.llama.*``) touch ``ffi`` and the library
handles. The declarations in ``cdefs/`` are generated from the pinned headers by
``vendor/gen_cdefs.py``; ``tests/test_abi.py`` checks them against the headers and the build.

cffi releases the GIL for the duration of every C call.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["ffi", "lib_dir", "load_llama", "load_mtmd", "load_whisper", "build_info", "LibraryNotFoundError"]


def _make_ffi() -> Any:
    """The declarations, from the module generated at build time when it is current.

    A missing or stale module (declarations edited, unreadable) is regenerated here when the
    package folder is writable; otherwise the declarations are parsed on every import (slower).
    """
    from . import _generate

    try:
        from . import _bindings

        if getattr(_bindings, "CDEFS_DIGEST", None) == _generate.cdefs_digest():
            return _bindings.ffi
    except Exception:  # missing, or written by a cffi this one cannot read
        pass
    parsed = _generate.parse()
    try:
        _generate.write(parsed)
    except OSError:
        pass
    return parsed


ffi = _make_ffi()


class LibraryNotFoundError(ImportError):
    """The native libraries are not where cyllama looks for them."""


def lib_dir() -> Path:
    """Folder of the native libraries: ``$CYLLAMA_LIB_DIR`` or ``cyllama/lib`` beside the package."""
    env = os.environ.get("CYLLAMA_LIB_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "lib"


def _libname(stem: str) -> str:
    # the name the build recorded (the soname: wheels hold one file per library, not its symlinks)
    recorded = build_info().get("libraries", {}).get(stem)
    if recorded:
        return recorded
    if sys.platform == "darwin":
        return f"lib{stem}.dylib"
    if sys.platform == "win32":
        return f"{stem}.dll"
    return f"lib{stem}.so"


_lock = threading.Lock()
_handles: dict[str, Any] = {}


def _load(stem: str) -> Any:
    handle = _handles.get(stem)
    if handle is not None:
        return handle
    with _lock:
        if stem in _handles:
            return _handles[stem]
        path = lib_dir() / _libname(stem)
        if not path.exists():
            raise LibraryNotFoundError(
                f"cyllama's native library {path.name} was not found in {path.parent}. "
                "Build it with `python build_lib.py` in the cyllama source tree (or reinstall "
                "cyllama with `pip install .`), or point CYLLAMA_LIB_DIR at a folder that holds it.")
        try:
            handle = ffi.dlopen(str(path))
        except OSError as exc:
            raise LibraryNotFoundError(f"could not load {path}: {exc}") from exc
        _handles[stem] = handle
        return handle


def load_llama() -> Any:
    """libllama; ggml and gguf functions resolve through it (they are its dependencies)."""
    return _load("llama")


def load_mtmd() -> Any:
    return _load("mtmd")


def load_whisper() -> Any:
    return _load("whisper")


def build_info() -> dict:
    """What build_lib.py recorded about the build in use (backend, commit, flags)."""
    path = lib_dir() / "build-info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

"""Exceptions, and the one place that maps native failures to them."""

from __future__ import annotations

__all__ = ["CyllamaError", "ModelLoadError", "DecodeError", "ClosedError", "RpcError", "check_path"]

import os
from pathlib import Path


class CyllamaError(RuntimeError):
    """A native call failed."""


class ModelLoadError(CyllamaError):
    """llama.cpp could not load a model file (corrupt, truncated, not a GGUF, unsupported)."""


class DecodeError(CyllamaError):
    """llama_decode or llama_encode returned an error code."""

    def __init__(self, code: int, what: str = "llama_decode"):
        self.code = code
        super().__init__(f"{what} failed with code {code}: {describe_decode_code(code)}")


class ClosedError(CyllamaError, ValueError):
    """An object was used after close()."""


class RpcError(CyllamaError, ConnectionError):
    """An RPC server (llama.cpp's ``rpc-server``) cannot be used: unreachable, refusing connections,
    busy with another client, not an rpc-server, or another protocol version."""


_DECODE_CODES = {
    1: "no KV cache slot for the batch (the context is full: use a larger n_ctx, or remove tokens)",
    2: "aborted by the abort callback",
    -1: "invalid batch (bad token ids, positions or sequence ids)",
    -2: "failed to allocate compute buffers",
    -3: "the compute graph failed to run",
}


def describe_decode_code(code: int) -> str:
    return _DECODE_CODES.get(code, "unknown error")


def check_path(path: str | os.PathLike, what: str = "model") -> Path:
    """Checks that a file exists and is readable before native code opens it."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{what} path is a directory, not a file: {p}")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what} file is not readable: {p}")
    return p

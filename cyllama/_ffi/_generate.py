"""Writes cffi's out-of-line ABI-mode module ``_bindings.py`` from the declarations in ``cdefs/``.

Parsing the declarations with pycparser takes about a third of a second, so it is done once, at
build time (``build_lib.py`` runs this file), not at every import. The module records a digest of
the declarations; ``cyllama._ffi`` parses afresh and rewrites it when they changed. Standalone on
purpose: ``build_lib.py`` runs it as a script.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
CDEF_DIR = HERE / "cdefs"
CDEF_FILES = ("ggml.h", "gguf.h", "llama.h", "mtmd.h", "whisper.h")
MODULE = HERE / "_bindings.py"
MODULE_NAME = "cyllama._ffi._bindings"


def cdefs_digest() -> str:
    """What the generated module depends on: the declarations.

    Not the cffi version: cffi reads modules that older versions wrote, and one it cannot read
    fails to import, which ``cyllama._ffi`` treats as missing.
    """
    h = hashlib.sha256()
    for name in CDEF_FILES:
        h.update((CDEF_DIR / name).read_bytes())
    return h.hexdigest()[:32]


def parse():
    """A ``cffi.FFI`` holding every declaration (the slow path: pycparser)."""
    import cffi

    ffi = cffi.FFI()
    for name in CDEF_FILES:
        ffi.cdef((CDEF_DIR / name).read_text())
    return ffi


def write(ffi=None, path: Path = MODULE) -> Path:
    """Emits the out-of-line module for ``ffi`` (parsed here when not given), atomically."""
    import contextlib
    import io
    import tempfile

    ffi = ffi if ffi is not None else parse()
    ffi.set_source(MODULE_NAME, None)
    fd, tmp = tempfile.mkstemp(prefix="._bindings.", suffix=".py", dir=path.parent)
    os.close(fd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # cffi announces "generating ..."
            ffi.emit_python_code(tmp)
        with open(tmp, "a") as f:
            f.write(f"\nCDEFS_DIGEST = {cdefs_digest()!r}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


if __name__ == "__main__":
    write()

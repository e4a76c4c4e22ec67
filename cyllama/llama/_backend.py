"""Process-wide llama.cpp state: backend initialisation, logging, backends, system info."""

from __future__ import annotations

__all__ = [
    "lib", "ensure_backend", "ggml_backend_load_all", "ggml_backend_offload_supported",
    "ggml_backend_metal_set_n_cb", "system_info", "available_backends", "default_n_threads",
    "llama_time_us",
]

import atexit
import os
import threading

from .. import _logging
from .._ffi import ffi, load_llama

lib = load_llama()

_init_lock = threading.Lock()
_initialized = False
_backends_loaded = False


def default_n_threads() -> int:
    """Cores this process may run on (not llama.cpp's fixed default of 4)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def ensure_backend() -> None:
    """Initialises llama.cpp once per process (idempotent, thread-safe)."""
    global _initialized
    if _initialized:
        return
    with _init_lock:
        if _initialized:
            return
        _logging.install(lib, "llama_log_set")
        ggml_backend_load_all()
        lib.llama_backend_init()
        atexit.register(lib.llama_backend_free)
        _initialized = True


def ggml_backend_load_all() -> None:
    """Loads every ggml backend available to this build (CPU, and CUDA/Metal/Vulkan if built)."""
    global _backends_loaded
    if not _backends_loaded:
        _logging.install(lib, "llama_log_set")
        lib.ggml_backend_load_all()
        _backends_loaded = True


def ggml_backend_offload_supported() -> bool:
    """True when a GPU device is present, so model layers can be offloaded to it."""
    ensure_backend()
    return any(d["type"] in ("gpu", "igpu") for d in devices())


def ggml_backend_metal_set_n_cb(n_cb: int) -> None:
    """Number of Metal command buffers.

    The pinned ggml sizes its Metal command buffers itself (the setter left ggml-metal's API), so
    on a Metal build this only validates ``n_cb``. Without Metal it raises ``RuntimeError``.
    """
    if isinstance(n_cb, bool) or not isinstance(n_cb, int) or n_cb < 1:
        raise ValueError(f"n_cb must be a positive int, got {n_cb!r}")
    if "metal" not in [b.lower() for b in available_backends()]:
        raise RuntimeError("ggml_backend_metal_set_n_cb: this build has no Metal backend (macOS only)")


def available_backends() -> list[str]:
    """Names of the registered ggml backends (e.g. ['CPU'] or ['CUDA', 'CPU'])."""
    ggml_backend_load_all()
    return [ffi.string(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i))).decode()
            for i in range(lib.ggml_backend_reg_count())]


def devices() -> list[dict]:
    """The ggml devices with their type and memory (free/total bytes)."""
    ggml_backend_load_all()
    out = []
    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    types = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        lib.ggml_backend_dev_memory(dev, free, total)
        out.append({
            "name": ffi.string(lib.ggml_backend_dev_name(dev)).decode(),
            "description": ffi.string(lib.ggml_backend_dev_description(dev)).decode(),
            "type": types.get(int(lib.ggml_backend_dev_type(dev)), "unknown"),
            "memory_free": int(free[0]), "memory_total": int(total[0]),
        })
    return out


def system_info() -> str:
    """llama.cpp's system info line (backends and CPU features)."""
    ensure_backend()
    return ffi.string(lib.llama_print_system_info()).decode()


def llama_time_us() -> int:
    return int(lib.llama_time_us())

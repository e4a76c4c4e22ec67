"""The enum constants of llama.cpp and ggml under llama-cpp-python's names.

llama-cpp-python's ``llama_cpp.llama_cpp`` module is its ctypes binding; code that only reads
constants from it (``llama_cpp.LLAMA_SPLIT_MODE_LAYER``, ``llama_cpp.GGML_TYPE_Q8_0``,
``llama_cpp.LLAMA_POOLING_TYPE_MEAN``...) works unchanged. The low-level functions are not
mirrored here: cyllama's core classes (:class:`cyllama.LlamaModel`, :class:`cyllama.LlamaContext`,
:class:`cyllama.LlamaSampler`...) and ``cyllama.llama._backend.lib`` (the cffi library) replace them.

The values are read from the cffi declarations of the pinned headers, so they cannot drift.
"""

from __future__ import annotations

from .._ffi import ffi

__all__ = ["LLAMA_DEFAULT_SEED", "LLAMA_MAX_DEVICES", "LLAMA_TOKEN_NULL", "llama_max_devices",
           "llama_max_parallel_sequences"]

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
LLAMA_TOKEN_NULL = -1

_ENUMS = (
    "llama_vocab_type", "llama_rope_type", "llama_token_attr", "llama_ftype", "llama_rope_scaling_type",
    "llama_pooling_type", "llama_attention_type", "llama_flash_attn_type", "llama_split_mode",
    "llama_load_mode", "llama_model_kv_override_type", "ggml_type", "ggml_numa_strategy",
)

for _name in _ENUMS:
    try:
        _members = ffi.typeof(f"enum {_name}").relements
    except (ffi.error, KeyError):  # pragma: no cover - an enum the pinned headers do not have
        continue
    for _k, _v in _members.items():
        if not _k.endswith(("_COUNT", "_MAX_VALUE")):
            globals()[_k] = _v
            __all__.append(_k)
del _name, _k, _v, _members


def llama_max_devices() -> int:
    from ..llama._backend import lib

    return int(lib.llama_max_devices())


def llama_max_parallel_sequences() -> int:
    from ..llama._backend import lib

    return int(lib.llama_max_parallel_sequences())


def __getattr__(name: str):  # LLAMA_MAX_DEVICES needs the library: read it on first use
    if name == "LLAMA_MAX_DEVICES":
        return llama_max_devices()
    raise AttributeError(f"cyllama.llama_cpp.llama_cpp has no attribute {name!r} (the ctypes functions of "
                         "llama-cpp-python are not mirrored; use cyllama's core classes)")

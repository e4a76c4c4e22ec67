"""llama-cpp-python's low-level module ``llama_cpp.llama_cpp`` on cyllama's cffi binding.

* The ``LLAMA_*``/``GGML_*`` constants, read from the cffi declarations of the pinned headers (so
  they cannot drift); the few in llama.cpp's private headers (``LLAMA_VOCAB_PRE_TYPE_*``) are
  llama-cpp-python's.
* ``llama_model_default_params()`` / ``llama_context_default_params()`` /
  ``llama_sampler_chain_default_params()``: cyllama's validated parameter classes (which
  ``llama_cpp._internals`` takes, and which the functions below accept where llama.h takes the
  struct by value).
* Every function of ``llama.h`` under its name (``llama_model_load_from_file``, ``llama_decode``,
  ``llama_get_logits_ith``...), calling cyllama's cffi library (see ``_lowlevel``). Pointers are
  cffi cdata: the ones these functions return, a core object's ``.ptr`` (:class:`cyllama.LlamaModel`,
  :class:`cyllama.LlamaContext`, :class:`cyllama.LlamaVocab`...), ``llama_cpp._internals``'
  ``.model``/``.ctx``/``.vocab``, or buffers from ``ffi.new`` (``ffi`` is importable from here).
  As with ctypes, ``char *`` results are ``bytes`` and NULL results ``None``. ctypes objects
  (``ctypes.byref``, ctypes arrays, ``ctypes.c_void_p``, ctypes structs, ``CFUNCTYPE`` callbacks)
  are refused with a ``TypeError`` that names the cffi equivalent.
* ``llama_log_set(callback, user_data)`` takes a Python callable; ``llama_backend_init()`` is
  cyllama's (idempotent) backend initialisation, which the functions also run on first use.
* llama-cpp-python's ctypes types (structs such as ``llama_batch``, pointer types such as
  ``llama_model_p``, callback types such as ``llama_log_callback``) raise :class:`CtypesOnlyError`
  (an ``AttributeError``) saying what to use instead.

These functions check nothing beyond the argument types: like llama.h's, they trust their
arguments (a freed pointer or a short buffer is undefined behaviour). cyllama's core classes are
the checked interface.
"""

from __future__ import annotations

from .._ffi import ffi
from ..llama._backend import lib as _lib
from . import _lowlevel
from ..llama.context import LlamaContextParams
from ..llama.model import LlamaModelParams
from ..llama.sampler import LlamaSamplerChainParams

__all__ = ["LLAMA_DEFAULT_SEED", "LLAMA_TOKEN_NULL", "llama_model_params", "llama_context_params",
           "llama_sampler_chain_params", "llama_model_default_params", "llama_context_default_params",
           "llama_sampler_chain_default_params", "CtypesOnlyError"]

__all__.append("LLAMA_MAX_DEVICES")  # read from the library on first use (__getattr__)

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
LLAMA_TOKEN_NULL = -1

_ENUMS = (
    "llama_vocab_type", "llama_rope_type", "llama_token_type", "llama_token_attr", "llama_ftype",
    "llama_rope_scaling_type", "llama_pooling_type", "llama_attention_type", "llama_flash_attn_type",
    "llama_split_mode", "llama_load_mode", "llama_lazy_mode", "llama_context_type", "llama_model_kv_override_type",
    "llama_model_meta_key", "llama_process_type", "ggml_type", "ggml_numa_strategy",
)
_MACROS = (
    "LLAMA_FILE_MAGIC_GGLA", "LLAMA_FILE_MAGIC_GGSN", "LLAMA_FILE_MAGIC_GGSQ", "LLAMA_SESSION_MAGIC",
    "LLAMA_SESSION_VERSION", "LLAMA_STATE_SEQ_MAGIC", "LLAMA_STATE_SEQ_VERSION", "LLAMA_STATE_SEQ_FLAGS_NONE",
    "LLAMA_STATE_SEQ_FLAGS_SWA_ONLY", "LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY", "LLAMA_STATE_SEQ_FLAGS_ON_DEVICE",
)

for _name in _ENUMS:
    try:
        _members = ffi.typeof(f"enum {_name}").relements
    except (ffi.error, KeyError):  # pragma: no cover - an enum the pinned headers do not have
        continue
    for _k, _v in _members.items():
        globals()[_k] = _v
        __all__.append(_k)
for _name in _MACROS:
    globals()[_name] = getattr(_lib, _name)
    __all__.append(_name)
del _name, _k, _v, _members

# ggml's names for the RoPE types (macros of ggml.h, the same values as llama.h's enum)
for _name in ("NEOX", "MROPE", "IMROPE", "VISION"):
    globals()[f"GGML_ROPE_TYPE_{_name}"] = globals()[f"LLAMA_ROPE_TYPE_{_name}"]
    __all__.append(f"GGML_ROPE_TYPE_{_name}")

# enum llama_vocab_pre_type is in llama.cpp's private llama-vocab.h: the values llama-cpp-python has
_VOCAB_PRE_TYPES = (
    "DEFAULT", "LLAMA3", "DEEPSEEK_LLM", "DEEPSEEK_CODER", "FALCON", "MPT", "STARCODER", "GPT2", "REFACT",
    "COMMAND_R", "STABLELM2", "QWEN2", "OLMO", "DBRX", "SMAUG", "PORO", "CHATGLM3", "CHATGLM4", "VIKING", "JAIS",
    "TEKKEN", "SMOLLM", "CODESHELL", "BLOOM", "GPT3_FINNISH", "EXAONE", "CHAMELEON", "MINERVA", "DEEPSEEK3_LLM",
    "GPT4O", "SUPERBPE", "TRILLION", "BAILINGMOE", "LLAMA4", "PIXTRAL", "SEED_CODER",
)
for _i, _name in enumerate(_VOCAB_PRE_TYPES):
    globals()[f"LLAMA_VOCAB_PRE_TYPE_{_name}"] = _i
    __all__.append(f"LLAMA_VOCAB_PRE_TYPE_{_name}")
del _i, _name


# -- parameter structs -------------------------------------------------------------------------
class llama_model_params(LlamaModelParams):
    """``struct llama_model_params`` (cyllama's validated :class:`cyllama.LlamaModelParams`)."""

    __slots__ = ()


class llama_context_params(LlamaContextParams):
    """``struct llama_context_params`` (cyllama's validated :class:`cyllama.LlamaContextParams`).

    ``logits_all`` is accepted for code written for older llama.cpp, which had that field; it has
    no effect (which tokens get logits is chosen per batch token).
    """

    __slots__ = ()
    _extra = ("logits_all",)

    @property
    def logits_all(self) -> bool:
        return bool(self._keepalive.get("logits_all", False))

    @logits_all.setter
    def logits_all(self, value: bool) -> None:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise TypeError(f"logits_all must be a bool, got {value!r}")
        self._keepalive["logits_all"] = bool(value)


class llama_sampler_chain_params(LlamaSamplerChainParams):
    """``struct llama_sampler_chain_params`` (cyllama's :class:`cyllama.LlamaSamplerChainParams`)."""

    __slots__ = ()


def llama_model_default_params() -> llama_model_params:
    """llama.cpp's default model parameters (a :class:`cyllama.LlamaModelParams`)."""
    return llama_model_params()


def llama_context_default_params() -> llama_context_params:
    """llama.cpp's default context parameters (a :class:`cyllama.LlamaContextParams`; thread counts
    are the cores this process may use)."""
    return llama_context_params()


def llama_sampler_chain_default_params() -> llama_sampler_chain_params:
    return llama_sampler_chain_params()


# -- the functions of llama.h ---------------------------------------------------------------------
# one wrapper per llama_* function of the cffi declarations (see _lowlevel); the functions defined
# above (parameter defaults) and the few with a Python side come first
for _name, _fn in {**_lowlevel.wrap_functions(), "llama_log_set": _lowlevel.llama_log_set,
                   "llama_backend_init": _lowlevel.llama_backend_init,
                   "llama_set_adapter_lora": _lowlevel.llama_set_adapter_lora,
                   "llama_apply_adapter_cvec": _lowlevel.llama_apply_adapter_cvec}.items():
    if _name not in globals():
        globals()[_name] = _fn
        __all__.append(_name)
del _name, _fn

#: The names of llama-cpp-python's ctypes binding that have no counterpart here raise this.
CtypesOnlyError = _lowlevel.CtypesOnlyError


def __getattr__(name: str):  # LLAMA_MAX_DEVICES needs the library: read it on first use
    if name == "LLAMA_MAX_DEVICES":
        return globals()["llama_max_devices"]()
    raise _lowlevel.missing_name_error(name)

"""The functions of ``llama.h`` under llama-cpp-python's names, on cyllama's cffi binding.

:func:`wrap_functions` makes one Python function per ``llama_*`` function of the cffi declarations
(``cyllama/_ffi/cdefs/llama.h``). A call goes straight to cffi; only when cffi rejects an argument
(a ``TypeError`` raised before any C code runs) are the arguments looked at again: cyllama's
parameter classes (``llama_model_default_params()``...) become their C struct, cyllama's handle
objects (:class:`cyllama.LlamaModel`...) their ``.ptr``, and ctypes objects (``ctypes.byref``,
ctypes arrays, ``ctypes.c_void_p``, ctypes structs, ``CFUNCTYPE`` callbacks) and ``None`` for a
pointer get a ``TypeError`` that says what to pass instead. Results follow ctypes' conventions:
``char *`` becomes ``bytes`` and a NULL pointer ``None``.

Names llama-cpp-python's ``llama_cpp.py`` has that are ctypes types (structs, pointer types,
``CFUNCTYPE`` callback types) raise :class:`CtypesOnlyError` (an ``AttributeError``) on access.
"""

from __future__ import annotations

__all__ = ["CtypesOnlyError", "wrap_functions", "missing_name_error", "llama_log_set", "llama_backend_init",
           "llama_set_adapter_lora", "llama_apply_adapter_cvec", "DEPRECATED"]

import threading
import warnings
from typing import Any, Callable, Optional

from .. import _logging
from .._ffi import ffi
from ..llama import _backend
from ..llama._backend import lib as _lib
from ..llama._params import StructParams

_FFI_HINT = "cffi (from cyllama.llama_cpp.llama_cpp import ffi)"


class CtypesOnlyError(AttributeError, NotImplementedError):
    """A name of llama-cpp-python's ctypes binding that has no counterpart on cyllama's cffi binding."""


# -- deprecated names: llama-cpp-python warns for these (the C functions are still declared) ---------
DEPRECATED = {
    "llama_load_model_from_file": "llama_model_load_from_file", "llama_free_model": "llama_model_free",
    "llama_new_context_with_model": "llama_init_from_model", "llama_n_ctx_train": "llama_model_n_ctx_train",
    "llama_n_embd": "llama_model_n_embd", "llama_n_layer": "llama_model_n_layer",
    "llama_n_head": "llama_model_n_head", "llama_n_vocab": "llama_vocab_n_tokens",
    "llama_get_state_size": "llama_state_get_size", "llama_copy_state_data": "llama_state_get_data",
    "llama_set_state_data": "llama_state_set_data", "llama_load_session_file": "llama_state_load_file",
    "llama_save_session_file": "llama_state_save_file", "llama_token_get_text": "llama_vocab_get_text",
    "llama_token_get_score": "llama_vocab_get_score", "llama_token_get_attr": "llama_vocab_get_attr",
    "llama_token_is_eog": "llama_vocab_is_eog", "llama_token_is_control": "llama_vocab_is_control",
    "llama_token_bos": "llama_vocab_bos", "llama_token_eos": "llama_vocab_eos", "llama_token_eot": "llama_vocab_eot",
    "llama_token_cls": "llama_vocab_cls", "llama_token_sep": "llama_vocab_sep", "llama_token_nl": "llama_vocab_nl",
    "llama_token_pad": "llama_vocab_pad", "llama_add_bos_token": "llama_vocab_get_add_bos",
    "llama_add_eos_token": "llama_vocab_get_add_eos", "llama_token_fim_pre": "llama_vocab_fim_pre",
    "llama_token_fim_suf": "llama_vocab_fim_suf", "llama_token_fim_mid": "llama_vocab_fim_mid",
    "llama_token_fim_pad": "llama_vocab_fim_pad", "llama_token_fim_rep": "llama_vocab_fim_rep",
    "llama_token_fim_sep": "llama_vocab_fim_sep", "llama_vocab_cls": "llama_vocab_bos",
    "llama_sampler_init_grammar_lazy": "llama_sampler_init_grammar_lazy_patterns",
    "llama_set_adapter_lora": "llama_set_adapters_lora", "llama_apply_adapter_cvec": "llama_set_adapter_cvec",
}


def _warn_deprecated(name: str) -> None:
    warnings.warn(f"{name} is deprecated; use {DEPRECATED[name]} instead", DeprecationWarning, stacklevel=3)


# -- ctypes objects --------------------------------------------------------------------------------
def _ctypes_kind(value: Any) -> Optional[str]:
    """What sort of ctypes object ``value`` is, or None when it is none (ctypes is not imported
    for this: its classes all derive from ``_ctypes``' bases)."""
    for klass in type(value).__mro__:
        module = klass.__module__
        if klass.__name__ == "CArgObject":
            return "byref"
        if module in ("_ctypes", "ctypes"):
            name = klass.__name__
            if name == "Array":
                return "array"
            if name in ("Structure", "Union"):
                return "struct"
            if name == "CFuncPtr":
                return "callback"
            if name == "_Pointer":
                return "pointer"
            if name == "_SimpleCData":
                return "simple"
    return None


def _hint(kind: str, value: Any, ctype: Any) -> str:
    cname = ctype.cname
    if kind == "byref":
        if ctype.kind != "pointer":
            return f"ctypes.byref() is a ctypes idiom, and this parameter is a value ('{cname}'), not a pointer"
        return (f"ctypes.byref() is a ctypes idiom; with {_FFI_HINT} allocate the value with "
                f"p = ffi.new({cname!r}), pass p, and read p[0] afterwards")
    if kind == "array":
        item = ctype.item.cname if ctype.kind in ("pointer", "array") else "llama_token"
        return (f"a ctypes array ({type(value).__name__}) cannot be passed; with {_FFI_HINT} use "
                f"ffi.new({item + '[]'!r}, n) (or ffi.from_buffer for a numpy array)")
    if kind == "struct":
        if ctype.kind == "struct":
            how = f"p = ffi.new({cname + ' *'!r}), then pass p[0]"
        else:
            how = f"p = ffi.new({cname!r}) and pass p"
        return f"a ctypes struct ({type(value).__name__}) cannot be passed; with {_FFI_HINT} use {how}"
    if kind == "callback":
        return (f"a ctypes CFUNCTYPE callback cannot be passed; make a cffi callback with "
                f"ffi.callback({cname!r}, fn) and keep a reference to it while llama.cpp may call it")
    if ctype.kind in ("pointer", "function"):
        return (f"a ctypes {type(value).__name__} is not a cffi pointer; pass the cdata pointer that a "
                "llama_* function returned or a core object's .ptr (LlamaModel.ptr, LlamaContext.ptr, "
                "LlamaVocab.ptr, llama_cpp._internals' .model/.ctx/.vocab), or ffi.NULL")
    return f"a ctypes {type(value).__name__} is not a Python number; pass its .value"


def _adapt(name: str, signature: str, ctype: Any, args: tuple, exc: TypeError) -> tuple:
    """Arguments cffi rejected: converted where the meaning is clear, else a TypeError saying why."""
    params = ctype.args
    if len(args) != len(params):
        raise TypeError(f"{name}() takes {len(params)} arguments ({len(args)} given): {signature}") from None
    out = list(args)
    changed = False
    for i, (value, param) in enumerate(zip(args, params)):
        kind = _ctypes_kind(value)
        where = f"{name}() argument {i + 1} ('{param.cname}')"
        if kind is not None:
            raise TypeError(f"{where}: {_hint(kind, value, param)}") from None
        if isinstance(value, StructParams) and param.kind == "struct":
            out[i], changed = value.value, True
        elif param.kind == "pointer" and value is None:
            raise TypeError(f"{where}: None is not passed as NULL (a closed object's pointer reads None); "
                            "pass ffi.NULL where llama.cpp accepts NULL") from None
        elif param.kind == "pointer" and isinstance(value, int) and not isinstance(value, bool):
            raise TypeError(f"{where}: an int is not a pointer (ctypes' c_void_p values are ints); pass the "
                            "cffi pointer a llama_* function returned or a core object's .ptr") from None
        elif param.kind == "pointer" and not isinstance(value, ffi.CData) and hasattr(value, "ptr"):
            out[i], changed = value.ptr, True  # cyllama's handle objects (raise ClosedError once closed)
        elif param.kind == "function" and not isinstance(value, ffi.CData) and callable(value):
            raise TypeError(f"{where}: a Python function is not a C function pointer; wrap it with "
                            f"ffi.callback({param.cname!r}, fn) and keep a reference to it") from None
    if not changed:
        raise TypeError(f"{name}(): {exc} (C signature: {signature})") from None
    return tuple(out)


# -- the wrappers ----------------------------------------------------------------------------------
def _c_signature(name: str, ctype: Any) -> str:
    return f"{ctype.result.cname} {name}({', '.join(a.cname for a in ctype.args)})"


def _wrap(name: str, fn: Any, ctype: Any) -> Callable[..., Any]:
    signature = _c_signature(name, ctype)
    result = ctype.result
    string_result = result.kind == "pointer" and result.item.cname == "char"
    pointer_result = result.kind == "pointer"
    deprecated = name in DEPRECATED
    null = ffi.NULL
    to_bytes = ffi.string

    def call(*args: Any) -> Any:
        if not _backend._initialized:
            _backend.ensure_backend()
        if deprecated:
            _warn_deprecated(name)
        try:
            value = fn(*args)
        except TypeError as exc:  # cffi converts every argument before C runs
            adapted = _adapt(name, signature, ctype, args, exc)
            try:
                value = fn(*adapted)
            except TypeError as exc2:
                raise TypeError(f"{name}(): {exc2} (C signature: {signature})") from None
        if pointer_result:
            if value == null:
                return None
            if string_result:
                return to_bytes(value)
        return value

    call.__name__ = call.__qualname__ = name
    call.__module__ = "cyllama.llama_cpp.llama_cpp"
    call.__doc__ = (f"``{signature}`` from llama.h, on cyllama's cffi binding. Pointers are cffi cdata "
                    "(NULL results are None); ``char *`` results are bytes.")
    return call


def wrap_functions() -> dict[str, Callable[..., Any]]:
    """One wrapper per ``llama_*`` function the cffi declarations hold (and the library exports)."""
    out = {}
    for name in dir(_lib):
        if not name.startswith("llama_"):
            continue
        try:
            fn = getattr(_lib, name)
            ctype = ffi.typeof(fn)
        except (AttributeError, TypeError):  # declared but not in this build, or not a function
            continue
        if ctype.kind == "function":
            out[name] = _wrap(name, fn, ctype)
    return out


# -- functions with a Python side --------------------------------------------------------------------
_log_lock = threading.Lock()


def llama_log_set(log_callback: Optional[Callable[[int, bytes, Any], None]], user_data: Any = None, /) -> None:
    """Sends llama.cpp's (and ggml's) log output to ``log_callback(level, text, user_data)``.

    ``level`` is a ``ggml_log_level`` int (``GGML_LOG_LEVEL_CONT`` continues the previous
    message), ``text`` the bytes llama.cpp wrote (partial lines included, as llama.cpp sends
    them), ``user_data`` what was given here. cyllama keeps its own C callback installed (its
    ``cyllama.native`` logger and the error lines for exception messages keep working) and calls
    this one from it; ``None`` removes it. A callback that raises is reported on the ``cyllama``
    logger and the log line is otherwise unaffected.
    """
    if log_callback is not None:
        if _ctypes_kind(log_callback) not in (None, "callback"):
            raise TypeError(f"llama_log_set: log_callback must be a callable, got {type(log_callback).__name__}")
        if isinstance(log_callback, ffi.CData):
            raise TypeError("llama_log_set: pass a Python callable (it receives level, text bytes, user_data), "
                            "not a cffi function pointer: cyllama's own C callback stays installed")
        if not callable(log_callback):
            raise TypeError(f"llama_log_set: log_callback must be callable, got {type(log_callback).__name__}")
    with _log_lock:
        _backend.ensure_backend()  # installs cyllama's C callback
        if log_callback is None:
            _logging.set_log_hook(None)
        else:
            _logging.set_log_hook(lambda level, text: log_callback(level, text, user_data))


def llama_backend_init() -> None:
    """Initialises llama.cpp once per process (cyllama's ``ensure_backend``: loads the ggml
    backends and installs cyllama's log callback; later calls do nothing)."""
    _backend.ensure_backend()


def llama_set_adapter_lora(ctx: Any, adapter: Any, scale: float, /) -> int:
    """One LoRA adapter on the context (llama-cpp-python's deprecated helper over
    ``llama_set_adapters_lora``)."""
    _warn_deprecated("llama_set_adapter_lora")
    adapters = ffi.new("struct llama_adapter_lora *[1]", [adapter])
    scales = ffi.new("float[1]", [scale])
    return int(_lib.llama_set_adapters_lora(ctx, adapters, 1, scales))


def llama_apply_adapter_cvec(ctx: Any, data: Any, len: int, n_embd: int, il_start: int, il_end: int, /) -> int:
    """llama-cpp-python's deprecated name of ``llama_set_adapter_cvec``."""
    _warn_deprecated("llama_apply_adapter_cvec")
    from .llama_cpp import llama_set_adapter_cvec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return llama_set_adapter_cvec(ctx, data, len, n_embd, il_start, il_end)


# -- names of llama-cpp-python's ctypes binding that have no cffi counterpart ----------------------
_CALLBACK_TYPES = {
    "ggml_backend_sched_eval_callback": "bool (*)(struct ggml_tensor *, bool, void *)",
    "ggml_abort_callback": "bool (*)(void *)",
    "llama_progress_callback": "bool (*)(float, void *)",
    "llama_log_callback": "void (*)(enum ggml_log_level, const char *, void *)",
    "llama_model_set_tensor_data_t": "void (*)(struct ggml_tensor *, void *)",
    "llama_opt_param_filter": "bool (*)(const struct ggml_tensor *, void *)",
    **{f"llama_sampler_i_{n}": f"the '{n}' member of struct llama_sampler_i" for n in (
        "name", "accept", "apply", "reset", "clone", "free", "backend_init", "backend_accept", "backend_apply",
        "backend_set_input", "backend_reset", "copy_state")},
}
_STRUCTS = {
    "llama_token_data", "llama_token_data_array", "llama_batch", "llama_model_kv_override",
    "llama_model_kv_override_value", "llama_model_tensor_override", "llama_model_imatrix_data",
    "llama_sampler_seq_config", "llama_model_quantize_params", "llama_logit_bias", "llama_chat_message", "llama_embd",
    "llama_sampler_data", "llama_sampler_i", "llama_sampler", "llama_perf_context_data", "llama_perf_sampler_data",
    "llama_opt_params",
}
_SCALARS = {"llama_pos": "int32_t", "llama_token": "llama_token", "llama_seq_id": "llama_seq_id",
            "llama_state_seq_flags": "uint32_t"}
_HELPERS = {"byref", "ctypes_function", "ctypes_function_for_shared_library", "load_shared_library"}


def missing_name_error(name: str) -> AttributeError:
    """The error for a name this module does not have: why, and what to use instead."""
    where = "cyllama.llama_cpp.llama_cpp"
    if name == "llama_log_callback":
        return CtypesOnlyError(f"{where}.llama_log_callback is llama-cpp-python's ctypes callback type; here "
                               "llama_log_set takes a plain Python callable(level, text, user_data)")
    if name in _CALLBACK_TYPES:
        return CtypesOnlyError(f"{where}.{name} is a ctypes callback type (CFUNCTYPE) of llama-cpp-python; on "
                               f"cffi make the callback with ffi.callback(<C type>, fn) for {_CALLBACK_TYPES[name]}, "
                               "and keep a reference to it")
    if name in _STRUCTS:
        return CtypesOnlyError(f"{where}.{name} is a ctypes Structure of llama-cpp-python; on cffi allocate "
                               f"it with ffi.new({'struct ' + name + ' *'!r}) (pass p for a pointer, p[0] by value)")
    if name in _SCALARS:
        return CtypesOnlyError(f"{where}.{name} is a ctypes integer type of llama-cpp-python; on cffi pass "
                               f"Python ints, and make arrays with ffi.new({_SCALARS[name] + '[]'!r}, n)")
    if name.endswith(("_p", "_p_ctypes", "_t", "_t_ctypes")) and name.startswith(("llama_", "gguf_")):
        return CtypesOnlyError(f"{where}.{name} is a ctypes pointer type of llama-cpp-python; on cffi the pointers "
                               "are the cdata the llama_* functions return and the core objects' .ptr")
    if name in _HELPERS:
        return CtypesOnlyError(f"{where}.{name} is a ctypes helper of llama-cpp-python; cyllama binds llama.cpp "
                               "with cffi (ffi.new, ffi.cast, ffi.callback)")
    if name.startswith(("llama_", "ggml_", "gguf_")):
        return AttributeError(f"{where} has no attribute {name!r}: not a function of llama.h in the llama.cpp "
                              "cyllama is built with")
    return AttributeError(f"module {where!r} has no attribute {name!r}")

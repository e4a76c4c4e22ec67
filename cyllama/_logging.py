"""Routes llama.cpp, ggml and whisper.cpp log output to Python ``logging``.

Native log lines go to the ``cyllama.native`` logger. By default only errors are forwarded
(quiet); ``set_verbose(True)`` (or ``verbose=True`` on the high-level classes) forwards
everything at its level. Recent error lines and, separately, warnings are kept with a sequence
number, so that a failed call can say why: ``mark = log_mark()`` before the call, then
``errors_since(mark)`` (error lines, which any number of warnings cannot push out).
"""

from __future__ import annotations

__all__ = ["set_verbose", "is_verbose", "install", "last_errors", "log_mark", "errors_since", "native_logger",
           "set_log_hook"]

import collections
from typing import Any, Callable
import logging
import threading

from ._ffi import ffi

native_logger = logging.getLogger("cyllama.native")

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

_state = threading.local()
_verbose = False
_KEEP = 64  # lines kept per level
_recent_errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=_KEEP)
_recent_warnings: collections.deque[tuple[int, str]] = collections.deque(maxlen=_KEEP)
_seq = 0  # lines recorded so far (errors and warnings)
_record_lock = threading.Lock()
_installed: set[str] = set()
_install_lock = threading.Lock()
_hook: Callable[[int, bytes], None] | None = None


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False) llama.cpp's own log output."""
    global _verbose
    _verbose = bool(verbose)
    if _verbose and not native_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        native_logger.addHandler(handler)
        native_logger.setLevel(logging.DEBUG)


def is_verbose() -> bool:
    return _verbose


def last_errors() -> list[str]:
    """The most recent native error and warning lines (newest last)."""
    with _record_lock:
        both = sorted([*_recent_errors, *_recent_warnings])
    return [text for _, text in both[-_KEEP:]]


def log_mark() -> int:
    """A mark for :func:`errors_since` (take it before the native call that may fail)."""
    return _seq


def errors_since(mark: int, limit: int = 3) -> list[str]:
    """The last ``limit`` native error lines logged since ``mark`` (newest last); when there is
    none, the last warnings since then (some failures are only logged as warnings)."""
    with _record_lock:
        errors = [t for n, t in _recent_errors if n >= mark]
        lines = errors or [t for n, t in _recent_warnings if n >= mark]
    return lines[-limit:] if limit > 0 else []


class quiet_errors:
    """Within the block (this thread), native error lines are logged at DEBUG: for failures the
    caller expects and reports itself, such as a decode the user aborted."""

    def __enter__(self) -> None:
        _state.quiet = getattr(_state, "quiet", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _state.quiet -= 1


def set_log_hook(hook: Callable[[int, bytes], None] | None) -> None:
    """Also passes every native log chunk, as llama.cpp sends it, to ``hook(level, text_bytes)``
    (``None`` removes it); cyllama's own handling is unchanged. Used by the drop-in's ``llama_log_set``."""
    global _hook
    _hook = hook


def _call_hook(hook: Callable[[int, bytes], None], level: int, text: bytes) -> None:
    try:
        hook(level, text)
    except Exception:
        logging.getLogger("cyllama").exception("the log callback given to llama_log_set raised")


def _emit(level: int, text: str) -> None:
    global _seq
    if level >= logging.WARNING:
        with _record_lock:
            (_recent_errors if level >= logging.ERROR else _recent_warnings).append((_seq, text))
            _seq += 1
    if level >= logging.ERROR and getattr(_state, "quiet", 0):
        level = logging.DEBUG
    if _verbose or level >= logging.ERROR:
        native_logger.log(level, text)


@ffi.callback("void(enum ggml_log_level, const char *, void *)", onerror=lambda *a: None)
def _log_callback(level: int, text: Any, user_data: Any) -> None:  # type: ignore[name-defined]
    raw = ffi.string(text)
    hook = _hook
    if hook is not None:
        _call_hook(hook, level, raw)
    msg = raw.decode("utf-8", "replace")
    # CONT continues the previous message; llama.cpp also emits partial lines ("." progress dots)
    buf = getattr(_state, "buf", "")
    if level != 5:
        _state.level = _LEVELS.get(level, logging.INFO)
    elif not hasattr(_state, "level"):
        _state.level = logging.INFO
    buf += msg
    if "\n" in buf:
        *lines, buf = buf.split("\n")
        for line in lines:
            if line.strip():
                _emit(_state.level, line)
    _state.buf = buf


def install(lib: Any, setter: str) -> None:
    """Installs the callback with one library's log setter (``llama_log_set``, ``whisper_log_set``)."""
    with _install_lock:
        if setter in _installed:
            return
        getattr(lib, setter)(_log_callback, ffi.NULL)
        _installed.add(setter)

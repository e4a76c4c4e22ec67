"""Base of every class that owns a native handle."""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable, TypeVar

from .._errors import ClosedError
from .._ffi import ffi

__all__ = ["NativeHandle", "guarded"]

F = TypeVar("F", bound=Callable[..., Any])


def guarded(method: F) -> F:
    """Runs ``method`` holding its handle's lock, so ``close()`` from another thread waits for the
    native call to return instead of freeing the object under it."""

    @functools.wraps(method)
    def wrapper(self: "NativeHandle", *args: Any, **kwargs: Any) -> Any:
        with self._busy:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class NativeHandle:
    """Owns one native pointer: idempotent ``close()``, context manager, finalizer backstop.

    Using the object after ``close()`` raises :class:`ClosedError` instead of passing a dangling
    pointer to C. Subclasses call ``_adopt(ptr, free_fn)`` once the pointer exists. Methods that
    call into C are :func:`guarded`: they hold ``_busy`` (reentrant) for the call, and ``close()``
    takes it too, so closing from another thread waits for a running decode, sample or state copy.
    """

    _ptr: Any = ffi.NULL
    _finalizer: weakref.finalize | None = None
    _busy: Any = threading.RLock()  # replaced per object in _adopt; shared only by unadopted ones

    def _adopt(self, ptr: Any, free: Callable[[Any], None]) -> None:
        self._busy = threading.RLock()
        self._ptr = ptr
        self._finalizer = weakref.finalize(self, free, ptr)

    @property
    def ptr(self) -> Any:
        """The native pointer; raises ClosedError once closed."""
        ptr = self._ptr
        if ptr == ffi.NULL:
            raise ClosedError(f"{type(self).__name__} is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    def _before_close(self) -> None:
        """Hook: close what depends on this handle first."""

    def close(self) -> None:
        """Frees the native object. Safe to call more than once."""
        if self._ptr == ffi.NULL:
            return
        # dependents first, each waiting for its own calls, and before taking this lock: a thread
        # inside a dependent's call may still need this object (a context's generation tokenizing)
        self._before_close()
        with self._busy:  # waits for a native call running in another thread
            if self._ptr == ffi.NULL:
                return
            self._ptr = ffi.NULL
            if self._finalizer is not None:
                self._finalizer()

    free = close

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

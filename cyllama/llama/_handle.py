"""Base of every class that owns a native handle."""

from __future__ import annotations

import weakref
from typing import Any, Callable

from .._errors import ClosedError
from .._ffi import ffi

__all__ = ["NativeHandle"]


class NativeHandle:
    """Owns one native pointer: idempotent ``close()``, context manager, finalizer backstop.

    Using the object after ``close()`` raises :class:`ClosedError` instead of passing a dangling
    pointer to C. Subclasses call ``_adopt(ptr, free_fn)`` once the pointer exists.
    """

    _ptr: Any = ffi.NULL
    _finalizer: weakref.finalize | None = None

    def _adopt(self, ptr: Any, free: Callable[[Any], None]) -> None:
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
        self._before_close()
        self._ptr = ffi.NULL
        if self._finalizer is not None:
            self._finalizer()

    free = close

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The one thread guard: one generation at a time on one context.

A generation is usually a lazy generator that holds the guard while it runs. When the thread
that owns the guard starts a new generation, the abandoned one (a stream the caller stopped
reading) is closed first, which releases the guard; a generation started from inside a running one
(an ``on_token`` callback, a logits processor) is refused. Another thread either waits for the
guard (``blocking=True``: the in-process OpenAI client and LangChain serialise their callers) or
gets a ``RuntimeError`` (``LLM`` used from two threads is a bug to report, not to hide).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

__all__ = ["GenerationGuard"]


class GenerationGuard:
    """Serialises generations on one context. ``holder`` is the generator that will hold it."""

    __slots__ = ("_lock", "_owner", "_active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._active: Any = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def acquire(self, holder: Any = None, blocking: bool = False) -> None:
        me = threading.get_ident()
        if self._owner == me:
            prev = self._active
            if prev is None or prev is holder:
                raise RuntimeError("cannot start a generation from inside a running one on the same model")
            try:
                prev.close()  # a stream this thread left unfinished: end it (this releases the guard)
            except ValueError:  # "generator already executing": called from inside its own callback
                raise RuntimeError("cannot start a generation from inside a running one on the same model") from None
            if self._owner == me:
                raise RuntimeError("cannot start a generation from inside a running one on the same model")
        if not self._lock.acquire(blocking=blocking):
            raise RuntimeError("this model is generating in another thread; use one LLM per thread, "
                               "or the batch engine for concurrent requests")
        self._owner, self._active = me, holder

    def release(self) -> None:
        self._owner, self._active = None, None
        self._lock.release()

    @contextlib.contextmanager
    def hold(self, holder: Any = None, blocking: bool = True) -> Iterator[None]:
        self.acquire(holder, blocking)
        try:
            yield
        finally:
            self.release()

    def close_active(self) -> None:
        """Ends this thread's unfinished generation, if it has one."""
        if self._active is not None and self._owner == threading.get_ident():
            self._active.close()

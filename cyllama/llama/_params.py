"""Typed, validated views of llama.cpp's parameter structs.

Each parameter class owns one C struct initialised from llama.cpp's defaults. Fields are
descriptors that check type and range on assignment, so a bad value raises before any C call
sees it; unknown names raise instead of being silently ignored.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, ClassVar

from .._ffi import ffi

__all__ = ["Field", "StructParams"]

_UINT32_MAX = 2**32 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class Field:
    """A struct field exposed as a validated attribute."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None,
                 doc: str = "", c_name: str | None = None,
                 choices: dict[str, int] | None = None):
        self.kind, self.lo, self.hi, self.doc, self.c_name = kind, lo, hi, doc, c_name
        self.choices = choices
        self.name = c_name or "value"
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        if self.c_name is None:
            self.c_name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = getattr(obj._struct, self.c_name)
        return bool(value) if self.kind is bool else value

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj._struct, self.c_name, self.check(value))

    def check(self, value: Any) -> Any:
        name = self.name
        if self.choices is not None and isinstance(value, str):
            try:
                value = self.choices[value.lower()]
            except KeyError:
                raise ValueError(f"{name} must be one of {sorted(self.choices)}, got {value!r}") from None
        if self.kind is bool:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise TypeError(f"{name} must be a bool, got {value!r}")
            return bool(value)
        if self.kind is int:
            if isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            value = float(value)
            if value != value:
                raise ValueError(f"{name} must not be NaN")
        if self.lo is not None and value < self.lo:
            raise ValueError(f"{name} must be >= {self.lo}, got {value}")
        if self.hi is not None and value > self.hi:
            raise ValueError(f"{name} must be <= {self.hi}, got {value}")
        return value


def uint32(doc: str = "", lo: int = 0, hi: int = _UINT32_MAX, **kw: Any) -> Field:
    return Field(int, lo, hi, doc, **kw)


def int32(doc: str = "", lo: int = _INT32_MIN, hi: int = _INT32_MAX, **kw: Any) -> Field:
    return Field(int, lo, hi, doc, **kw)


class StructParams:
    """Base of the parameter classes: one C struct, fields as validated attributes."""

    _ctype: ClassVar[str]
    _defaults: ClassVar[Callable[[], Any]]
    _extra: ClassVar[tuple[str, ...]] = ()  # properties that count as parameters
    _field_cache: ClassVar[dict[type, tuple[str, ...]]] = {}
    __slots__ = ("_struct", "_keepalive")

    def __init__(self, **kwargs: Any):
        object.__setattr__(self, "_struct", ffi.new(self._ctype + " *"))
        object.__setattr__(self, "_keepalive", {})
        self._struct[0] = type(self)._defaults()
        self._after_defaults()
        unknown = [k for k in kwargs if k not in self.fields()]
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameter(s) {', '.join(unknown)}; "
                            f"known: {', '.join(self.fields())}")
        for key, value in kwargs.items():
            setattr(self, key, value)

    def _after_defaults(self) -> None:
        """Hook for cyllama's own defaults on top of llama.cpp's."""

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        names = StructParams._field_cache.get(cls)
        if names is None:
            names = tuple(n for k in reversed(cls.__mro__) for n, v in vars(k).items()
                          if isinstance(v, Field) or n in cls._extra)
            StructParams._field_cache[cls] = names
        return names

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.fields():
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}; "
                                 f"known: {', '.join(self.fields())}")
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.fields()}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({body})"

    @property
    def value(self) -> Any:
        """The C struct by value, for passing to llama.cpp."""
        return self._struct[0]

"""GGUFContext: read, edit and write GGUF metadata (and tensors) through ggml's gguf API.

ggml's typed getters abort the process on a type mismatch, so every getter here checks the key's
type first and raises ``KeyError``/``TypeError`` instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .._lazy_numpy import np

from .._errors import CyllamaError, check_path
from .._ffi import ffi
from ._backend import lib
from ._handle import NativeHandle

__all__ = ["GGUFContext", "GGUF_TYPES"]

GGUF_TYPES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
              7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
_NUMPY = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
          7: "bool", 10: "uint64", 11: "int64", 12: "float64"}
_SCALAR = {  # suffix -> (gguf type, python check)
    "u8": (0, int), "i8": (1, int), "u16": (2, int), "i16": (3, int), "u32": (4, int), "i32": (5, int),
    "f32": (6, float), "bool": (7, bool), "str": (8, str), "u64": (10, int), "i64": (11, int), "f64": (12, float),
}
_RANGES = {"u8": (0, 2**8 - 1), "i8": (-(2**7), 2**7 - 1), "u16": (0, 2**16 - 1), "i16": (-(2**15), 2**15 - 1),
           "u32": (0, 2**32 - 1), "i32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1)}


class GGUFContext(NativeHandle):
    """A GGUF file's key/value metadata and tensor list; see :meth:`from_file` and :meth:`empty`."""

    def __init__(self, _ptr: Any, path: Path | None = None):
        if _ptr == ffi.NULL:
            raise ValueError("GGUFContext needs a native context; use from_file() or empty()")
        self.path = path
        self._adopt(_ptr, lib.gguf_free)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "GGUFContext":
        """Reads a GGUF file's metadata and tensor list (tensor data stays in the file)."""
        p = check_path(path, "GGUF")
        with open(p, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"not a GGUF file: {p}")
        params = ffi.new("struct gguf_init_params *")
        params.no_alloc = True
        params.ctx = ffi.NULL
        ptr = lib.gguf_init_from_file(os.fsencode(p), params[0])
        if ptr == ffi.NULL:
            raise ValueError(f"failed to read GGUF file (corrupt or truncated): {p}")
        return cls(ptr, p)

    @classmethod
    def empty(cls) -> "GGUFContext":
        """A new GGUF with no metadata and no tensors."""
        return cls(lib.gguf_init_empty())

    # -- keys ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(lib.gguf_get_version(self.ptr))

    @property
    def n_kv(self) -> int:
        return int(lib.gguf_get_n_kv(self.ptr))

    def keys(self) -> list[str]:
        ptr = self.ptr
        return [ffi.string(lib.gguf_get_key(ptr, i)).decode("utf-8", "replace") for i in range(lib.gguf_get_n_kv(ptr))]

    def find_key(self, key: str) -> int:
        """The key's index, or -1."""
        return int(lib.gguf_find_key(self.ptr, _key(key)))

    def __contains__(self, key: str) -> bool:
        return self.find_key(key) >= 0

    def _id(self, key: str) -> int:
        kid = self.find_key(key)
        if kid < 0:
            raise KeyError(key)
        return kid

    def get_kv_type(self, key: str) -> str:
        return GGUF_TYPES[int(lib.gguf_get_kv_type(self.ptr, self._id(key)))]

    def get_value(self, key: str) -> Any:
        """A key's value as a Python object (arrays as lists)."""
        return self._value(self._id(key))

    def _value(self, kid: int) -> Any:
        ptr = self.ptr
        t = int(lib.gguf_get_kv_type(ptr, kid))
        if t == 8:
            return ffi.string(lib.gguf_get_val_str(ptr, kid)).decode("utf-8", "replace")
        if t == 9:
            at = int(lib.gguf_get_arr_type(ptr, kid))
            n = int(lib.gguf_get_arr_n(ptr, kid))
            if at == 8:
                return [ffi.string(lib.gguf_get_arr_str(ptr, kid, i)).decode("utf-8", "replace") for i in range(n)]
            if at not in _NUMPY:
                return None  # nested arrays are not readable through gguf.h
            dt = np.dtype(_NUMPY[at])
            data = lib.gguf_get_arr_data(ptr, kid)
            return np.frombuffer(ffi.buffer(data, n * dt.itemsize), dtype=dt).tolist()
        dt = np.dtype(_NUMPY[t])
        raw = np.frombuffer(ffi.buffer(lib.gguf_get_val_data(ptr, kid), dt.itemsize), dtype=dt)[0]
        return raw.item()

    def get_all_metadata(self) -> dict[str, Any]:
        """Every key with its value."""
        return {k: self._value(i) for i, k in enumerate(self.keys())}

    def _typed_get(self, key: str, suffix: str) -> Any:
        kid = self._id(key)
        want = _SCALAR[suffix][0]
        have = int(lib.gguf_get_kv_type(self.ptr, kid))
        if have != want:
            raise TypeError(f"{key} holds {GGUF_TYPES.get(have)}, not {GGUF_TYPES[want]}")
        return self._value(kid)

    def _typed_set(self, key: str, suffix: str, value: Any) -> None:
        ptr = self.ptr
        kind = _SCALAR[suffix][1]
        if kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{key}: expected bool, got {type(value).__name__}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{key}: expected int, got {type(value).__name__}")
            lo, hi = _RANGES[suffix]
            if not lo <= value <= hi:
                raise ValueError(f"{key}: {value} out of range for {suffix}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"{key}: expected a number, got {type(value).__name__}")
        elif not isinstance(value, str):
            raise TypeError(f"{key}: expected str, got {type(value).__name__}")
        fn = getattr(lib, f"gguf_set_val_{suffix}")
        fn(ptr, _key(key), value.encode("utf-8") if kind is str else value)

    def get_val_str(self, key: str) -> str: return self._typed_get(key, "str")
    def get_val_u8(self, key: str) -> int: return self._typed_get(key, "u8")
    def get_val_i8(self, key: str) -> int: return self._typed_get(key, "i8")
    def get_val_u16(self, key: str) -> int: return self._typed_get(key, "u16")
    def get_val_i16(self, key: str) -> int: return self._typed_get(key, "i16")
    def get_val_u32(self, key: str) -> int: return self._typed_get(key, "u32")
    def get_val_i32(self, key: str) -> int: return self._typed_get(key, "i32")
    def get_val_u64(self, key: str) -> int: return self._typed_get(key, "u64")
    def get_val_i64(self, key: str) -> int: return self._typed_get(key, "i64")
    def get_val_f32(self, key: str) -> float: return self._typed_get(key, "f32")
    def get_val_f64(self, key: str) -> float: return self._typed_get(key, "f64")
    def get_val_bool(self, key: str) -> bool: return self._typed_get(key, "bool")

    def set_val_str(self, key: str, value: str) -> None: self._typed_set(key, "str", value)
    def set_val_u8(self, key: str, value: int) -> None: self._typed_set(key, "u8", value)
    def set_val_i8(self, key: str, value: int) -> None: self._typed_set(key, "i8", value)
    def set_val_u16(self, key: str, value: int) -> None: self._typed_set(key, "u16", value)
    def set_val_i16(self, key: str, value: int) -> None: self._typed_set(key, "i16", value)
    def set_val_u32(self, key: str, value: int) -> None: self._typed_set(key, "u32", value)
    def set_val_i32(self, key: str, value: int) -> None: self._typed_set(key, "i32", value)
    def set_val_u64(self, key: str, value: int) -> None: self._typed_set(key, "u64", value)
    def set_val_i64(self, key: str, value: int) -> None: self._typed_set(key, "i64", value)
    def set_val_f32(self, key: str, value: float) -> None: self._typed_set(key, "f32", value)
    def set_val_f64(self, key: str, value: float) -> None: self._typed_set(key, "f64", value)
    def set_val_bool(self, key: str, value: bool) -> None: self._typed_set(key, "bool", value)

    def set_arr_str(self, key: str, values: Iterable[str]) -> None:
        items = [ffi.new("char[]", str(v).encode("utf-8")) for v in values]
        arr = ffi.new("const char *[]", items) if items else ffi.new("const char *[1]")
        lib.gguf_set_arr_str(self.ptr, _key(key), arr, len(items))

    def set_arr_data(self, key: str, type_name: str, values: Iterable[Any]) -> None:
        """A numeric array; ``type_name`` is one of uint8 ... float64 (see GGUF_TYPES)."""
        codes = {v: k for k, v in GGUF_TYPES.items() if k in _NUMPY}
        if type_name not in codes:
            raise ValueError(f"type_name must be one of {sorted(codes)}, got {type_name!r}")
        arr = np.ascontiguousarray(np.asarray(list(values), dtype=_NUMPY[codes[type_name]]))
        lib.gguf_set_arr_data(self.ptr, _key(key), codes[type_name], ffi.from_buffer(arr), len(arr))

    def remove_key(self, key: str) -> bool:
        return int(lib.gguf_remove_key(self.ptr, _key(key))) >= 0

    # -- tensors ---------------------------------------------------------------------------
    @property
    def n_tensors(self) -> int:
        return int(lib.gguf_get_n_tensors(self.ptr))

    def get_tensors(self) -> list[dict[str, Any]]:
        """Name, type, shape, offset and size of every tensor."""
        ptr = self.ptr
        out = []
        for i in range(lib.gguf_get_n_tensors(ptr)):
            ne = lib.gguf_get_tensor_ne(ptr, i)
            shape = [int(ne[d]) for d in range(4)]
            while len(shape) > 1 and shape[-1] == 1:
                shape.pop()
            t = lib.gguf_get_tensor_type(ptr, i)
            out.append({
                "name": ffi.string(lib.gguf_get_tensor_name(ptr, i)).decode("utf-8", "replace"),
                "type": ffi.string(lib.ggml_type_name(t)).decode(),
                "shape": shape,
                "offset": int(lib.gguf_get_tensor_offset(ptr, i)),
                "size": int(lib.gguf_get_tensor_size(ptr, i)),
            })
        return out

    # -- writing ---------------------------------------------------------------------------
    def write_to_file(self, path: str | os.PathLike, write_tensors: bool = True) -> Path:
        """Writes the GGUF atomically; tensor data is copied from the source file.

        ggml writes the metadata (header, keys, tensor infos, padding); the tensor data is then
        appended here from a memory map of the source, in the layout those infos describe. (The
        pinned ggml's own tensor writer reads uninitialised fields of metadata-only contexts.)
        """
        ptr = self.ptr
        dest = Path(path).expanduser()
        if not dest.parent.exists():
            raise FileNotFoundError(f"folder does not exist: {dest.parent}")
        n_tensors = int(lib.gguf_get_n_tensors(ptr))
        with_tensors = bool(write_tensors) and n_tensors > 0
        if with_tensors and self.path is None:
            raise ValueError("this GGUF has tensors without data; write with write_tensors=False")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            if not lib.gguf_write_to_file(ptr, os.fsencode(tmp), True):
                raise CyllamaError(f"failed to write GGUF to {dest}")
            if with_tensors:
                self._append_tensor_data(tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def _append_tensor_data(self, out_path: str) -> None:
        ptr = self.ptr
        align = int(lib.gguf_get_alignment(ptr))
        src_base = int(lib.gguf_get_data_offset(ptr))
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        try:
            with open(out_path, "r+b") as out:
                out.seek(0, os.SEEK_END)
                expected = 0
                for i in range(int(lib.gguf_get_n_tensors(ptr))):
                    off = int(lib.gguf_get_tensor_offset(ptr, i))
                    size = int(lib.gguf_get_tensor_size(ptr, i))
                    if off != expected:
                        raise ValueError(f"{self.path}: tensor data is not laid out sequentially; cannot rewrite")
                    start = src_base + off
                    if start + size > len(mapped):
                        raise ValueError(f"{self.path} is truncated: tensor {i} ends past the end of the file")
                    out.write(mapped[start:start + size].tobytes())
                    padded = (size + align - 1) // align * align
                    out.write(b"\0" * (padded - size))
                    expected = off + padded
        finally:
            del mapped

    def __repr__(self) -> str:
        if self.closed:
            return "<GGUFContext (closed)>"
        return f"<GGUFContext {self.path.name if self.path else '(new)'}: {self.n_kv} keys, {self.n_tensors} tensors>"


def _key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise ValueError(f"GGUF keys are non-empty strings, got {key!r}")
    return key.encode("utf-8")

"""Convert the Silero VAD TorchScript model into whisper.cpp's ggml VAD format, without torch.

The ``silero-vad`` package ships ``silero_vad/data/silero_vad.jit``, a TorchScript archive: a zip
with one top folder holding ``data.pkl`` (the module tree, pickled; tensors are persistent ids
naming raw little-endian storages ``data/<key>``), ``byteorder`` and the TorchScript code. It is
read here with a restricted unpickler that knows only the few globals a TorchScript module tree
uses (``torch._utils._rebuild_tensor_v2``, storage types, ``collections.OrderedDict``,
``torch.jit._pickle.build_*list`` and ``__torch__.*`` module classes, which become plain
attribute holders); anything else is refused, so no code from the file runs.

The output is what whisper.cpp's ``models/convert-silero-vad-to-ggml.py`` writes (the same bytes):
    i32 magic 0x67676d6c; i32 len, "silero-16k"; i32 major, minor, patch (the package version);
    i32 window 512, context 64, n_encoder_layers 4; per encoder layer i32 in, out, kernel;
    i32 lstm input 128, hidden 128; i32 final conv in 128, out 1; then per tensor
    i32 n_dims, name_len, ftype (0 f32, 1 f16), i32 ne[n_dims] (the numpy shape reversed), name,
    data. Tensors are the 16 kHz model's (``_model.*``) encoder convs, LSTM cell, final conv and
    last the STFT basis; size-1 dimensions are squeezed (so the final conv's bias is a 0-d
    tensor), except the STFT basis, whose 3 dimensions are kept; conv weights (and the basis) are
    f16, the rest f32.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .convert import GGML_MAGIC, atomic_output, write_tensor_record

__all__ = ["read_torchscript_tensors", "convert_silero_vad", "main"]

_STORAGES = {"FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8", "IntStorage": "i4",
             "LongStorage": "i8", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
             "BoolStorage": "?", "BFloat16Storage": "u2"}

_N_ENCODER = 4
_ENCODER_IN, _ENCODER_OUT, _KERNEL = (129, 128, 64, 64), (128, 64, 64, 128), 3
_LSTM_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_STFT_KEY = "_model.stft.forward_basis_buffer"


class _Module:
    """A TorchScript module object from ``data.pkl``: only its attributes."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["__state__"] = state


class _Storage:
    def __init__(self, name: str):
        self.name = name


def _list(items: Any) -> list:
    return list(items)


def _rebuild_parameter(data: Any, _requires_grad: Any = None, _hooks: Any = None) -> Any:
    return data


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, read_storage: Any):
        super().__init__(file)
        self._read_storage = read_storage
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist",
                                                      "build_tensorlist", "build_stringlist"):
            return _list
        if module.startswith("__torch__.") and name.isidentifier():
            key = f"{module}.{name}"
            if key not in self._classes:
                self._classes[key] = type(name, (_Module,), {"__module__": module})
            return self._classes[key]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript file")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self._read_storage(pid[2], _STORAGES[pid[1].name], pid[4])


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
    """A tensor as a numpy array over its storage, bounds checked (the file is untrusted)."""
    if not isinstance(storage, np.ndarray) or not isinstance(offset, int) or \
            not all(isinstance(v, int) and v >= 0 for v in (*size, *stride)) or len(size) != len(stride):
        raise pickle.UnpicklingError("malformed tensor in TorchScript file")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or last >= storage.size:
            raise pickle.UnpicklingError(f"tensor of size {tuple(size)} does not fit its storage ({storage.size})")
    elif offset < 0 or offset > storage.size:
        raise pickle.UnpicklingError("tensor offset outside its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)  # C-contiguous copy


def _walk(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, np.ndarray):
            out[prefix + name] = value
        elif isinstance(value, _Module):
            _walk(value, f"{prefix}{name}.", out)


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor attribute of a TorchScript module tree, by dotted path (``_model.encoder.0.
    reparam_conv.weight``), as numpy arrays; no torch needed. Raises ``ValueError`` for a file
    that is not a TorchScript archive."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a TorchScript archive: {path} ({exc})") from None
    with zf:
        names = zf.namelist()
        tops = [n[: -len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(tops) != 1:
            raise ValueError(f"not a TorchScript archive (no single data.pkl): {path}")
        top = tops[0]
        order = "<"
        if top + "byteorder" in names:
            bo = zf.read(top + "byteorder").decode("ascii", "replace").strip()
            if bo not in ("little", "big"):
                raise ValueError(f"unknown byte order {bo!r} in {path}")
            order = "<" if bo == "little" else ">"
        storages: dict[str, np.ndarray] = {}

        def read_storage(key: str, code: str, numel: int) -> np.ndarray:
            if key not in storages:
                member = f"{top}data/{key}"
                if member not in names:
                    raise pickle.UnpicklingError(f"missing storage {key!r}")
                raw = zf.read(member)
                dt = np.dtype(code if code in ("i1", "u1", "?") else order + code)
                if len(raw) < numel * dt.itemsize:
                    raise pickle.UnpicklingError(f"storage {key!r} is shorter than its {numel} elements")
                storages[key] = np.frombuffer(raw, dtype=dt, count=numel).astype(dt.newbyteorder("="))
            return storages[key]

        try:
            with zf.open(top + "data.pkl") as f:
                root = _TorchScriptUnpickler(f, read_storage).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"cannot read TorchScript file {path}: {exc}") from None
    if not isinstance(root, _Module):
        raise ValueError(f"{path} does not hold a TorchScript module")
    out: dict[str, np.ndarray] = {}
    _walk(root, "", out)
    return out


def _silero_tensors(t: dict[str, np.ndarray]) -> list[str]:
    keys = []
    for i in range(_N_ENCODER):
        keys += [f"_model.encoder.{i}.reparam_conv.weight", f"_model.encoder.{i}.reparam_conv.bias"]
    keys += [f"_model.decoder.rnn.{k}" for k in _LSTM_KEYS]
    keys += ["_model.decoder.decoder.2.weight", "_model.decoder.decoder.2.bias", _STFT_KEY]
    missing = [k for k in keys if k not in t]
    if missing:
        raise ValueError(f"not a Silero VAD v5/v6 model: missing {', '.join(missing)}")
    return keys


def _parse_version(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"version must be MAJOR.MINOR.PATCH, got {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def convert_silero_vad(jit_path: str | os.PathLike, out_path: str | os.PathLike, version: str) -> Path:
    """Convert ``silero_vad.jit`` from the ``silero-vad`` package ``version`` (e.g. "6.2.0", written
    into the header as whisper.cpp's converter does) into a ggml VAD model at ``out_path``."""
    major, minor, patch = _parse_version(version)
    tensors = read_torchscript_tensors(jit_path)
    keys = _silero_tensors(tensors)
    out_path = Path(out_path)
    with atomic_output(out_path) as f:
        model_type = b"silero-16k"
        f.write(struct.pack("<ii", GGML_MAGIC, len(model_type)) + model_type)
        f.write(struct.pack("<6i", major, minor, patch, 512, 64, _N_ENCODER))
        for i in range(_N_ENCODER):
            f.write(struct.pack("<3i", _ENCODER_IN[i], _ENCODER_OUT[i], _KERNEL))
        f.write(struct.pack("<4i", 128, 128, 128, 1))
        for key in keys:
            data = np.asarray(tensors[key], dtype=np.float32)
            if key == _STFT_KEY:
                if data.ndim != 3:
                    raise ValueError(f"{key} must have 3 dimensions, has shape {data.shape}")
                f16 = True
            else:
                data = data.squeeze()
                f16 = "weight" in key and ("encoder" in key or "_model.decoder.decoder.2" in key)
            write_tensor_record(f, key, np.asarray(data, dtype="<f2" if f16 else "<f4"), f16)  # 0-d stays 0-d
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] in ("-h", "--help"):
        print("usage: python -m cyllama.whisper.convert_silero SILERO_VAD.jit VERSION OUT.bin\n"
              "  (VERSION is the silero-vad package's, e.g. 6.2.0)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out = convert_silero_vad(args[0], args[2], args[1])
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size} bytes) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

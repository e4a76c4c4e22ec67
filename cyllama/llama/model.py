"""LlamaModel: a loaded GGUF model, and LlamaModelParams."""

from __future__ import annotations

import math
import os
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import _logging
from .._errors import ModelLoadError, RpcError, check_path
from .._ffi import ffi
from ._backend import ensure_backend, lib
from ._handle import NativeHandle, guarded
from ._params import Field, StructParams, int32

if TYPE_CHECKING:
    from .vocab import LlamaVocab

__all__ = ["LlamaModelParams", "LlamaModel", "check_gguf_file"]

_LOAD_MODES = {"none": 0, "mmap": 1, "mlock": 2, "mmap_mlock": 3, "direct_io": 4, "auto": -1}


class LlamaModelParams(StructParams):
    """How a model is loaded (``struct llama_model_params``).

    ``rpc_servers`` (``["host:port", ...]`` or ``"host:port,host:port"``) places the offloaded
    layers on llama.cpp ``rpc-server`` processes on other machines (see :mod:`cyllama.llama.rpc`);
    ``tensor_split`` gives each device's share of the layers, in the order RPC servers, then local
    GPUs (``None``: by free memory, as llama.cpp does).
    """

    __slots__ = ("_rpc_servers",)
    _ctype = "struct llama_model_params"
    _defaults = lib.llama_model_default_params
    _extra = ("use_mmap", "use_mlock", "tensor_split", "rpc_servers")

    n_gpu_layers = int32("layers to offload to the GPU; negative = all")
    split_mode = Field(int, 0, 3, "how to split the model across GPUs (0 none, 1 layer, 2 row, 3 tensor)",
                       choices={"none": 0, "layer": 1, "row": 2, "tensor": 3})
    main_gpu = int32("GPU for the whole model when split_mode is none", lo=0)
    load_mode = Field(int, -1, 4, "load mode (-1 auto, 0 none, 1 mmap, 2 mlock, 3 mmap+mlock, 4 direct I/O)",
                      choices=_LOAD_MODES)
    vocab_only = Field(bool, doc="load only the vocabulary, no weights")
    check_tensors = Field(bool, doc="validate tensor data while loading")
    use_extra_bufts = Field(bool, doc="use extra buffer types (weight repacking)")
    no_host = Field(bool, doc="bypass the host buffer")

    def _after_defaults(self) -> None:
        object.__setattr__(self, "_rpc_servers", ())

    @property
    def rpc_servers(self) -> tuple[str, ...]:
        """The ``host:port`` of each RPC server the model's layers go to (empty: local only)."""
        return self._rpc_servers

    @rpc_servers.setter
    def rpc_servers(self, value: str | Sequence[str] | None) -> None:
        from .rpc import parse_rpc_servers

        object.__setattr__(self, "_rpc_servers", parse_rpc_servers(value))

    @property
    def tensor_split(self) -> list[float] | None:
        """Each device's proportion of the model (layers, or rows with split_mode row)."""
        split = self._keepalive.get("tensor_split_list")
        return list(split) if split is not None else None

    @tensor_split.setter
    def tensor_split(self, value: Sequence[float] | None) -> None:
        if value is None:
            self._keepalive.pop("tensor_split", None)
            self._keepalive.pop("tensor_split_list", None)
            self._struct.tensor_split = ffi.NULL
            return
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"tensor_split must be a sequence of numbers, got {type(value).__name__}")
        n_max = int(lib.llama_max_devices())
        if len(value) > n_max:
            raise ValueError(f"tensor_split has {len(value)} entries; llama.cpp supports at most {n_max} devices")
        split = []
        for v in value:
            f = Field(float).check(v)
            if not math.isfinite(f) or f < 0:
                raise ValueError(f"tensor_split entries must be finite and >= 0, got {v!r}")
            split.append(f)
        arr = ffi.new("float[]", n_max)
        arr[0:len(split)] = split
        self._keepalive["tensor_split"] = arr
        self._keepalive["tensor_split_list"] = split
        self._struct.tensor_split = arr

    @property
    def use_mmap(self) -> bool:
        """Memory-map the model file (maps onto load_mode)."""
        return self.load_mode in (-1, 1, 3)

    @use_mmap.setter
    def use_mmap(self, value: bool) -> None:
        mlock = self.use_mlock
        self.load_mode = (3 if mlock else 1) if Field(bool).check(value) else (2 if mlock else 0)

    @property
    def use_mlock(self) -> bool:
        """Lock the model in RAM (maps onto load_mode)."""
        return self.load_mode in (2, 3)

    @use_mlock.setter
    def use_mlock(self, value: bool) -> None:
        mmap = self.use_mmap
        self.load_mode = (3 if mmap else 2) if Field(bool).check(value) else (1 if mmap else 0)


def check_gguf_file(path: str | os.PathLike) -> Path:
    """Checks that ``path`` exists and starts like a GGUF file, before llama.cpp reads it."""
    p = check_path(path, "model")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"model file is empty: {p}")
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:4] != b"GGUF":
        raise ValueError(f"not a GGUF model file (bad magic {head[:4]!r}): {p}")
    if size < 24:
        raise ValueError(f"GGUF file is truncated ({size} bytes): {p}")
    return p


class LlamaModel(NativeHandle):
    """A GGUF model loaded by llama.cpp.

    Raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a file that is not a GGUF,
    and :class:`ModelLoadError` (a ``RuntimeError``) when llama.cpp rejects the file.
    """

    def __init__(self, path_model: str | os.PathLike, params: LlamaModelParams | None = None,
                 verbose: bool | None = None):
        ensure_backend()
        if verbose is not None:
            _logging.set_verbose(verbose)
        self.path = check_gguf_file(path_model)
        self.params = params if params is not None else LlamaModelParams()
        if not isinstance(self.params, LlamaModelParams):
            raise TypeError(f"params must be LlamaModelParams, got {type(params).__name__}")
        self._dependents: weakref.WeakSet = weakref.WeakSet()
        # a vocabulary-only load has no weights to place: it does not contact the servers
        self.rpc_servers: tuple[str, ...] = () if self.params.vocab_only else self.params.rpc_servers
        before = _logging.log_mark()
        if self.rpc_servers:
            from . import rpc

            if self.params.n_gpu_layers == 0:
                warnings.warn("rpc_servers with n_gpu_layers=0 puts no layer on the RPC servers; "
                              "use n_gpu_layers=-1 (all) or a layer count", stacklevel=2)
            ptr = rpc.load_model(self.rpc_servers, self._load)
            free = rpc.guarded_free(lib.llama_model_free, self.rpc_servers, release=True)
        else:
            ptr = self._load(None)
            free = lib.llama_model_free
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "llama.cpp could not load it"
            raise ModelLoadError(f"failed to load model {self.path}: {why}")
        self._adopt(ptr, free)
        self._vocab_ptr = lib.llama_model_get_vocab(ptr)
        self._vocab: LlamaVocab | None = None
        self._metadata: dict[str, str] | None = None

    def _load(self, devices: list[Any] | None) -> Any:
        """llama_model_load_from_file with the params, placed on ``devices`` when given."""
        if devices is None:
            return lib.llama_model_load_from_file(os.fsencode(self.path), self.params.value)
        params = ffi.new("struct llama_model_params *", self.params.value)
        dev_list = ffi.new("ggml_backend_dev_t[]", [*devices, ffi.NULL])
        params.devices = dev_list  # llama.cpp copies the list
        return lib.llama_model_load_from_file(os.fsencode(self.path), params[0])

    def _free_fn(self, free: Any) -> Any:
        """``free`` for a native object holding memory on this model's devices (a context)."""
        if not self.rpc_servers:
            return free
        from .rpc import guarded_free

        return guarded_free(free, self.rpc_servers)

    def check_rpc_servers(self) -> None:
        """Raises :class:`~cyllama.RpcError` when an RPC server the model is placed on refuses
        connections (it died or stopped: ggml-rpc would abort the process at the next call there).
        Does nothing for a local model. A server that dies during a call still ends the process."""
        if self.rpc_servers:
            from .rpc import refuses_connections

            self.ptr  # raises when closed
            gone = [e for e in self.rpc_servers if refuses_connections(e)]
            if gone:
                raise RpcError(f"RPC server(s) {', '.join(gone)} of model {self.path.name} refuse connections: "
                               "restart them, then this process (the model's memory there is lost)")

    def _before_close(self) -> None:
        for dep in list(self._dependents):
            dep.close()

    # -- properties ------------------------------------------------------------------------
    @property
    @guarded
    def n_params(self) -> int:
        return int(lib.llama_model_n_params(self.ptr))

    @property
    @guarded
    def n_layers(self) -> int:
        return int(lib.llama_model_n_layer(self.ptr))

    n_layer = n_layers

    @property
    @guarded
    def n_embd(self) -> int:
        return int(lib.llama_model_n_embd(self.ptr))

    @property
    @guarded
    def n_head(self) -> int:
        return int(lib.llama_model_n_head(self.ptr))

    @property
    @guarded
    def n_head_kv(self) -> int:
        return int(lib.llama_model_n_head_kv(self.ptr))

    @property
    @guarded
    def n_ctx_train(self) -> int:
        return int(lib.llama_model_n_ctx_train(self.ptr))

    @property
    def n_vocab(self) -> int:
        self.ptr  # raises when closed
        return int(lib.llama_vocab_n_tokens(self._vocab_ptr))

    @property
    @guarded
    def size(self) -> int:
        """Total size of the weights in bytes."""
        return int(lib.llama_model_size(self.ptr))

    @property
    @guarded
    def desc(self) -> str:
        buf = ffi.new("char[256]")
        lib.llama_model_desc(self.ptr, buf, 256)
        return ffi.string(buf).decode("utf-8", "replace")

    @property
    @guarded
    def rope_type(self) -> int:
        return int(lib.llama_model_rope_type(self.ptr))

    @property
    @guarded
    def has_encoder(self) -> bool:
        return bool(lib.llama_model_has_encoder(self.ptr))

    @property
    @guarded
    def has_decoder(self) -> bool:
        return bool(lib.llama_model_has_decoder(self.ptr))

    @property
    @guarded
    def is_recurrent(self) -> bool:
        return bool(lib.llama_model_is_recurrent(self.ptr))

    @property
    @guarded
    def decoder_start_token(self) -> int:
        return int(lib.llama_model_decoder_start_token(self.ptr))

    # -- metadata --------------------------------------------------------------------------
    @staticmethod
    def _read_string(fn: Any, *args: Any) -> str | None:
        size = 256
        while True:
            buf = ffi.new("char[]", size)
            n = fn(*args, buf, size)
            if n < 0:
                return None
            if n < size:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            size = n + 1

    @property
    @guarded
    def metadata(self) -> dict[str, str]:
        """All GGUF metadata key/value pairs, values as strings (arrays are summarised by llama.cpp)."""
        if self._metadata is None:
            ptr = self.ptr
            out = {}
            for i in range(lib.llama_model_meta_count(ptr)):
                key = self._read_string(lib.llama_model_meta_key_by_index, ptr, i)
                if key is not None:
                    out[key] = self._read_string(lib.llama_model_meta_val_str_by_index, ptr, i) or ""
            self._metadata = out
        return dict(self._metadata)

    @guarded
    def meta_val_str(self, key: str) -> str | None:
        """One metadata value as a string, or None when the key is absent."""
        return self._read_string(lib.llama_model_meta_val_str, self.ptr, key.encode())

    @guarded
    def chat_template(self, name: str | None = None) -> str | None:
        """The model's chat template (``tokenizer.chat_template``), or None."""
        p = lib.llama_model_chat_template(self.ptr, name.encode() if name else ffi.NULL)
        return None if p == ffi.NULL else ffi.string(p).decode("utf-8", "replace")

    # -- vocab -----------------------------------------------------------------------------
    def get_vocab(self) -> "LlamaVocab":
        """The model's vocabulary (tokenizer)."""
        from .vocab import LlamaVocab

        self.ptr  # raises when closed
        if self._vocab is None:
            self._vocab = LlamaVocab(self)
        return self._vocab

    @property
    def vocab(self) -> "LlamaVocab":
        return self.get_vocab()

    def __repr__(self) -> str:
        if self.closed:
            return f"<LlamaModel {self.path.name} (closed)>"
        return f"<LlamaModel {self.path.name}: {self.desc}, {self.n_params / 1e6:.0f}M params>"

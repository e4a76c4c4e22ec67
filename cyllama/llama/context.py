"""LlamaContext: inference state over a model (KV cache, logits, embeddings), and its params."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .._lazy_numpy import np

from .. import _logging
from .._errors import CyllamaError, DecodeError, check_path
from .._ffi import ffi
from ._backend import default_n_threads, lib
from ._handle import NativeHandle, guarded
from ._params import Field, StructParams, int32, uint32
from .batch import LlamaBatch
from .model import LlamaModel

__all__ = ["LlamaContextParams", "LlamaContext"]

_POOLING = {"unspecified": -1, "none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
_FLASH = {"auto": -1, "disabled": 0, "off": 0, "enabled": 1, "on": 1}
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


class LlamaContextParams(StructParams):
    """How a context is created (``struct llama_context_params``).

    Thread counts default to the cores this process may use, not llama.cpp's fixed 4.
    """

    __slots__ = ()
    _ctype = "struct llama_context_params"
    _defaults = lib.llama_context_default_params

    n_ctx = uint32("context size in tokens; 0 = the model's training context", hi=1 << 24)
    n_batch = uint32("most tokens one llama_decode call may take", lo=1, hi=1 << 24)
    n_ubatch = uint32("physical batch size", lo=1, hi=1 << 24)
    n_seq_max = uint32("most sequences (parallel slots)", lo=1, hi=1 << 16)
    n_threads = int32("threads for generation", lo=1, hi=1024)
    n_threads_batch = int32("threads for prompt processing", lo=1, hi=1024)
    rope_scaling_type = Field(int, -1, 3, "RoPE scaling (-1 from model, 0 none, 1 linear, 2 yarn, 3 longrope)")
    pooling_type = Field(int, -1, 4, "embedding pooling (-1 from model, 0 none, 1 mean, 2 cls, 3 last, 4 rank)",
                         choices=_POOLING)
    attention_type = Field(int, -1, 1, "attention for embeddings (-1 from model, 0 causal, 1 non-causal)")
    flash_attn_type = Field(int, -1, 1, "flash attention (-1 auto, 0 off, 1 on)", choices=_FLASH)
    rope_freq_base = Field(float, 0.0, doc="RoPE base frequency; 0 = from model")
    rope_freq_scale = Field(float, 0.0, doc="RoPE frequency scale; 0 = from model")
    yarn_ext_factor = Field(float, doc="YaRN extrapolation mix; negative = from model")
    yarn_attn_factor = Field(float, doc="YaRN magnitude scaling")
    yarn_beta_fast = Field(float, doc="YaRN low correction dim")
    yarn_beta_slow = Field(float, doc="YaRN high correction dim")
    yarn_orig_ctx = uint32("YaRN original context size")
    type_k = Field(int, 0, 42, "K cache data type (ggml_type)", choices=_GGML_TYPES)
    type_v = Field(int, 0, 42, "V cache data type (ggml_type)", choices=_GGML_TYPES)
    embeddings = Field(bool, doc="extract embeddings (with logits)")
    offload_kqv = Field(bool, doc="offload the KQV ops and KV cache to the GPU")
    no_perf = Field(bool, doc="do not measure performance timings")
    op_offload = Field(bool, doc="offload host tensor operations to the device")
    swa_full = Field(bool, doc="full-size sliding-window cache")
    kv_unified = Field(bool, doc="one KV buffer shared by all sequences")

    def _after_defaults(self) -> None:
        self.no_perf = False  # keep llama.cpp's timing counters (perf_data) on
        n = default_n_threads()
        self.n_threads = n
        self.n_threads_batch = n


class LlamaContext(NativeHandle):
    """An inference context over a :class:`LlamaModel`.

    One context is used by one thread at a time (the GIL is released inside llama.cpp); a second
    thread calling ``decode`` concurrently gets a ``RuntimeError`` rather than corrupt state.
    ``get_logits*`` and ``get_embeddings*`` return copies (``copy=False``: zero-copy views for code
    that holds the context while it reads them). ``close()`` from another thread waits for a
    running decode or state copy to return.
    """

    def __init__(self, model: LlamaModel, params: LlamaContextParams | None = None, verbose: bool | None = None):
        if not isinstance(model, LlamaModel):
            raise TypeError(f"model must be a LlamaModel, got {type(model).__name__}")
        if verbose is not None:
            _logging.set_verbose(verbose)
        self.model = model
        self.params = params if params is not None else LlamaContextParams()
        if not isinstance(self.params, LlamaContextParams):
            raise TypeError(f"params must be LlamaContextParams, got {type(params).__name__}")
        p = self.params
        if p.n_ubatch > p.n_batch:
            p.n_ubatch = p.n_batch
        before = _logging.log_mark()
        ptr = lib.llama_init_from_model(model.ptr, p.value)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "llama.cpp could not create it"
            raise CyllamaError(f"failed to create a context for {model.path.name}: {why}")
        self._adopt(ptr, model._free_fn(lib.llama_free))
        model._dependents.add(self)
        self._mem = lib.llama_get_memory(ptr)
        self.n_ctx = int(lib.llama_n_ctx(ptr))
        self.n_batch = int(lib.llama_n_batch(ptr))
        self.n_ubatch = int(lib.llama_n_ubatch(ptr))
        self.n_seq_max = int(lib.llama_n_seq_max(ptr))
        self.n_vocab = model.n_vocab
        self.n_embd = model.n_embd
        self._n_outputs = 0
        self._last_n_tokens = 0
        self._out_flags: np.ndarray | None = None
        self._abort_cb: Any = None
        self._interrupted = False

    # -- decoding --------------------------------------------------------------------------
    def _check_batch(self, batch: LlamaBatch) -> int:
        if not isinstance(batch, LlamaBatch):
            raise TypeError(f"decode takes a LlamaBatch, got {type(batch).__name__}")
        batch._check_open()
        n = batch._b.n_tokens
        if n <= 0:
            raise ValueError("cannot decode an empty batch")
        if n > self.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds the context's n_batch ({self.n_batch}); "
                             "split it or create the context with a larger n_batch")
        if batch._tokens is not None:
            if n == 1:
                t = batch._tokens[0]
                if not 0 <= t < self.n_vocab:
                    raise ValueError(f"token id {t} is out of range for a vocabulary of {self.n_vocab}")
            else:
                toks = batch._tokens[:n]
                lo, hi = int(toks.min()), int(toks.max())
                if lo < 0 or hi >= self.n_vocab:
                    raise ValueError(f"token id {lo if lo < 0 else hi} is out of range for a vocabulary of {self.n_vocab}")
        elif batch.embd != self.n_embd:
            raise ValueError(f"embedding batch width {batch.embd} != model n_embd {self.n_embd}")
        if batch.n_seq_max > self.n_seq_max:
            seq = batch._seq_id
            for i in range(n):
                for j in range(batch._n_seq[i]):
                    if seq[i][j] >= self.n_seq_max:
                        raise ValueError(f"sequence id {seq[i][j]} >= the context's n_seq_max ({self.n_seq_max})")
        if n > 1 and not batch._auto_pos:
            pos = batch._pos[:n]
            if (batch._n_seq[:n] == 1).all():
                seqs = np.fromiter((batch._seq_id[i][0] for i in range(n)), np.int32, n) if batch.n_seq_max > 1 else None
                if seqs is None or (seqs == seqs[0]).all():
                    if (np.diff(pos) != 1).any():
                        raise ValueError("positions within a sequence must be consecutive and increasing")
        return n

    def decode(self, batch: LlamaBatch) -> int:
        """Runs the model on a batch; raises :class:`DecodeError` if llama.cpp reports failure."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("LlamaContext is being used by another thread")
        try:
            ptr = self.ptr
            with batch._busy:  # closing the batch waits for the decode that reads it
                n = self._check_batch(batch)
                if batch._auto_pos:
                    rc = lib.llama_decode(ptr, batch._auto_value())
                else:
                    rc = lib.llama_decode(ptr, batch._b[0])
                self._last_n_tokens = n
                if batch._auto_pos:
                    self._n_outputs, self._out_flags = 1, None
                elif n == 1:
                    self._n_outputs, self._out_flags = int(batch._logits[0] != 0), None
                else:
                    flags = batch._logits[:n].copy()
                    self._n_outputs, self._out_flags = int(np.count_nonzero(flags)), flags
        finally:
            self._busy.release()
        if rc != 0:
            self._n_outputs = 0
            if rc == 2 and self._interrupted:
                self._interrupted = False
                raise KeyboardInterrupt
            raise DecodeError(rc)
        return 0

    def _decode_outside(self, run: Any, logits_last: bool) -> Any:
        """Runs ``run()``, a decode made by another library (libmtmd's media evaluation), under this
        context's thread check, then records its outputs: the last token's logits, or none."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("LlamaContext is being used by another thread")
        try:
            self.ptr
            rc = run()
        finally:
            self._busy.release()
        self._n_outputs, self._out_flags = (1 if logits_last and rc == 0 else 0), None
        return rc

    def encode(self, batch: LlamaBatch) -> int:
        """Runs an encoder (for encoder-decoder and embedding models)."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("LlamaContext is being used by another thread")
        try:
            ptr = self.ptr
            with batch._busy:
                self._check_batch(batch)
                rc = lib.llama_encode(ptr, batch._auto_value() if batch._auto_pos else batch._b[0])
        finally:
            self._busy.release()
        if rc != 0:
            raise DecodeError(rc, "llama_encode")
        return 0

    def check_output_index(self, i: int) -> int:
        """Raises ValueError unless ``i`` names a token whose output the last decode computed."""
        n_out = self._n_outputs
        if n_out == 0:
            raise ValueError("no outputs: decode a batch with logits requested first")
        if i < 0:
            if i < -n_out:
                raise ValueError(f"output index {i} out of range ({n_out} outputs)")
            return i
        flags = self._out_flags
        if flags is None:
            if i >= self._last_n_tokens:
                raise ValueError(f"batch index {i} out of range ({self._last_n_tokens} tokens)")
            return i
        if i >= len(flags) or not flags[i]:
            raise ValueError(f"batch index {i} has no output (request logits for it when adding it)")
        return i

    @staticmethod
    def _array(p: Any, n: int, copy: bool) -> np.ndarray:
        view = np.frombuffer(ffi.buffer(p, 4 * n), dtype=np.float32)
        return view.copy() if copy else view

    @guarded
    def get_logits_ith(self, i: int = -1, copy: bool = True) -> np.ndarray:
        """Logits of the token at batch index ``i`` (negative: from the last output).

        A copy by default. ``copy=False`` gives a zero-copy view into llama.cpp's buffer, valid
        only until the next decode or ``close()`` (reading it later reads freed memory): use it
        only while holding the context (``with ctx._busy:``), as the decoding core does.
        """
        ptr = self.ptr
        self.check_output_index(i)
        p = lib.llama_get_logits_ith(ptr, i)
        if p == ffi.NULL:
            raise ValueError(f"no logits for batch index {i}")
        return self._array(p, self.n_vocab, copy)

    @guarded
    def get_logits(self, copy: bool = True) -> np.ndarray:
        """Logits of every output of the last decode, shape (n_outputs, n_vocab); a copy unless
        ``copy=False`` (see :meth:`get_logits_ith`)."""
        ptr = self.ptr
        if self._n_outputs == 0:
            raise ValueError("no outputs: decode a batch with logits requested first")
        p = lib.llama_get_logits(ptr)
        return self._array(p, self._n_outputs * self.n_vocab, copy).reshape(self._n_outputs, self.n_vocab)

    @guarded
    def get_embeddings_ith(self, i: int = -1, copy: bool = True) -> np.ndarray:
        ptr = self.ptr
        self.check_output_index(i)
        p = lib.llama_get_embeddings_ith(ptr, i)
        if p == ffi.NULL:
            raise ValueError(f"no embeddings for batch index {i} (create the context with embeddings=True)")
        return self._array(p, self.n_embd, copy)

    @guarded
    def get_embeddings_seq(self, seq_id: int, copy: bool = True) -> np.ndarray:
        """Pooled embedding of one sequence (pooling_type other than none)."""
        ptr = self.ptr
        self._check_seq(seq_id)
        p = lib.llama_get_embeddings_seq(ptr, seq_id)
        if p == ffi.NULL:
            raise ValueError(f"no pooled embedding for sequence {seq_id}")
        n = max(1, int(lib.llama_model_n_cls_out(self.model.ptr))) if self.pooling_type == 4 else self.n_embd
        return self._array(p, n, copy)

    @property
    @guarded
    def pooling_type(self) -> int:
        return int(lib.llama_pooling_type(self.ptr))

    @guarded
    def set_embeddings(self, on: bool) -> None:
        lib.llama_set_embeddings(self.ptr, bool(on))

    @guarded
    def set_causal_attn(self, on: bool) -> None:
        lib.llama_set_causal_attn(self.ptr, bool(on))

    @guarded
    def synchronize(self) -> None:
        lib.llama_synchronize(self.ptr)

    # -- threads ---------------------------------------------------------------------------
    @property
    @guarded
    def n_threads(self) -> int:
        return int(lib.llama_n_threads(self.ptr))

    @property
    @guarded
    def n_threads_batch(self) -> int:
        return int(lib.llama_n_threads_batch(self.ptr))

    @guarded
    def set_n_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        nb = n_threads if n_threads_batch is None else n_threads_batch
        for name, v in (("n_threads", n_threads), ("n_threads_batch", nb)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
                raise ValueError(f"{name} must be an int in 1..1024, got {v!r}")
        lib.llama_set_n_threads(self.ptr, n_threads, nb)

    # -- abort -----------------------------------------------------------------------------
    @guarded
    def set_abort_callback(self, fn: Callable[[], bool] | None) -> None:
        """``fn()`` returning True aborts the running decode (it then raises DecodeError 2).

        llama.cpp calls it often during a decode, so keep it cheap (read a flag).
        """
        ptr = self.ptr
        if fn is None:
            lib.llama_set_abort_callback(ptr, ffi.NULL, ffi.NULL)
            self._abort_cb = None
            return

        def _cb(_data: Any) -> bool:
            return bool(fn())

        def _onerror(exc_type: type, exc: BaseException, tb: Any) -> bool:
            if issubclass(exc_type, KeyboardInterrupt):
                self._interrupted = True  # Ctrl-C during a decode: abort it, re-raise after it returns
                return True
            return False

        cb = ffi.callback("bool(void *)", _cb, onerror=_onerror)
        self._abort_cb = cb  # keep alive while installed
        lib.llama_set_abort_callback(ptr, cb, ffi.NULL)

    # -- memory (KV cache) -----------------------------------------------------------------
    def _check_seq(self, seq_id: int, allow_all: bool = False) -> None:
        if isinstance(seq_id, bool) or not isinstance(seq_id, (int, np.integer)):
            raise TypeError(f"seq_id must be an int, got {type(seq_id).__name__}")
        if allow_all and seq_id < 0:
            return
        if not 0 <= seq_id < self.n_seq_max:
            raise ValueError(f"seq_id {seq_id} out of range 0..{self.n_seq_max - 1}")

    @guarded
    def kv_cache_clear(self, data: bool = True) -> None:
        """Removes every token of every sequence (``data`` also zeroes the buffers)."""
        self.ptr
        lib.llama_memory_clear(self._mem, bool(data))

    memory_clear = kv_cache_clear

    @guarded
    def kv_cache_seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Removes positions [p0, p1) of a sequence (seq_id < 0: all sequences; p < 0: open end)."""
        self.ptr
        self._check_seq(seq_id, allow_all=True)
        return bool(lib.llama_memory_seq_rm(self._mem, seq_id, p0, p1))

    @guarded
    def kv_cache_seq_cp(self, seq_id_src: int, seq_id_dst: int, p0: int = -1, p1: int = -1) -> None:
        """Shares positions [p0, p1) of one sequence with another (no copy of the data)."""
        self.ptr
        self._check_seq(seq_id_src)
        self._check_seq(seq_id_dst)
        if self.n_seq_max > 1 and not self.params.kv_unified and seq_id_src != seq_id_dst:
            # separate KV streams: llama.cpp can only copy a whole stream (it asserts otherwise)
            size = self.n_ctx // self.n_seq_max
            if (p0 > 0 and p0 + 1 < size) or (p1 > 0 and p1 + 1 < size):
                raise ValueError("this context keeps one KV stream per sequence (kv_unified=False): only whole "
                                 "sequences can be copied (p0=-1, p1=-1); create it with kv_unified=True to share prefixes")
        lib.llama_memory_seq_cp(self._mem, seq_id_src, seq_id_dst, p0, p1)

    @guarded
    def kv_cache_seq_keep(self, seq_id: int) -> None:
        """Removes every sequence but this one."""
        self.ptr
        self._check_seq(seq_id)
        lib.llama_memory_seq_keep(self._mem, seq_id)

    @guarded
    def kv_cache_seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shifts positions [p0, p1) of a sequence by ``delta``."""
        self.ptr
        self._check_seq(seq_id)
        if not self.can_shift:
            raise ValueError("this model's memory cannot shift positions")
        lib.llama_memory_seq_add(self._mem, seq_id, p0, p1, delta)

    @guarded
    def kv_cache_seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        self.ptr
        self._check_seq(seq_id)
        if d < 2:
            raise ValueError(f"d must be > 1, got {d}")
        if not self.can_shift:
            raise ValueError("this model's memory cannot shift positions")
        lib.llama_memory_seq_div(self._mem, seq_id, p0, p1, d)

    @guarded
    def kv_cache_seq_pos_min(self, seq_id: int) -> int:
        """Smallest position of a sequence in memory, -1 when empty."""
        self.ptr
        self._check_seq(seq_id)
        return int(lib.llama_memory_seq_pos_min(self._mem, seq_id))

    @guarded
    def kv_cache_seq_pos_max(self, seq_id: int) -> int:
        """Largest position of a sequence in memory, -1 when empty."""
        self.ptr
        self._check_seq(seq_id)
        return int(lib.llama_memory_seq_pos_max(self._mem, seq_id))

    @property
    @guarded
    def can_shift(self) -> bool:
        self.ptr
        return bool(lib.llama_memory_can_shift(self._mem))

    # -- state -----------------------------------------------------------------------------
    @guarded
    def get_state(self) -> bytes:
        """The context's memory (KV cache) as bytes; restore it with :meth:`set_state`."""
        ptr = self.ptr
        size = lib.llama_state_get_size(ptr)
        buf = ffi.new("uint8_t[]", size)
        n = lib.llama_state_get_data(ptr, buf, size)
        return ffi.unpack(ffi.cast("char *", buf), n)

    @guarded
    def set_state(self, state: bytes) -> int:
        """Restores a state from :meth:`get_state`; raises ValueError if it does not fit."""
        ptr = self.ptr
        if not isinstance(state, (bytes, bytearray, memoryview)) or len(state) == 0:
            raise ValueError("state must be non-empty bytes from get_state()")
        data = ffi.from_buffer("uint8_t[]", state)
        n = lib.llama_state_set_data(ptr, data, len(state))
        if n == 0:
            raise ValueError("state data does not match this context (different model or size?)")
        self._restore_outputs()
        return int(n)

    def _restore_outputs(self) -> None:
        """The pinned llama.cpp's state holds the memory (KV cache) but not the last logits:
        after a restore, decode the next token before sampling."""
        self._n_outputs, self._out_flags, self._last_n_tokens = 0, None, 0

    @guarded
    def seq_get_state(self, seq_id: int) -> bytes:
        ptr = self.ptr
        self._check_seq(seq_id)
        size = lib.llama_state_seq_get_size(ptr, seq_id)
        buf = ffi.new("uint8_t[]", size)
        n = lib.llama_state_seq_get_data(ptr, buf, size, seq_id)
        return ffi.unpack(ffi.cast("char *", buf), n)

    @guarded
    def seq_set_state(self, state: bytes, seq_id: int) -> int:
        ptr = self.ptr
        self._check_seq(seq_id)
        if not state:
            raise ValueError("state must be non-empty bytes from seq_get_state()")
        n = lib.llama_state_seq_set_data(ptr, ffi.from_buffer("uint8_t[]", state), len(state), seq_id)
        if n == 0:
            raise ValueError("sequence state does not match this context")
        return int(n)

    @guarded
    def save_state_file(self, path: str | os.PathLike, tokens: Sequence[int] = ()) -> None:
        """Saves the state and the tokens it was built from to a session file."""
        ptr = self.ptr
        arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32))
        p = Path(path).expanduser()
        if not p.parent.exists():
            raise FileNotFoundError(f"folder does not exist: {p.parent}")
        if not lib.llama_state_save_file(ptr, os.fsencode(p), ffi.from_buffer("llama_token[]", arr), len(arr)):
            raise CyllamaError(f"failed to save state to {p}")

    @guarded
    def load_state_file(self, path: str | os.PathLike, max_tokens: int | None = None) -> list[int]:
        """Loads a session file; returns the tokens saved with it."""
        ptr = self.ptr
        p = check_path(path, "state")
        cap = self.n_ctx if max_tokens is None else int(max_tokens)
        out = ffi.new("llama_token[]", max(cap, 1))
        n_out = ffi.new("size_t *")
        if not lib.llama_state_load_file(ptr, os.fsencode(p), out, cap, n_out):
            raise ValueError(f"failed to load state from {p} (wrong model, context too small or corrupt file)")
        self._restore_outputs()
        return ffi.unpack(out, n_out[0])

    # -- performance -----------------------------------------------------------------------
    @guarded
    def perf_data(self) -> dict[str, float]:
        """llama.cpp's timing counters for this context."""
        d = lib.llama_perf_context(self.ptr)
        return {"t_start_ms": d.t_start_ms, "t_load_ms": d.t_load_ms, "t_p_eval_ms": d.t_p_eval_ms,
                "t_eval_ms": d.t_eval_ms, "n_p_eval": d.n_p_eval, "n_eval": d.n_eval, "n_reused": d.n_reused}

    @guarded
    def print_perf_data(self) -> None:
        """Prints llama.cpp's timing counters (its own printer writes to the log, hidden by default)."""
        d = self.perf_data()
        pp = d["n_p_eval"] / d["t_p_eval_ms"] * 1e3 if d["t_p_eval_ms"] > 0 else 0.0
        tg = d["n_eval"] / d["t_eval_ms"] * 1e3 if d["t_eval_ms"] > 0 else 0.0
        print(f"llama perf: load {d['t_load_ms']:.1f} ms | prompt eval {d['t_p_eval_ms']:.1f} ms / "
              f"{d['n_p_eval']} tokens ({pp:.1f} tok/s) | eval {d['t_eval_ms']:.1f} ms / {d['n_eval']} runs "
              f"({tg:.1f} tok/s) | graphs reused {d['n_reused']}")

    @guarded
    def reset_perf_data(self) -> None:
        lib.llama_perf_context_reset(self.ptr)

    def _before_close(self) -> None:
        self._abort_cb = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self.n_ctx}, n_batch={self.n_batch}, n_seq_max={self.n_seq_max}"
        return f"<LlamaContext {state}>"

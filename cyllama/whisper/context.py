"""WhisperContext (a whisper.cpp model) and WhisperState (another decoding state over its weights).

libwhisper shares llama.cpp's ggml libraries, so a process may hold a :class:`WhisperContext`
and a ``LlamaModel`` at once. A context transcribes on its own decoding state, one thread at a time
(a concurrent second ``transcribe`` raises ``RuntimeError``; cffi releases the GIL inside
``whisper_full``). For parallel transcriptions, :meth:`WhisperContext.new_state` makes more states
over the same weights (loaded once): each :class:`WhisperState` serves one thread at a time.

whisper.cpp trusts its inputs in several places (an unknown ``ftype`` in a model header aborts in
ggml, a model header with absurd sizes throws ``std::bad_alloc`` through C, fewer than 201
samples are read past their end, ``n_threads`` < 1 aborts, ``best_of``/``beam_size`` > 8 fail), so
everything is checked here, in Python, before it reaches C.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import wave
import weakref
from pathlib import Path

import numpy as np

from .. import _logging
from .._errors import CyllamaError, check_path
from .._ffi import ffi
from ..llama._backend import ggml_backend_load_all
from ..llama._handle import NativeHandle
from .convert import GGML_MAGIC, convert_ct2_to_ggml
from .params import SAMPLE_RATE, _check, _whisper, lang_id, lang_str, languages
from .transcriber import Transcriber, _Native

__all__ = ["WhisperContext", "WhisperState", "default_model_path", "check_whisper_file", "read_wav"]

# ggml_ftype values ggml_ftype_to_ggml_type accepts (any other value aborts the process)
_FTYPES = {0, 1, 2, 3, *range(7, 29)}


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """Reads a 16 kHz, 16-bit PCM WAV file (mono, or stereo averaged) as float32 in [-1, 1]."""
    p = check_path(path, "audio")
    try:
        with wave.open(str(p), "rb") as w:
            rate, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            if rate != SAMPLE_RATE:
                raise ValueError(f"{p.name}: sample rate is {rate} Hz; whisper needs {SAMPLE_RATE} Hz "
                                 "(resample it first, e.g. ffmpeg -i in.wav -ar 16000 -ac 1 out.wav)")
            if width != 2:
                raise ValueError(f"{p.name}: samples are {8 * width}-bit; only 16-bit PCM WAV is supported")
            if channels not in (1, 2):
                raise ValueError(f"{p.name}: {channels} channels; only mono or stereo is supported")
            data = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{p} is not a readable PCM WAV file: {exc}") from None
    pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if channels == 2:
        pcm = pcm[: len(pcm) // 2 * 2].reshape(-1, 2).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(pcm, dtype=np.float32)


def check_whisper_file(path: str | os.PathLike) -> Path:
    """Checks that ``path`` is a whisper.cpp ggml model whose header whisper.cpp can read safely."""
    p = check_path(path, "whisper model")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(56)
        if len(head) < 4 or struct.unpack_from("<I", head)[0] != GGML_MAGIC:
            raise ValueError(f"not a whisper.cpp ggml model file (bad magic {head[:4]!r}): {p}")
        if len(head) < 56:
            raise ValueError(f"whisper model file is truncated ({size} bytes): {p}")
        (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state,
         n_text_head, n_text_layer, n_mels, ftype, f_mel, f_fft) = struct.unpack_from("<13i", head, 4)
        dims = (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
                n_text_state, n_text_head, n_text_layer, n_mels)
        bad = (min(dims) <= 0 or max(dims) > 1 << 20 or ftype < 0 or ftype % 1000 not in _FTYPES
               or n_audio_state != n_text_state or n_audio_state % n_audio_head or n_text_state % n_text_head
               or f_mel != n_mels or not 0 < f_fft <= 4096)
        off = 56 + 4 * f_mel * f_fft
        if not bad:
            f.seek(off)
            n_tokens = struct.unpack("<i", f.read(4) or b"\xff\xff\xff\xff")[0]
            bad = not 0 <= n_tokens <= n_vocab
            off += 4
            # every token length must fit in the file (a huge one makes whisper.cpp throw bad_alloc)
            for _ in range(0 if bad else n_tokens):
                b = f.read(4)
                n = struct.unpack("<I", b)[0] if len(b) == 4 else -1
                if not 0 <= n <= 1024:
                    bad = True
                    break
                f.seek(n, 1)
                off += 4 + n
            bad = bad or off > size
    if bad:
        raise ValueError(f"corrupt or unsupported whisper model header: {p}")
    return p


class WhisperContext(Transcriber, NativeHandle):
    """A whisper.cpp model and its own decoding state.

    ``WhisperContext(path)`` raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a
    file that is not a whisper ggml model, and :class:`CyllamaError` when whisper.cpp rejects it.
    ``model_path=None`` uses :func:`default_model_path` (whisper tiny.en). ``transcribe``,
    ``transcribe_iter``, ``detect_language`` and ``cancel`` are :class:`Transcriber`'s.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, use_gpu: bool = False,
                 flash_attn: bool | None = None, gpu_device: int = 0):
        lib = _whisper()
        self.path = check_whisper_file(default_model_path() if model_path is None else model_path)
        cparams = lib.whisper_context_default_params()
        cparams.use_gpu = _check("use_gpu", use_gpu, bool)
        if flash_attn is not None:
            cparams.flash_attn = _check("flash_attn", flash_attn, bool)
        cparams.gpu_device = _check("gpu_device", gpu_device, int, 0, 1024)
        cparams.dtw_token_timestamps = False  # DTW presets index a table with .at(): keep off
        ggml_backend_load_all()
        before = _logging.log_mark()
        ptr = lib.whisper_init_from_file_with_params(os.fsencode(self.path), cparams)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "whisper.cpp could not load it"
            raise CyllamaError(f"failed to load whisper model {self.path}: {why}")
        self._adopt(ptr, lib.whisper_free)
        self._lib = lib
        self._model = self
        self._running = threading.Lock()
        self._cancel = False
        self._states: weakref.WeakSet = weakref.WeakSet()
        self.n_vocab = int(lib.whisper_n_vocab(ptr))
        self.n_text_ctx = int(lib.whisper_n_text_ctx(ptr))
        self.n_audio_ctx = int(lib.whisper_n_audio_ctx(ptr))
        self.is_multilingual = bool(lib.whisper_is_multilingual(ptr))
        t = lib.whisper_model_type_readable(ptr)
        self.model_type = ffi.string(t).decode() if t != ffi.NULL else "unknown"

    # language helpers (no model needed) ---------------------------------------------------
    lang_id = staticmethod(lang_id)
    lang_str = staticmethod(lang_str)
    languages = staticmethod(languages)

    def _native(self) -> _Native:
        return _Native(self._lib, self.ptr, None)

    def new_state(self) -> "WhisperState":
        """Another decoding state over this model's weights (not loaded again), for a transcription
        in parallel with this context's own and other states'. Closed with the context."""
        return WhisperState(self)

    def _before_close(self) -> None:
        for st in list(self._states):
            st.close()
        self._close_vad()

    def close(self) -> None:
        if self._ptr == ffi.NULL:
            return
        if not self._running.acquire(blocking=False):
            raise RuntimeError("cannot close a WhisperContext while it is transcribing")
        try:
            if any(st._running.locked() for st in list(self._states)):
                raise RuntimeError("cannot close a WhisperContext while one of its states is transcribing")
            super().close()
        finally:
            self._running.release()

    free = close

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.model_type}, {'multilingual' if self.is_multilingual else 'en'}"
        return f"WhisperContext({str(self.path)!r}, {state})"


class WhisperState(Transcriber, NativeHandle):
    """A decoding state of its own over a :class:`WhisperContext`'s weights
    (``whisper_init_state``): transcribes in parallel with the context and its other states.
    ``transcribe``, ``transcribe_iter``, ``detect_language`` and ``cancel`` are :class:`Transcriber`'s."""

    def __init__(self, context: WhisperContext):
        if not isinstance(context, WhisperContext):
            raise TypeError(f"context must be a WhisperContext, got {type(context).__name__}")
        lib = context._lib
        before = _logging.log_mark()
        ptr = lib.whisper_init_state(context.ptr)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "out of memory?"
            raise CyllamaError(f"whisper.cpp could not make a decoding state: {why}")
        self._adopt(ptr, lib.whisper_free_state)
        self.context = self._model = context  # keeps the weights alive while this state lives
        self._lib = lib
        self._running = threading.Lock()
        self._cancel = False
        context._states.add(self)

    def _native(self) -> _Native:
        return _Native(self._lib, self.context.ptr, self.ptr)

    def _before_close(self) -> None:
        self._close_vad()

    def close(self) -> None:
        if self._ptr == ffi.NULL:
            return
        if not self._running.acquire(blocking=False):
            raise RuntimeError("cannot close a WhisperState while it is transcribing")
        try:
            super().close()
        finally:
            self._running.release()

    free = close

    def __repr__(self) -> str:
        return f"WhisperState({'closed' if self.closed else str(self.context.path)!r})"


_default_lock = threading.Lock()


def default_model_path() -> Path:
    """whisper tiny.en as a ggml file in the cache, converted from CTranslate2 weights on first use.

    ``$CYLLAMA_WHISPER_MODEL`` overrides it.
    """
    from .._assets import cache_dir, fetch

    env = os.environ.get("CYLLAMA_WHISPER_MODEL")
    if env:
        return Path(env).expanduser()
    out = cache_dir() / "assets" / "whisper-tiny-en.bin"
    with _default_lock:
        if not out.is_file():
            start = time.perf_counter()
            convert_ct2_to_ggml(fetch("whisper-tiny-en-ct2"), out)  # writes a temp file, then renames
            _logging.native_logger.info("converted whisper tiny.en to %s in %.1f s", out,
                                        time.perf_counter() - start)
    return out

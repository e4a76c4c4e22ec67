"""Voice activity detection with whisper.cpp's Silero VAD.

:class:`VadContext` loads a ggml Silero VAD model (whisper.cpp's format, checked in Python first:
whisper.cpp's loader trusts string lengths, dimension counts and tensor types) and finds speech.
:func:`vad_model_path` gives Silero VAD v6.2.0, converted once from the ``silero-vad`` wheel
(:mod:`.convert_silero`, byte-identical to whisper.cpp's ``ggml-silero-v6.2.0.bin``).

``transcribe(vad=True)`` keeps only the speech, as ``whisper_full`` does with ``params.vad``:
:func:`speech_only` joins the speech pieces (each with ``samples_overlap`` seconds after it, 0.1 s
of silence between them) and returns the table that maps times in the joined audio back to the
original (:func:`to_original_time`), the same computation as whisper.cpp's ``whisper_vad`` and
``map_processed_to_original_time``, so it works on any whisper state and maps word times too.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _logging
from .._errors import CyllamaError, check_path
from .._ffi import ffi
from ..llama._backend import default_n_threads, ggml_backend_load_all
from ..llama._handle import NativeHandle
from .convert import GGML_MAGIC
from .params import SAMPLE_RATE, VadParams, _check, _whisper

__all__ = ["VadContext", "SpeechSegment", "check_vad_file", "vad_model_path", "speech_only", "to_original_time"]

SILERO_VERSION = "6.2.0"
_SILENCE = int(0.1 * SAMPLE_RATE)  # whisper.cpp puts 0.1 s of silence between speech pieces
# the tensors whisper.cpp's VAD loader creates, with their ggml type (0 f32, 1 f16) and shape
_VAD_TENSORS = {
    **{f"_model.encoder.{i}.reparam_conv.weight": (1, (3, cin, cout))
       for i, (cin, cout) in enumerate(((129, 128), (128, 64), (64, 64), (64, 128)))},
    **{f"_model.encoder.{i}.reparam_conv.bias": (0, (n,)) for i, n in enumerate((128, 64, 64, 128))},
    "_model.decoder.rnn.weight_ih": (0, (128, 512)), "_model.decoder.rnn.weight_hh": (0, (128, 512)),
    "_model.decoder.rnn.bias_ih": (0, (512,)), "_model.decoder.rnn.bias_hh": (0, (512,)),
    "_model.decoder.decoder.2.weight": (1, (128, 1)), "_model.decoder.decoder.2.bias": (0, (1,)),
    "_model.stft.forward_basis_buffer": (1, (256, 1, 258)),
}
_HPARAMS = (512, 64, 4, 129, 128, 3, 128, 64, 3, 64, 64, 3, 64, 128, 3, 128, 128, 128, 1)


@dataclass
class SpeechSegment:
    """A stretch of speech, in seconds from the start of the audio."""

    start: float
    end: float


def check_vad_file(path: str | os.PathLike) -> Path:
    """Checks that ``path`` is a Silero VAD model in whisper.cpp's ggml format that its loader can
    read safely (header, every tensor's name, type and shape, and that the data is in the file)."""
    p = check_path(path, "VAD model")
    data = p.read_bytes() if p.stat().st_size <= 16 << 20 else b""
    if len(data) < 8 or struct.unpack_from("<I", data)[0] != GGML_MAGIC:
        raise ValueError(f"not a whisper.cpp ggml VAD model (bad magic or size): {p}")
    try:
        (n,) = struct.unpack_from("<i", data, 4)
        if not 0 < n <= 64:
            raise ValueError
        off = 8 + n
        off += 12  # version
        hp = struct.unpack_from(f"<{len(_HPARAMS)}i", data, off)
        off += 4 * len(_HPARAMS)
        if hp != _HPARAMS:
            raise ValueError
        seen = set()
        while off < len(data):
            n_dims, length, ttype = struct.unpack_from("<3i", data, off)
            off += 12
            if not 0 <= n_dims <= 4 or not 0 < length <= 256 or ttype not in (0, 1):
                raise ValueError
            ne = struct.unpack_from(f"<{n_dims}i", data, off)
            off += 4 * n_dims
            name = data[off:off + length].decode("utf-8")
            off += length
            want = _VAD_TENSORS.get(name)
            if want is None or name in seen or want[0] != ttype or \
                    (tuple(ne) + (1, 1, 1))[:3] != (want[1] + (1, 1, 1))[:3] or any(d < 1 for d in ne):
                raise ValueError
            seen.add(name)
            off += int(np.prod(ne, dtype=np.int64)) * (2 if ttype else 4)
            if off > len(data):
                raise ValueError
        if seen != set(_VAD_TENSORS):
            raise ValueError
    except (ValueError, struct.error, UnicodeDecodeError):
        raise ValueError(f"corrupt or unsupported ggml VAD model: {p}") from None
    return p


_default_lock = threading.Lock()


def vad_model_path() -> Path:
    """Silero VAD v6.2.0 in whisper.cpp's ggml format, in the cache, converted from the ``silero-vad``
    wheel on first use. ``$CYLLAMA_VAD_MODEL`` overrides it."""
    from .._assets import cache_dir, fetch
    from .convert_silero import convert_silero_vad

    env = os.environ.get("CYLLAMA_VAD_MODEL")
    if env:
        return Path(env).expanduser()
    out = cache_dir() / "assets" / f"ggml-silero-v{SILERO_VERSION}.bin"
    with _default_lock:
        if not out.is_file():
            start = time.perf_counter()
            convert_silero_vad(fetch("silero-vad"), out, SILERO_VERSION)
            _logging.native_logger.info("converted Silero VAD to %s in %.1f s", out, time.perf_counter() - start)
    return out


class VadContext(NativeHandle):
    """A Silero VAD model loaded by whisper.cpp. ``model_path=None`` uses :func:`vad_model_path`.
    One thread at a time (a second concurrent call raises ``RuntimeError``)."""

    def __init__(self, model_path: str | os.PathLike | None = None, n_threads: int | None = None,
                 use_gpu: bool = False, gpu_device: int = 0):
        lib = _whisper()
        self.path = check_vad_file(vad_model_path() if model_path is None else model_path)
        cp = lib.whisper_vad_default_context_params()
        cp.n_threads = _check("n_threads", default_n_threads() if n_threads is None else n_threads, int, 1, 1024)
        cp.use_gpu = _check("use_gpu", use_gpu, bool)
        cp.gpu_device = _check("gpu_device", gpu_device, int, 0, 1024)
        ggml_backend_load_all()
        before = _logging.log_mark()
        ptr = lib.whisper_vad_init_from_file_with_params(os.fsencode(self.path), cp)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "whisper.cpp could not load it"
            raise CyllamaError(f"failed to load VAD model {self.path}: {why}")
        self._adopt(ptr, lib.whisper_vad_free)
        self._lib = lib
        self._running = threading.Lock()

    def _samples(self, audio: Any, sample_rate: int | None) -> np.ndarray:
        from .audio import load_audio

        samples = load_audio(audio, sample_rate)
        if samples.size == 0:
            raise ValueError("audio is empty")
        if samples.size > 2**31 - 1 - 512:
            raise ValueError(f"audio is too long ({samples.size} samples)")
        return samples

    def segments_cs(self, samples: np.ndarray, params: VadParams | None = None) -> list[tuple[int, int]]:
        """Speech in 16 kHz float32 ``samples`` as (start, end) in centiseconds, whisper.cpp's unit."""
        params = VadParams() if params is None else params
        if not isinstance(params, VadParams):
            raise TypeError(f"params must be VadParams, got {type(params).__name__}")
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError("samples must be a non-empty 1-D array")
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this VadContext is already in use in another thread")
        try:
            lib, ptr = self._lib, self.ptr
            segs = lib.whisper_vad_segments_from_samples(ptr, params.value, ffi.from_buffer("float[]", samples),
                                                         samples.size)
            if segs == ffi.NULL:
                raise CyllamaError("whisper.cpp's speech detection failed")
            try:
                return [(int(lib.whisper_vad_segments_get_segment_t0(segs, i)),
                         int(lib.whisper_vad_segments_get_segment_t1(segs, i)))
                        for i in range(lib.whisper_vad_segments_n_segments(segs))]
            finally:
                lib.whisper_vad_free_segments(segs)
        finally:
            self._running.release()

    def detect_speech(self, audio: Any, params: VadParams | None = None, *,
                      sample_rate: int | None = None) -> list[SpeechSegment]:
        """The speech in ``audio`` (a path, file bytes or samples, as ``transcribe`` takes)."""
        return [SpeechSegment(a / 100.0, b / 100.0)
                for a, b in self.segments_cs(self._samples(audio, sample_rate), params)]

    def probs(self, audio: Any, *, sample_rate: int | None = None) -> np.ndarray:
        """Silero's speech probability for each 512-sample (32 ms) window of ``audio``."""
        samples = self._samples(audio, sample_rate)
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this VadContext is already in use in another thread")
        try:
            lib, ptr = self._lib, self.ptr
            if not lib.whisper_vad_detect_speech(ptr, ffi.from_buffer("float[]", samples), samples.size):
                raise CyllamaError("whisper.cpp's speech detection failed")
            n = lib.whisper_vad_n_probs(ptr)
            return np.frombuffer(ffi.buffer(lib.whisper_vad_probs(ptr), 4 * n), dtype=np.float32).copy()
        finally:
            self._running.release()

    def close(self) -> None:
        if self._ptr == ffi.NULL:
            return
        if not self._running.acquire(blocking=False):
            raise RuntimeError("cannot close a VadContext while it is in use")
        try:
            super().close()
        finally:
            self._running.release()

    def __repr__(self) -> str:
        return f"VadContext({str(self.path)!r}{', closed' if self.closed else ''})"


def _cs_to_samples(cs: int) -> int:
    return int((cs / 100.0) * SAMPLE_RATE + 0.5)


def _samples_to_cs(n: int) -> int:
    return int((n / SAMPLE_RATE) * 100.0 + 0.5)


def speech_only(samples: np.ndarray, segments_cs: list[tuple[int, int]],
                samples_overlap: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The speech of ``samples`` joined as whisper.cpp's ``whisper_vad`` joins it, and the table of
    (time in the joined audio, time in the original), both in centiseconds, sorted."""
    n = samples.size
    overlap = int(np.float32(samples_overlap) * SAMPLE_RATE)
    last = len(segments_cs) - 1
    needed = 0
    for i, (s, e) in enumerate(segments_cs):
        end = _cs_to_samples(e) + (overlap if i < last else 0)
        needed += min(end, n - 1) - _cs_to_samples(s)
    needed += last * _SILENCE if last > 0 else 0
    pieces: list[tuple[int, np.ndarray]] = []
    table: list[tuple[int, int]] = []
    offset = 0
    for i, (s, e) in enumerate(segments_cs):
        start = min(_cs_to_samples(s), n - 1)
        end = min(_cs_to_samples(e), n - 1)
        orig_len = end - start
        if i < last:
            end = min(end + overlap, n - 1)
        if end - start <= 0:
            continue
        table += [(_samples_to_cs(offset), s), (_samples_to_cs(offset + orig_len), e)]
        pieces.append((offset, samples[start:end]))
        offset += end - start
        if i < last:
            table += [(_samples_to_cs(offset), e), (_samples_to_cs(offset + _SILENCE), segments_cs[i + 1][0])]
            offset += _SILENCE
    out = np.zeros(max(needed, offset), dtype=np.float32)
    for at, piece in pieces:
        out[at:at + piece.size] = piece
    table.sort(key=lambda t: t[0])
    unique = [t for k, t in enumerate(table) if k == 0 or t[0] != table[k - 1][0]]
    return out, unique


def to_original_time(t: int, table: list[tuple[int, int]]) -> int:
    """A time (centiseconds) in the joined speech mapped back to the original audio, interpolating
    between the table's points (whisper.cpp's ``map_processed_to_original_time``)."""
    if not table:
        return t
    if t <= table[0][0]:
        return table[0][1]
    if t >= table[-1][0]:
        return table[-1][1]
    k = bisect.bisect_left(table, t, key=lambda e: e[0])
    if table[k][0] == t:
        return table[k][1]
    (p0, o0), (p1, o1) = table[k - 1], table[k]
    if p1 == p0:
        return o0
    num, den = (t - p0) * (o1 - o0), p1 - p0
    return o0 + (num // den if num >= 0 else -(-num // den))  # C's division truncates toward zero

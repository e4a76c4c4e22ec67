"""WhisperContext: speech-to-text with whisper.cpp, and WhisperParams.

libwhisper shares llama.cpp's ggml libraries, so a process may hold a :class:`WhisperContext`
and a ``LlamaModel`` at once. One context is used by one thread at a time (cffi releases the GIL
inside ``whisper_full``); a concurrent second ``transcribe`` raises ``RuntimeError``.

whisper.cpp trusts its inputs in several places (an unknown ``ftype`` in a model header aborts in
ggml, a model header with absurd sizes throws ``std::bad_alloc`` through C, fewer than 201
samples are read past their end, ``n_threads`` < 1 aborts, ``best_of``/``beam_size`` > 8 fail), so
everything is checked here, in Python, before it reaches C.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import _logging
from .._errors import CyllamaError, check_path
from .._ffi import ffi, load_whisper
from ..llama._backend import default_n_threads, ggml_backend_load_all
from ..llama._handle import NativeHandle
from ..llama._params import Field, StructParams, int32
from .convert import GGML_MAGIC, convert_ct2_to_ggml

__all__ = ["WhisperParams", "WhisperContext", "TranscriptionResult", "Segment", "default_model_path",
           "check_whisper_file", "read_wav", "lang_id", "lang_str", "languages"]

SAMPLE_RATE = 16000
_MAX_DECODERS = 8  # WHISPER_MAX_DECODERS in whisper.cpp
_MIN_SAMPLES = SAMPLE_RATE // 10  # whisper.cpp skips input shorter than 100 ms
_INT32_MAX = 2**31 - 1
_STRATEGIES = {"greedy": 0, "beam_search": 1}
# ggml_ftype values ggml_ftype_to_ggml_type accepts (any other value aborts the process)
_FTYPES = {0, 1, 2, 3, *range(7, 29)}

_lib: Any = None


def _whisper() -> Any:
    global _lib
    if _lib is None:
        lib = load_whisper()
        _logging.install(lib, "whisper_log_set")
        _lib = lib
    return _lib


def _c_string(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    return value.encode("utf-8")


def _check(name: str, value: Any, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    f = Field(kind, lo, hi)
    f.__set_name__(WhisperParams, name)
    return f.check(value)


_lang_table: tuple[list[str], dict[str, int]] | None = None


def _languages() -> tuple[list[str], dict[str, int]]:
    """(codes by id, {code or full name: id}) read once from whisper.cpp's table."""
    global _lang_table
    if _lang_table is None:
        lib = _whisper()
        codes, ids = [], {}
        for i in range(lib.whisper_lang_max_id() + 1):
            code, full = lib.whisper_lang_str(i), lib.whisper_lang_str_full(i)
            code = ffi.string(code).decode() if code != ffi.NULL else ""
            codes.append(code)
            if code:
                ids[code] = i
            if full != ffi.NULL:
                ids[ffi.string(full).decode()] = i
        _lang_table = (codes, ids)
    return _lang_table


def lang_id(language: str) -> int:
    """whisper's id of a language code or English name ("de" or "german" -> 2); -1 if unknown."""
    if not isinstance(language, str):
        raise TypeError(f"language must be a str, got {type(language).__name__}")
    return _languages()[1].get(language.strip().lower(), -1)


def lang_str(lang_id: int) -> str | None:
    """The code of a language id (2 -> "de"); None if there is none."""
    codes = _languages()[0]
    if not isinstance(lang_id, int) or not 0 <= lang_id < len(codes):
        return None
    return codes[lang_id] or None


def languages() -> list[str]:
    """Codes of the languages whisper knows ("en", "zh", ...), in id order."""
    return [c for c in _languages()[0] if c]


class WhisperParams(StructParams):
    """Options of one transcription (``struct whisper_full_params``), validated on assignment.

    ``strategy`` is ``"greedy"`` (default) or ``"beam_search"``. Defaults are whisper.cpp's, except
    that nothing is printed to stdout and ``n_threads`` is the number of cores this process may use.
    """

    __slots__ = ()
    _ctype = "struct whisper_full_params"
    _extra = ("strategy", "language", "initial_prompt", "best_of", "beam_size")

    n_threads = int32("threads for the encoder and decoder", lo=1, hi=1024)
    n_max_text_ctx = int32("most tokens of past text used as prompt", lo=0)
    offset_ms = int32("start offset in the audio, ms", lo=0)
    duration_ms = int32("audio duration to process in ms; 0 = all", lo=0)
    translate = Field(bool, doc="translate to English (multilingual models only)")
    no_context = Field(bool, doc="do not use past transcription as prompt")
    no_timestamps = Field(bool, doc="do not generate timestamps")
    single_segment = Field(bool, doc="force a single segment")
    print_special = Field(bool, doc="print special tokens (whisper.cpp prints to stdout)")
    print_progress = Field(bool, doc="print progress (stdout)")
    print_realtime = Field(bool, doc="print results while decoding (stdout)")
    print_timestamps = Field(bool, doc="print timestamps with print_realtime")
    token_timestamps = Field(bool, doc="[experimental] token-level timestamps")
    thold_pt = Field(float, 0.0, 1.0, "timestamp token probability threshold")
    thold_ptsum = Field(float, 0.0, 1.0, "timestamp token sum probability threshold")
    max_len = int32("max segment length in characters; 0 = no limit", lo=0)
    split_on_word = Field(bool, doc="split on words rather than tokens (with max_len)")
    max_tokens = int32("max tokens per segment; 0 = no limit", lo=0)
    audio_ctx = int32("override the audio context size; 0 = the model's", lo=0)
    suppress_blank = Field(bool, doc="suppress blank outputs at the start of sampling")
    suppress_nst = Field(bool, doc="suppress non-speech tokens")
    temperature = Field(float, 0.0, 1.0, "initial decoding temperature")
    max_initial_ts = Field(float, 0.0, doc="max initial timestamp")
    length_penalty = Field(float, doc="length penalty; -1 = none")
    temperature_inc = Field(float, 0.0, 1.0, "temperature increase on fallback; 0 = no fallback")
    entropy_thold = Field(float, doc="entropy threshold of the fallback")
    logprob_thold = Field(float, doc="average log-probability threshold of the fallback")
    no_speech_thold = Field(float, doc="no-speech probability threshold")

    def __init__(self, strategy: str = "greedy", **kwargs: Any):
        code = self._strategy_code(strategy)
        object.__setattr__(self, "_struct", ffi.new("struct whisper_full_params *"))
        object.__setattr__(self, "_keepalive", {})
        self._struct[0] = _whisper().whisper_full_default_params(code)
        self.print_progress = self.print_realtime = self.print_timestamps = self.print_special = False
        self.n_threads = default_n_threads()
        for key, value in kwargs.items():
            setattr(self, key, value)

    @staticmethod
    def _strategy_code(strategy: Any) -> int:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(_STRATEGIES)}, got {strategy!r}")
        return _STRATEGIES[strategy]

    @property
    def strategy(self) -> str:
        return "beam_search" if self._struct.strategy == 1 else "greedy"

    @strategy.setter
    def strategy(self, value: str) -> None:
        self._struct.strategy = self._strategy_code(value)

    @property
    def language(self) -> str:
        """Spoken language code ("en", "de", ...) or "auto" to detect it."""
        p = self._struct.language
        s = ffi.string(p).decode() if p != ffi.NULL else ""
        return s or "auto"

    @language.setter
    def language(self, value: str | None) -> None:
        value = "auto" if value is None else value
        raw = _c_string("language", value).strip().lower()
        if raw not in (b"", b"auto"):
            code = lang_str(lang_id(raw.decode()))
            if code is None:
                raise ValueError(f"language: unknown language {value!r}; use 'auto' or one of "
                                 f"{', '.join(languages())}")
            raw = code.encode()
        buf = ffi.new("char[]", raw or b"auto")
        self._keepalive["language"] = buf
        self._struct.language = buf

    @property
    def initial_prompt(self) -> str | None:
        p = self._struct.initial_prompt
        return ffi.string(p).decode("utf-8", "replace") if p != ffi.NULL else None

    @initial_prompt.setter
    def initial_prompt(self, value: str | None) -> None:
        if value is None or value == "":
            self._keepalive.pop("initial_prompt", None)
            self._struct.initial_prompt = ffi.NULL
            return
        buf = ffi.new("char[]", _c_string("initial_prompt", value))
        self._keepalive["initial_prompt"] = buf
        self._struct.initial_prompt = buf

    @property
    def best_of(self) -> int:
        """Candidates sampled when greedy decoding falls back to a temperature > 0."""
        return int(self._struct.greedy.best_of)

    @best_of.setter
    def best_of(self, value: int) -> None:
        self._struct.greedy.best_of = _check("best_of", value, int, 1, _MAX_DECODERS)

    @property
    def beam_size(self) -> int:
        """Beams of beam search (strategy="beam_search")."""
        return int(self._struct.beam_search.beam_size)

    @beam_size.setter
    def beam_size(self, value: int) -> None:
        self._struct.beam_search.beam_size = _check("beam_size", value, int, 1, _MAX_DECODERS)


@dataclass
class Word:
    """A word and when it was said (seconds), with whisper's probability for it."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    """A piece of the transcript; times in seconds from the start of the audio."""

    start: float
    end: float
    text: str
    no_speech_prob: float = 0.0  # whisper's probability that the segment holds no speech
    tokens: list[int] = field(default_factory=list)  # its text tokens
    avg_logprob: float = 0.0  # mean log-probability of those tokens
    words: list[Word] | None = None  # with word_timestamps=True


def _stamp(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    sec, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{sec:02d}{sep}{ms:03d}"


@dataclass
class TranscriptionResult:
    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = "en"
    duration: float = 0.0  # seconds of audio
    cancelled: bool = False  # cancel() stopped it: the segments so far

    def __str__(self) -> str:
        return self.text

    # -- writers ----------------------------------------------------------------------------
    def to_txt(self) -> str:
        return "\n".join(s.text for s in self.segments) + ("\n" if self.segments else "")

    def to_srt(self) -> str:
        """SubRip subtitles."""
        return "".join(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n\n"
                       for i, s in enumerate(self.segments, 1))

    def to_vtt(self) -> str:
        """WebVTT subtitles."""
        return "WEBVTT\n\n" + "".join(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n\n"
                                       for s in self.segments)

    def to_json(self) -> str:
        import json

        return json.dumps({"text": self.text, "language": self.language, "duration": self.duration,
                           "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text,
                                         "tokens": s.tokens, "avg_logprob": s.avg_logprob,
                                         "no_speech_prob": s.no_speech_prob,
                                         **({"words": [dataclasses.asdict(w) for w in s.words]}
                                            if s.words is not None else {})}
                                        for i, s in enumerate(self.segments)]},
                          ensure_ascii=False, indent=2)

    def write(self, fmt: str) -> str:
        """The transcript as ``fmt``: txt, srt, vtt or json."""
        writers = {"txt": self.to_txt, "text": self.to_txt, "srt": self.to_srt, "vtt": self.to_vtt,
                   "json": self.to_json}
        if fmt not in writers:
            raise ValueError(f"format must be one of txt, srt, vtt, json, got {fmt!r}")
        return writers[fmt]()


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


def _as_samples(audio: Any, sample_rate: int | None = None) -> np.ndarray:
    from .audio import load_audio

    samples = load_audio(audio, sample_rate)
    if samples.size == 0:
        raise ValueError("audio is empty")
    if samples.size > _INT32_MAX:
        raise ValueError(f"audio is too long ({samples.size} samples)")
    return samples


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


class WhisperContext(NativeHandle):
    """A whisper.cpp model and its decoding state.

    ``WhisperContext(path)`` raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a
    file that is not a whisper ggml model, and :class:`CyllamaError` when whisper.cpp rejects it.
    ``model_path=None`` uses :func:`default_model_path` (whisper tiny.en).
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
        before = len(_logging.last_errors())
        ptr = lib.whisper_init_from_file_with_params(os.fsencode(self.path), cparams)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.last_errors()[before:][-3:]) or "whisper.cpp could not load it"
            raise CyllamaError(f"failed to load whisper model {self.path}: {why}")
        self._adopt(ptr, lib.whisper_free)
        self._lib = lib
        self._busy = threading.Lock()
        self._cancel = False
        self._words = False
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

    def cancel(self) -> None:
        """Stops a running :meth:`transcribe` (from another thread); it returns what it has, with
        ``cancelled=True``. The context stays usable."""
        self._cancel = True

    def transcribe(self, audio: Any, params: WhisperParams | None = None, *, sample_rate: int | None = None,
                   on_progress: Any = None, word_timestamps: bool = False,
                   on_segment: Any = None) -> TranscriptionResult:
        """Transcribes audio: a file path (WAV; FLAC, OGG, MP3... with ``soundfile``), the bytes of
        an audio file, or an array of samples at ``sample_rate`` Hz (default 16000), mono or
        ``(n, channels)``. ``on_progress(percent)`` is called as whisper.cpp advances;
        ``word_timestamps`` gives each segment its ``words`` with times and probabilities;
        ``on_segment(segment)`` is called with each segment as whisper.cpp finishes it."""
        params = WhisperParams() if params is None else params
        if not isinstance(params, WhisperParams):
            raise TypeError(f"params must be WhisperParams, got {type(params).__name__}")
        if on_progress is not None and not callable(on_progress):
            raise TypeError("on_progress must be callable")
        samples = _as_samples(audio, sample_rate)
        lang = params.language
        if not self.is_multilingual:
            if lang not in ("auto", "en"):
                raise ValueError(f"language: {self.path.name} is an English-only model, got {lang!r}")
            if params.translate:
                raise ValueError(f"translate: {self.path.name} is an English-only model")
        if params.audio_ctx > self.n_audio_ctx:
            raise ValueError(f"audio_ctx must be <= {self.n_audio_ctx}, got {params.audio_ctx}")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this WhisperContext is already transcribing in another thread")
        try:
            ptr = self.ptr
            if samples.size < _MIN_SAMPLES:  # whisper.cpp would return nothing (and read past the end)
                return TranscriptionResult("", [], "en" if lang == "auto" else lang)
            # a copy we may adjust; keep the strings it points to alive even if params changes
            c = ffi.new("struct whisper_full_params *", params.value)
            keep = [dict(params._keepalive)]
            if lang == "auto" and not self.is_multilingual:
                keep.append(ffi.new("char[]", b"en"))  # skip detection on English-only models
                c.language = keep[-1]
            if word_timestamps:
                c.token_timestamps = True
            self._words = bool(word_timestamps)
            self._cancel = False
            abort_cb = ffi.callback("bool(void *)", lambda _d: bool(self._cancel), onerror=lambda *a: False)
            c.abort_callback, c.abort_callback_user_data = abort_cb, ffi.NULL
            keep.append(abort_cb)
            if on_progress is not None:
                def progress(_ctx: Any, _state: Any, pct: int, _d: Any) -> None:
                    on_progress(int(pct))
                prog_cb = ffi.callback("void(struct whisper_context *, struct whisper_state *, int, void *)",
                                       progress, onerror=lambda *a: None)
                c.progress_callback, c.progress_callback_user_data = prog_cb, ffi.NULL
                keep.append(prog_cb)
            if on_segment is not None:
                def new_segments(_ctx: Any, _state: Any, n_new: int, _d: Any) -> None:
                    n = self._lib.whisper_full_n_segments(ptr)
                    for i in range(max(0, n - n_new), n):
                        on_segment(self._segment(ptr, i))
                seg_cb = ffi.callback("void(struct whisper_context *, struct whisper_state *, int, void *)",
                                      new_segments, onerror=lambda *a: None)
                c.new_segment_callback, c.new_segment_callback_user_data = seg_cb, ffi.NULL
                keep.append(seg_cb)
            buf = ffi.from_buffer("float[]", samples)
            before = len(_logging.last_errors())
            rc = self._lib.whisper_full(ptr, c[0], buf, samples.size)
            del keep
            duration = samples.size / SAMPLE_RATE
            if self._cancel:
                res = self._collect(ptr, lang)
                res.cancelled, res.duration = True, duration
                return res
            if rc != 0:
                why = "; ".join(_logging.last_errors()[before:][-3:]) or "see the whisper log"
                raise CyllamaError(f"whisper_full failed with code {rc}: {why}")
            res = self._collect(ptr, lang)
            res.duration = duration
            return res
        finally:
            self._cancel = False
            self._busy.release()

    def _collect(self, ptr: Any, lang: str) -> TranscriptionResult:
        lib = self._lib
        segments, parts = [], []
        for i in range(lib.whisper_full_n_segments(ptr)):
            t = lib.whisper_full_get_segment_text(ptr, i)
            parts.append(ffi.string(t).decode("utf-8", "replace") if t != ffi.NULL else "")
            segments.append(self._segment(ptr, i))
        if not self.is_multilingual:
            lang = "en"
        elif lang == "auto":
            lang = lang_str(int(lib.whisper_full_lang_id(ptr))) or "auto"
        return TranscriptionResult("".join(parts).strip(), segments, lang)

    def _segment(self, ptr: Any, i: int) -> Segment:
        lib = self._lib
        t = lib.whisper_full_get_segment_text(ptr, i)
        raw = ffi.string(t).decode("utf-8", "replace") if t != ffi.NULL else ""
        t0 = lib.whisper_full_get_segment_t0(ptr, i) / 100.0
        t1 = lib.whisper_full_get_segment_t1(ptr, i) / 100.0
        seg = Segment(t0, t1, raw.strip(), float(lib.whisper_full_get_segment_no_speech_prob(ptr, i)))
        self._tokens_of(ptr, i, seg)
        return seg

    def transcribe_iter(self, audio: Any, params: WhisperParams | None = None, *, sample_rate: int | None = None,
                        word_timestamps: bool = False) -> Iterator[Segment]:
        """Yields segments as whisper.cpp produces them (a transcription runs in the background;
        leaving the loop early cancels it). Errors are raised from the loop."""
        import queue

        q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        done = object()

        def run() -> None:
            try:
                self.transcribe(audio, params, sample_rate=sample_rate, word_timestamps=word_timestamps,
                                on_segment=q.put)
                q.put(done)
            except BaseException as exc:  # handed to the consumer
                q.put(exc)

        samples = _as_samples(audio, sample_rate)  # bad input raises here, before the thread
        audio, sample_rate = samples, None
        th = threading.Thread(target=run, name="cyllama-whisper", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if th.is_alive():
                self.cancel()
                th.join()

    def _tokens_of(self, ptr: Any, i: int, seg: Segment) -> None:
        """A segment's text tokens, their mean log-probability, and (word timestamps) its words:
        a token starting with a space starts a word."""
        lib = self._lib
        eot = int(lib.whisper_token_eot(ptr))
        words: list[Word] = []
        plogs: list[float] = []
        cur: list[Any] = []  # [text, start, end, probs]
        for j in range(lib.whisper_full_n_tokens(ptr, i)):
            d = lib.whisper_full_get_token_data(ptr, i, j)
            if d.id >= eot:  # special and timestamp tokens
                continue
            seg.tokens.append(int(d.id))
            plogs.append(float(d.plog))
            if not self._words:
                continue
            t = lib.whisper_full_get_token_text(ptr, i, j)
            piece = ffi.string(t).decode("utf-8", "replace") if t != ffi.NULL else ""
            start, end = max(d.t0, 0) / 100.0, max(d.t1, 0) / 100.0
            if cur and not piece.startswith(" "):
                cur[0] += piece
                cur[2] = max(cur[2], end)
                cur[3].append(float(d.p))
            else:
                if cur and cur[0].strip():
                    words.append(Word(cur[1], cur[2], cur[0].strip(), min(cur[3])))
                cur = [piece, start, end, [float(d.p)]]
        if cur and cur[0].strip():
            words.append(Word(cur[1], cur[2], cur[0].strip(), min(cur[3])))
        seg.avg_logprob = sum(plogs) / len(plogs) if plogs else 0.0
        if self._words:
            for w in words:  # inside the segment, in order
                w.start = min(max(w.start, seg.start), seg.end)
                w.end = min(max(w.end, w.start), seg.end)
            seg.words = words

    def close(self) -> None:
        if self._ptr == ffi.NULL:
            return
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("cannot close a WhisperContext while it is transcribing")
        try:
            super().close()
        finally:
            self._busy.release()

    free = close

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.model_type}, {'multilingual' if self.is_multilingual else 'en'}"
        return f"WhisperContext({str(self.path)!r}, {state})"


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

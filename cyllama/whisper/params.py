"""Options of a whisper.cpp transcription: :class:`WhisperParams`, :class:`VadParams`, languages.

Every field is checked on assignment (type and range), so a bad value raises ``ValueError`` or
``TypeError`` here and never reaches C. :meth:`WhisperParams.with_options` applies the named options
of ``transcribe`` (``temperature``, ``beam_size``, ``offset``...) to a copy.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from .. import _logging
from .._ffi import ffi, load_whisper
from ..llama._backend import default_n_threads
from ..llama._params import Field, StructParams, int32

__all__ = ["WhisperParams", "VadParams", "lang_id", "lang_str", "languages", "temperatures"]

SAMPLE_RATE = 16000
_MAX_DECODERS = 8  # WHISPER_MAX_DECODERS in whisper.cpp
_STRATEGIES = {"greedy": 0, "beam_search": 1}
_MAX_VAD_MS = 100_000  # whisper.cpp multiplies these by 16000 in an int
_INT32_MAX = 2**31 - 1

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


class VadParams(StructParams):
    """Voice activity detection options (``whisper_vad_params``), whisper.cpp's defaults.

    Used by ``transcribe(vad=True)`` and :class:`~cyllama.whisper.VadContext`. Speech is where
    Silero's probability reaches ``threshold``; pieces shorter than ``min_speech_duration_ms`` are
    dropped, silences shorter than ``min_silence_duration_ms`` do not split, ``speech_pad_ms`` pads
    each piece, ``max_speech_duration_s`` splits long ones, and ``samples_overlap`` seconds of audio
    are kept after each piece when the pieces are joined for whisper.
    """

    __slots__ = ()
    _ctype = "whisper_vad_params"

    threshold = Field(float, 0.0, 1.0, "speech probability threshold")
    min_speech_duration_ms = int32("shortest speech kept, ms", lo=0, hi=_MAX_VAD_MS)
    min_silence_duration_ms = int32("shortest silence that ends speech, ms", lo=0, hi=_MAX_VAD_MS)
    max_speech_duration_s = Field(float, 0.0, doc="longest speech piece before it is split, s (inf: no limit)")
    speech_pad_ms = int32("padding added around speech, ms", lo=0, hi=_MAX_VAD_MS)
    samples_overlap = Field(float, 0.0, 10.0, "seconds of audio kept after each piece when joining them")

    @staticmethod
    def _defaults() -> Any:
        return _whisper().whisper_vad_default_params()

    @classmethod
    def _view(cls, struct: Any, owner: Any) -> "VadParams":
        """A VadParams over ``struct`` (the ``vad_params`` inside a WhisperParams), keeping ``owner`` alive."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_struct", struct)
        object.__setattr__(obj, "_keepalive", {"owner": owner})
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "max_speech_duration_s" and isinstance(value, (int, float)) and math.isinf(value) and value > 0:
            value = 3.4028234663852886e38  # FLT_MAX, whisper.cpp's "no limit"
        super().__setattr__(name, value)


class WhisperParams(StructParams):
    """Options of one transcription (``struct whisper_full_params``), validated on assignment.

    ``strategy`` is ``"greedy"`` (default) or ``"beam_search"``. Defaults are whisper.cpp's, except
    that nothing is printed to stdout and ``n_threads`` is the number of cores this process may use.
    """

    __slots__ = ()
    _ctype = "struct whisper_full_params"
    _extra = ("strategy", "language", "initial_prompt", "best_of", "beam_size", "vad_model_path", "vad_params")

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
    vad = Field(bool, doc="transcribe only the speech Silero VAD finds (vad_model_path, vad_params)")

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
    def vad_model_path(self) -> str | None:
        """The ggml Silero VAD model for ``vad=True``; None uses :func:`~cyllama.whisper.vad_model_path`."""
        p = self._struct.vad_model_path
        return os.fsdecode(ffi.string(p)) if p != ffi.NULL else None

    @vad_model_path.setter
    def vad_model_path(self, value: str | os.PathLike | None) -> None:
        if value is None:
            self._keepalive.pop("vad_model_path", None)
            self._struct.vad_model_path = ffi.NULL
            return
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"vad_model_path must be a path, got {type(value).__name__}")
        raw = os.fsencode(value)
        if not raw or b"\x00" in raw:
            raise ValueError("vad_model_path must be a non-empty path without NUL characters")
        buf = ffi.new("char[]", raw)
        self._keepalive["vad_model_path"] = buf
        self._struct.vad_model_path = buf

    @property
    def vad_params(self) -> VadParams:
        """The VAD options, a live view: ``params.vad_params.threshold = 0.6`` changes these params."""
        return VadParams._view(ffi.addressof(self._struct[0], "vad_params"), self)

    @vad_params.setter
    def vad_params(self, value: VadParams | dict[str, Any]) -> None:
        if isinstance(value, VadParams):
            value = value.to_dict()
        if not isinstance(value, dict):
            raise TypeError(f"vad_params must be VadParams or a dict, got {type(value).__name__}")
        view = VadParams(**value)  # checks every value before any is set
        self._struct.vad_params = view.value

    def copy(self) -> "WhisperParams":
        """An independent copy (strings included)."""
        new = WhisperParams.__new__(WhisperParams)
        object.__setattr__(new, "_struct", ffi.new("struct whisper_full_params *", self._struct[0]))
        object.__setattr__(new, "_keepalive", dict(self._keepalive))
        return new

    def with_options(self, *, language: str | None = None, temperature: float | Sequence[float] | None = None,
                     temperature_inc: float | None = None, beam_size: int | None = None, best_of: int | None = None,
                     no_speech_threshold: float | None = None, max_len: int | None = None,
                     split_on_word: bool | None = None, offset: float | None = None, duration: float | None = None,
                     vad: bool | None = None, vad_model_path: str | os.PathLike | None = None,
                     vad_params: VadParams | dict[str, Any] | None = None,
                     n_threads: int | None = None) -> "WhisperParams":
        """A copy with the named options of ``transcribe`` applied (None leaves a field as it is).

        ``temperature`` is a float (the first temperature; whisper.cpp retries a failed window at
        ``temperature + temperature_inc``, ``+ 2*temperature_inc``... up to 1.0) or a tuple of the
        temperatures to try, which must be such a sequence (``(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)``;
        ``(0.5,)`` means no fallback). ``beam_size`` > 1 selects beam search, 1 greedy decoding.
        ``max_len`` (characters per segment) turns on token timestamps, as whisper-cli does.
        ``offset`` and ``duration`` are seconds.
        """
        p = self.copy()
        if language is not None:
            p.language = language
        if temperature is not None:
            if isinstance(temperature, (tuple, list)):
                if temperature_inc is not None:
                    raise ValueError("temperature_inc: give either a tuple of temperatures or temperature_inc")
                p.temperature, p.temperature_inc = _fallback(temperature)
            else:
                p.temperature = temperature
        if temperature_inc is not None:
            p.temperature_inc = temperature_inc
        if beam_size is not None:
            b = _check("beam_size", beam_size, int, 1, _MAX_DECODERS)
            p.strategy = "beam_search" if b > 1 else "greedy"
            p.beam_size = b
        if best_of is not None:
            p.best_of = best_of
        if no_speech_threshold is not None:
            p.no_speech_thold = _check("no_speech_threshold", no_speech_threshold, float, 0.0, 1.0)
        if max_len is not None:
            p.max_len = max_len
            if p.max_len > 0:
                p.token_timestamps = True
        if split_on_word is not None:
            p.split_on_word = split_on_word
        if offset is not None:
            p.offset_ms = _seconds_to_ms("offset", offset)
        if duration is not None:
            p.duration_ms = _seconds_to_ms("duration", duration)
        if vad is not None:
            p.vad = vad
        if vad_model_path is not None:
            p.vad_model_path = vad_model_path
        if vad_params is not None:
            p.vad_params = vad_params
        if n_threads is not None:
            p.n_threads = n_threads
        return p

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



def temperatures(temperature: float, temperature_inc: float) -> list[float]:
    """The temperatures whisper.cpp tries, in order (its loop, in float32 as it computes them)."""
    import numpy as np

    t, inc = np.float32(temperature), np.float32(temperature_inc)
    if inc <= 0:
        return [float(t)]
    out = []
    while t < np.float32(1.0) + np.float32(1e-6):
        out.append(float(t))
        t = np.float32(t + inc)
    return out


def _fallback(temps: Sequence[Any]) -> tuple[float, float]:
    """(temperature, temperature_inc) for a tuple of temperatures whisper.cpp can try."""
    vals = [_check("temperature", t, float, 0.0, 1.0) for t in temps]
    if not vals:
        raise ValueError("temperature: the tuple of temperatures is empty")
    if len(vals) == 1:
        return vals[0], 0.0
    inc = vals[1] - vals[0]
    if inc <= 0 or not all(abs(a - b) < 1e-4 for a, b in zip(temperatures(vals[0], inc), vals)) \
            or len(temperatures(vals[0], inc)) != len(vals):
        raise ValueError(f"temperature: whisper.cpp tries evenly spaced temperatures rising to 1.0 "
                         f"(t, t+inc, ... <= 1.0), which {tuple(temps)} is not; e.g. (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)")
    return vals[0], inc


def _seconds_to_ms(name: str, value: Any) -> int:
    seconds = _check(name, value, float, 0.0)
    if math.isinf(seconds) or seconds * 1000 > _INT32_MAX:
        raise ValueError(f"{name} is too large ({value} s)")
    return int(round(seconds * 1000))

"""Transcription on one whisper.cpp decoding state: :class:`Transcriber`.

A ``whisper_context`` holds the weights and its own default state; ``whisper_init_state`` makes more
states over the same weights. :class:`~cyllama.whisper.WhisperContext` transcribes on its default
state and each :class:`~cyllama.whisper.WhisperState` on its own, through this one class, so threads
with different states run in parallel. One state serves one thread at a time: a concurrent second
call on the same state raises ``RuntimeError``.

A state keeps the random generator of its first decoder across calls (whisper.cpp seeds it once,
when the state is made), so a temperature fallback may sample differently on a second call with
the same audio; a fresh state (``new_state()``) decodes as a fresh whisper-cli process does.

whisper.cpp trusts its inputs (fewer than 201 samples are read past their end, an offset past the
end of the audio makes language detection fail), so the audio and options are checked here first.
"""

from __future__ import annotations

import queue
import threading
from functools import partial
from typing import Any, Iterator

import numpy as np

from .. import _logging
from .._errors import CyllamaError
from .._ffi import ffi
from ..llama._backend import default_n_threads
from .params import SAMPLE_RATE, WhisperParams, _check, lang_str
from .results import LanguageDetection, Segment, TranscriptionResult, Word
from .vad import VadContext, speech_only, to_original_time

__all__ = ["Transcriber", "as_samples"]

_MIN_SAMPLES = SAMPLE_RATE // 10  # whisper.cpp skips input shorter than 100 ms
_INT32_MAX = 2**31 - 1
_CB = "void(struct whisper_context *, struct whisper_state *, int, void *)"


def as_samples(audio: Any, sample_rate: int | None = None) -> np.ndarray:
    """Any audio ``transcribe`` takes as 16 kHz mono float32 samples; empty audio raises."""
    from .audio import load_audio

    samples = load_audio(audio, sample_rate)
    if samples.size == 0:
        raise ValueError("audio is empty")
    if samples.size > _INT32_MAX:
        raise ValueError(f"audio is too long ({samples.size} samples)")
    return samples


class _Native:
    """whisper.cpp's calls on the context's default state (``state`` NULL) or on another state."""

    def __init__(self, lib: Any, ctx: Any, state: Any):
        if state is None:
            self.full = partial(lib.whisper_full, ctx)
            self.pcm_to_mel = partial(lib.whisper_pcm_to_mel, ctx)
            self.lang_auto_detect = partial(lib.whisper_lang_auto_detect, ctx)
            self.lang_id = partial(lib.whisper_full_lang_id, ctx)
            self.n_segments = partial(lib.whisper_full_n_segments, ctx)
            self.text = partial(lib.whisper_full_get_segment_text, ctx)
            self.t0 = partial(lib.whisper_full_get_segment_t0, ctx)
            self.t1 = partial(lib.whisper_full_get_segment_t1, ctx)
            self.no_speech = partial(lib.whisper_full_get_segment_no_speech_prob, ctx)
            self.n_tokens = partial(lib.whisper_full_n_tokens, ctx)
            self.token_data = partial(lib.whisper_full_get_token_data, ctx)
            self.token_text = partial(lib.whisper_full_get_token_text, ctx)
        else:
            self.full = partial(lib.whisper_full_with_state, ctx, state)
            self.pcm_to_mel = partial(lib.whisper_pcm_to_mel_with_state, ctx, state)
            self.lang_auto_detect = partial(lib.whisper_lang_auto_detect_with_state, ctx, state)
            self.lang_id = partial(lib.whisper_full_lang_id_from_state, state)
            self.n_segments = partial(lib.whisper_full_n_segments_from_state, state)
            self.text = partial(lib.whisper_full_get_segment_text_from_state, state)
            self.t0 = partial(lib.whisper_full_get_segment_t0_from_state, state)
            self.t1 = partial(lib.whisper_full_get_segment_t1_from_state, state)
            self.no_speech = partial(lib.whisper_full_get_segment_no_speech_prob_from_state, state)
            self.n_tokens = partial(lib.whisper_full_n_tokens_from_state, state)
            self.token_data = partial(lib.whisper_full_get_token_data_from_state, state)
            self.token_text = partial(lib.whisper_full_get_token_text_from_state, ctx, state)
        self.eot = int(lib.whisper_token_eot(ctx))


def _text(p: Any) -> str:
    return ffi.string(p).decode("utf-8", "replace") if p != ffi.NULL else ""


class Transcriber:
    """transcribe, transcribe_iter, detect_language and cancel on one decoding state.

    Subclasses set ``_model`` (the WhisperContext), ``_lib``, ``_running`` (a Lock), ``_cancel`` and
    ``_vad`` (None) and define ``_native()``.
    """

    _model: Any
    _lib: Any
    _running: threading.Lock
    _cancel: bool = False
    _vad: VadContext | None = None
    _vad_default = False  # _vad is the default model (vad_model_path None)

    def _native(self) -> _Native:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stops a running :meth:`transcribe` on this state (from another thread); it returns what
        it has, with ``cancelled=True``. The state stays usable."""
        self._cancel = True

    def _vad_context(self, path: str | None, n_threads: int) -> VadContext:
        want = None if path is None else str(path)
        if self._vad is not None and (want is None and self._vad_default or str(self._vad.path) == want):
            return self._vad
        vctx = VadContext(want, n_threads=n_threads)
        if self._vad is not None:
            self._vad.close()
        self._vad, self._vad_default = vctx, want is None
        return vctx

    def _close_vad(self) -> None:
        if self._vad is not None:
            self._vad.close()
            self._vad = None

    def _check_params(self, params: WhisperParams | None, options: dict[str, Any]) -> WhisperParams:
        params = WhisperParams() if params is None else params
        if not isinstance(params, WhisperParams):
            raise TypeError(f"params must be WhisperParams, got {type(params).__name__}")
        p = params.with_options(**options)
        m = self._model
        if not m.is_multilingual:
            if p.language not in ("auto", "en"):
                raise ValueError(f"language: {m.path.name} is an English-only model, got {p.language!r}")
            if p.translate:
                raise ValueError(f"translate: {m.path.name} is an English-only model")
        if p.audio_ctx > m.n_audio_ctx:
            raise ValueError(f"audio_ctx must be <= {m.n_audio_ctx}, got {p.audio_ctx}")
        return p

    def transcribe(self, audio: Any, params: WhisperParams | None = None, *, sample_rate: int | None = None,
                   on_progress: Any = None, word_timestamps: bool = False, on_segment: Any = None,
                   **options: Any) -> TranscriptionResult:
        """Transcribes audio: a file path (WAV; FLAC, OGG, MP3... with ``soundfile``), the bytes of
        an audio file, or an array of samples at ``sample_rate`` Hz (default 16000), mono or
        ``(n, channels)``. ``on_progress(percent)`` is called as whisper.cpp advances;
        ``word_timestamps`` gives each segment its ``words`` with times and probabilities;
        ``on_segment(segment)`` is called with each segment as whisper.cpp finishes it.

        Named options override ``params`` for this call (:meth:`WhisperParams.with_options`):
        ``language`` ("auto" detects it), ``temperature`` (a float, or a tuple of fallback
        temperatures), ``temperature_inc``, ``beam_size``, ``best_of``, ``no_speech_threshold``,
        ``max_len``, ``split_on_word``, ``offset`` and ``duration`` (seconds), ``vad`` (transcribe
        only the speech Silero VAD finds; times stay those of the whole audio), ``vad_model_path``,
        ``vad_params`` and ``n_threads``.
        """
        for name, cb in (("on_progress", on_progress), ("on_segment", on_segment)):
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable")
        p = self._check_params(params, options)
        samples = as_samples(audio, sample_rate)
        duration = samples.size / SAMPLE_RATE
        if p.offset_ms and p.offset_ms >= duration * 1000:
            raise ValueError(f"offset ({p.offset_ms / 1000:g} s) is past the end of the audio ({duration:.2f} s)")
        lang = p.language
        if not self._running.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is already transcribing in another thread")
        try:
            native = self._native()
            table: list[tuple[int, int]] = []
            if p.vad:
                vctx = self._vad_context(p.vad_model_path, p.n_threads)
                speech = vctx.segments_cs(samples, p.vad_params)
                samples, table = speech_only(samples, speech, p.vad_params.samples_overlap) if speech else \
                    (samples[:0], [])
            if samples.size < _MIN_SAMPLES:  # whisper.cpp would return nothing (and read past the end)
                return TranscriptionResult("", [], "en" if lang == "auto" else lang, duration)
            c = ffi.new("struct whisper_full_params *", p.value)
            keep: list[Any] = [p]  # the strings c points to
            c.vad = False  # done above, the same way, on any state
            if lang == "auto" and not self._model.is_multilingual:
                keep.append(ffi.new("char[]", b"en"))  # skip detection on English-only models
                c.language = keep[-1]
            if word_timestamps:
                c.token_timestamps = True
            self._cancel = False
            abort_cb = ffi.callback("bool(void *)", lambda _d: bool(self._cancel), onerror=lambda *a: False)
            c.abort_callback, c.abort_callback_user_data = abort_cb, ffi.NULL
            keep.append(abort_cb)
            if on_progress is not None:
                prog_cb = ffi.callback(_CB, lambda _c, _s, pct, _d: on_progress(int(pct)), onerror=lambda *a: None)
                c.progress_callback, c.progress_callback_user_data = prog_cb, ffi.NULL
                keep.append(prog_cb)
            if on_segment is not None:
                def new_segments(_c: Any, _s: Any, n_new: int, _d: Any) -> None:
                    n = native.n_segments()
                    for i in range(max(0, n - n_new), n):
                        on_segment(self._segment(native, i, table, word_timestamps))
                seg_cb = ffi.callback(_CB, new_segments, onerror=lambda *a: None)
                c.new_segment_callback, c.new_segment_callback_user_data = seg_cb, ffi.NULL
                keep.append(seg_cb)
            buf = ffi.from_buffer("float[]", samples)
            before = _logging.log_mark()
            rc = native.full(c[0], buf, samples.size)
            del keep
            if not self._cancel and rc != 0:
                why = "; ".join(_logging.errors_since(before, 3)) or "see the whisper log"
                raise CyllamaError(f"whisper_full failed with code {rc}: {why}")
            res = self._collect(native, lang, table, word_timestamps)
            res.duration, res.cancelled = duration, self._cancel
            return res
        finally:
            self._cancel = False
            self._running.release()

    def _collect(self, native: _Native, lang: str, table: list[tuple[int, int]], words: bool) -> TranscriptionResult:
        segments = [self._segment(native, i, table, words) for i in range(native.n_segments())]
        text = "".join(_text(native.text(i)) for i in range(len(segments))).strip()
        if not self._model.is_multilingual:
            lang = "en"
        elif lang == "auto":
            lang = lang_str(int(native.lang_id())) or "auto"
        return TranscriptionResult(text, segments, lang)

    def _segment(self, native: _Native, i: int, table: list[tuple[int, int]], words: bool) -> Segment:
        t0, t1 = int(native.t0(i)), int(native.t1(i))
        if table:  # joined speech -> the original audio, as whisper.cpp maps it
            t0, t1 = to_original_time(t0, table), to_original_time(t1, table)
            t1 = max(t1, t0 + 10)
        seg = Segment(t0 / 100.0, t1 / 100.0, _text(native.text(i)).strip(), float(native.no_speech(i)))
        self._tokens_of(native, i, seg, table, words)
        return seg

    def _tokens_of(self, native: _Native, i: int, seg: Segment, table: list[tuple[int, int]], words_on: bool) -> None:
        """A segment's text tokens, their mean log-probability, and (word timestamps) its words:
        a token starting with a space starts a word."""
        words: list[Word] = []
        plogs: list[float] = []
        cur: list[Any] = []  # [text, start, end, probs]
        for j in range(native.n_tokens(i)):
            d = native.token_data(i, j)
            if d.id >= native.eot:  # special and timestamp tokens
                continue
            seg.tokens.append(int(d.id))
            plogs.append(float(d.plog))
            if not words_on:
                continue
            piece = _text(native.token_text(i, j))
            t0, t1 = max(int(d.t0), 0), max(int(d.t1), 0)
            if table:
                t0, t1 = to_original_time(t0, table), to_original_time(t1, table)
            start, end = t0 / 100.0, t1 / 100.0
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
        if words_on:
            for w in words:  # inside the segment, in order
                w.start = min(max(w.start, seg.start), seg.end)
                w.end = min(max(w.end, w.start), seg.end)
            seg.words = words

    def transcribe_iter(self, audio: Any, params: WhisperParams | None = None, *, sample_rate: int | None = None,
                        word_timestamps: bool = False, **options: Any) -> Iterator[Segment]:
        """Yields segments as whisper.cpp produces them (a transcription runs in the background;
        leaving the loop early cancels it). Takes :meth:`transcribe`'s named options. Errors are
        raised from the loop."""
        q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        done = object()
        samples = as_samples(audio, sample_rate)  # bad input raises here, before the thread
        p = self._check_params(params, options)

        def run() -> None:
            try:
                self.transcribe(samples, p, word_timestamps=word_timestamps, on_segment=q.put)
                q.put(done)
            except BaseException as exc:  # handed to the consumer
                q.put(exc)

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

    def detect_language(self, audio: Any, *, sample_rate: int | None = None, offset: float = 0.0,
                        n_threads: int | None = None) -> LanguageDetection:
        """The spoken language of ``audio`` (its 30 s from ``offset`` seconds), as whisper.cpp
        detects it for ``language="auto"``: the language, its probability and every language's.
        English-only models are not trained for this (``transcribe`` uses "en" for them)."""
        samples = as_samples(audio, sample_rate)
        if samples.size < _MIN_SAMPLES:
            raise ValueError("audio is too short to detect its language (under 0.1 s)")
        offset_ms = int(round(_check("offset", offset, float, 0.0) * 1000))
        if offset_ms >= samples.size * 1000 // SAMPLE_RATE:
            raise ValueError(f"offset ({offset:g} s) is past the end of the audio")
        threads = _check("n_threads", default_n_threads() if n_threads is None else n_threads, int, 1, 1024)
        if not self._running.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is already transcribing in another thread")
        try:
            native = self._native()
            before = _logging.log_mark()
            if native.pcm_to_mel(ffi.from_buffer("float[]", samples), samples.size, threads) != 0:
                raise CyllamaError("whisper.cpp could not compute the mel spectrogram")
            n = self._lib.whisper_lang_max_id() + 1
            probs = ffi.new("float[]", n)
            lid = native.lang_auto_detect(offset_ms, threads, probs)
            if lid < 0:
                why = "; ".join(_logging.errors_since(before, 3)) or "see the whisper log"
                raise CyllamaError(f"language detection failed: {why}")
        finally:
            self._running.release()
        by_code = {code: float(probs[i]) for i in range(n) if (code := lang_str(i))}
        ordered = dict(sorted(by_code.items(), key=lambda kv: -kv[1]))
        code = lang_str(int(lid)) or "unknown"
        return LanguageDetection(code, by_code.get(code, 0.0), ordered)

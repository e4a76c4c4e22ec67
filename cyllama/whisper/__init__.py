"""Speech-to-text with whisper.cpp.

whisper.cpp is loaded from ``libwhisper``, which shares llama.cpp's ggml libraries, so speech and
text models can live in one process::

    from cyllama.whisper import WhisperContext, WhisperParams

    params = WhisperParams(language="en")
    with WhisperContext("models/ggml-base.en.bin") as ctx:
        result = ctx.transcribe("audio.wav", params)   # 16 kHz 16-bit PCM WAV, or float32 samples
        result = ctx.transcribe("audio.wav", beam_size=5, vad=True)   # named options
        print(ctx.detect_language("audio.wav").language)
    for seg in result.segments:
        print(f"[{seg.start:.2f}s -> {seg.end:.2f}s] {seg.text}")

:func:`default_model_path` gives whisper tiny.en, converted once from CTranslate2 weights that come
from the Python package registry (:func:`convert_ct2_to_ggml`); :func:`vad_model_path` gives Silero
VAD v6.2.0, converted once from the ``silero-vad`` package (:func:`convert_silero_vad`).
:meth:`WhisperContext.new_state` makes more decoding states over one model for parallel threads.
"""

from .audio import load_audio, resample
from .context import WhisperContext, WhisperState, check_whisper_file, default_model_path, read_wav
from .convert import convert_ct2_to_ggml
from .convert_silero import convert_silero_vad
from .params import VadParams, WhisperParams, lang_id, lang_str, languages, temperatures
from .results import LanguageDetection, Segment, TranscriptionResult, Word
from .vad import SpeechSegment, VadContext, check_vad_file, vad_model_path

__all__ = [
    "WhisperContext", "WhisperState", "WhisperParams", "VadParams", "TranscriptionResult", "Segment", "Word",
    "LanguageDetection", "VadContext", "SpeechSegment", "default_model_path", "vad_model_path",
    "convert_ct2_to_ggml", "convert_silero_vad", "check_whisper_file", "check_vad_file", "read_wav",
    "lang_id", "lang_str", "languages", "temperatures", "load_audio", "resample",
]

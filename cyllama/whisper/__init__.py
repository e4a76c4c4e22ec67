"""Speech-to-text with whisper.cpp.

whisper.cpp is loaded from ``libwhisper``, which shares llama.cpp's ggml libraries, so speech and
text models can live in one process::

    from cyllama.whisper import WhisperContext, WhisperParams

    params = WhisperParams(language="en")
    with WhisperContext("models/ggml-base.en.bin") as ctx:
        result = ctx.transcribe("audio.wav", params)   # 16 kHz 16-bit PCM WAV, or float32 samples
    for seg in result.segments:
        print(f"[{seg.start:.2f}s -> {seg.end:.2f}s] {seg.text}")

:func:`default_model_path` gives whisper tiny.en, converted once from CTranslate2 weights that come
from the Python package registry (:func:`convert_ct2_to_ggml`).
"""

from .context import (
    Segment,
    TranscriptionResult,
    Word,
    WhisperContext,
    WhisperParams,
    default_model_path,
    lang_id,
    lang_str,
    languages,
    read_wav,
)
from .audio import load_audio, resample
from .convert import convert_ct2_to_ggml

__all__ = [
    "WhisperContext", "WhisperParams", "TranscriptionResult", "Segment", "Word", "default_model_path",
    "convert_ct2_to_ggml", "read_wav", "lang_id", "lang_str", "languages", "load_audio", "resample",
]

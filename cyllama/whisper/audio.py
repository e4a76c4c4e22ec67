"""Audio in any common form, as whisper wants it: 16 kHz mono float32 samples in [-1, 1].

Files (WAV, FLAC, OGG/Opus, MP3, AIFF...) and their bytes are decoded with ``soundfile``
(libsndfile) and resampled with ``soxr`` when they are installed (``pip install cyllama[audio]``);
without them only 16 kHz 16-bit PCM WAV files are read, and arrays at another rate are resampled
by linear interpolation.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .._errors import check_path

__all__ = ["SAMPLE_RATE", "load_audio", "resample"]

SAMPLE_RATE = 16000


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` (mono float32) at ``rate`` Hz, resampled to ``target`` Hz."""
    if rate == target:
        return samples
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {rate!r}")
    try:
        import soxr
    except ImportError:
        n = max(1, int(round(len(samples) * target / rate)))
        x = np.linspace(0, len(samples) - 1, n)
        return np.interp(x, np.arange(len(samples)), samples).astype(np.float32)
    return np.ascontiguousarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)


def _mono(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float32)


def _decode(source: Any, name: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile as sf
    except ImportError:
        return np.empty(0, np.float32), -1
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"{name} is not a readable audio file: {exc}") from None
    return _mono(data), int(rate)


def load_audio(audio: Any, sample_rate: int | None = None) -> np.ndarray:
    """16 kHz mono float32 samples from a file path, the bytes of an audio file, or an array of
    samples (``sample_rate`` Hz, default 16000; ``(n, channels)`` arrays are mixed down)."""
    from .context import read_wav

    if isinstance(audio, (str, os.PathLike)):
        p = check_path(audio, "audio")
        data, rate = _decode(str(p), str(p))
        if rate < 0:  # no soundfile: plain WAV only
            return read_wav(p)
        return resample(data, rate)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if not len(audio):
            raise ValueError("the audio is empty")
        data, rate = _decode(io.BytesIO(bytes(audio)), "the audio bytes")
        if rate < 0:
            raise ValueError("decoding audio bytes needs soundfile: pip install cyllama[audio]")
        return resample(data, rate)
    arr = np.asarray(audio)
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif arr.dtype.kind not in "fiu":
        raise TypeError(f"audio samples must be numbers, got dtype {arr.dtype}")
    if arr.ndim == 2 and 1 <= arr.shape[1] <= 8:  # (n, channels)
        arr = arr.mean(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"audio must be a 1-D array of samples (or (n, channels)), got shape {arr.shape}")
    samples = np.ascontiguousarray(arr, dtype=np.float32)
    if samples.size and not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite samples")
    return resample(samples, SAMPLE_RATE if sample_rate is None else sample_rate)

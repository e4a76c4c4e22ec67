#!/usr/bin/env python3
"""Transcribe a 16 kHz WAV file with whisper.cpp (default: whisper.cpp's jfk.wav sample).

    python examples/transcribe.py [audio.wav]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama._assets import speech_sample_path  # noqa: E402
from cyllama.whisper import WhisperContext, WhisperParams, default_model_path  # noqa: E402

audio = sys.argv[1] if len(sys.argv) > 1 else speech_sample_path()
with WhisperContext(default_model_path()) as ctx:
    result = ctx.transcribe(audio, WhisperParams(language="en"))
for seg in result.segments:
    print(f"[{seg.start:6.2f}s -> {seg.end:6.2f}s] {seg.text}")
print("\n" + result.text)

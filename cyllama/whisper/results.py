"""What a transcription returns: :class:`TranscriptionResult` (with its txt, srt, vtt and json
writers), its :class:`Segment` and :class:`Word` items, and :class:`LanguageDetection`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["Word", "Segment", "TranscriptionResult", "LanguageDetection"]


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


@dataclass
class LanguageDetection:
    """whisper's guess of the spoken language: ``language`` (a code such as "en"), its
    ``probability``, and the probability of every language by code, most likely first."""

    language: str
    probability: float
    probs: dict[str, float] = field(default_factory=dict)

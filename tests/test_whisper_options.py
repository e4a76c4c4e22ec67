"""Whisper beyond plain transcription: Silero VAD (our converter and whisper.cpp's detector),
named decoding options, language detection and several states over one model, each compared with
the built ``whisper-cli`` where it can do the same job."""

from __future__ import annotations

import hashlib
import pickle
import re
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cyllama import ClosedError, _assets
from cyllama._ffi import lib_dir
from cyllama.whisper import (
    LanguageDetection,
    TranscriptionResult,
    VadContext,
    VadParams,
    WhisperContext,
    WhisperParams,
    WhisperState,
    check_vad_file,
    convert_silero_vad,
    read_wav,
    temperatures,
    vad_model_path,
)

OFFICIAL_SILERO_SHA256 = "2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987"  # ggml-silero-v6.2.0.bin
THREADS = 2
LINE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\]\s+(.*)$")


@pytest.fixture(scope="module")
def vad_model() -> Path:
    return vad_model_path()


def whisper_cli(model: Path, audio: Path, *args: str) -> tuple[list[tuple[float, float, str]], str]:
    """whisper-cli's segments (start, end, text) and its log."""
    exe = lib_dir() / "whisper-cli"
    if not exe.exists():
        pytest.skip("whisper-cli is not built")
    r = subprocess.run([str(exe), "-m", str(model), "-f", str(audio), "-t", str(THREADS), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    segs = []
    for line in r.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            g = [int(x) for x in m.groups()[:8]]
            segs.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                         m.group(9).strip()))
    return segs, r.stderr


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def ours(result: TranscriptionResult) -> list[tuple[float, float, str]]:
    return [(round(s.start, 2), round(s.end, 2), s.text) for s in result.segments]


def theirs(segs: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    return [(round(a, 2), round(b, 2), t) for a, b, t in segs]


# -- the Silero VAD model -----------------------------------------------------------------------
def test_converted_silero_is_byte_identical_to_the_official_file(vad_model: Path, tmp_path: Path) -> None:
    assert vad_model.stat().st_size == 885_098
    assert hashlib.sha256(vad_model.read_bytes()).hexdigest() == OFFICIAL_SILERO_SHA256
    again = convert_silero_vad(_assets.fetch("silero-vad"), tmp_path / "silero.bin", "6.2.0")
    assert again.read_bytes() == vad_model.read_bytes()
    assert check_vad_file(vad_model) == vad_model


def test_converter_refuses_code_and_bad_files(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.jit"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load \w+\.print"):
        convert_silero_vad(evil, tmp_path / "out.bin", "6.2.0")
    text = tmp_path / "text.jit"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="TorchScript"):
        convert_silero_vad(text, tmp_path / "out.bin", "6.2.0")
    with pytest.raises(ValueError, match="version"):
        convert_silero_vad(_assets.fetch("silero-vad"), tmp_path / "out.bin", "six")
    assert not (tmp_path / "out.bin").exists()


def test_bad_vad_files_are_rejected_before_c(vad_model: Path, whisper_model: Path, tmp_path: Path) -> None:
    data = vad_model.read_bytes()
    for name, blob in [("short.bin", data[:100_000]), ("big-name.bin", data[:4] + b"\xff\xff\xff\x7f" + data[8:]),
                       ("dims.bin", data[:106] + (9).to_bytes(4, "little") + data[110:])]:  # 1st tensor's n_dims
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            VadContext(bad)
    with pytest.raises(ValueError, match="VAD model"):
        VadContext(whisper_model)
    with pytest.raises(FileNotFoundError):
        VadContext(tmp_path / "missing.bin")


# -- speech detection -----------------------------------------------------------------------------
def test_vad_finds_the_speech_whisper_cli_finds(vad_model: Path, whisper_model: Path, jfk: Path) -> None:
    _, log = whisper_cli(whisper_model, jfk, "-bs", "1", "--vad", "-vm", str(vad_model))
    want = [(float(a), float(b)) for a, b in
            re.findall(r"VAD segment \d+: start = ([\d.]+), end = ([\d.]+)", log)]
    assert len(want) >= 2
    with VadContext(vad_model, n_threads=THREADS) as v:
        got = v.detect_speech(jfk)
        assert [(s.start, s.end) for s in got] == want
        probs = v.probs(jfk)
        assert probs.shape == (-(-176_000 // 512),) and 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0.9
        assert v.detect_speech(np.zeros(16000 * 5, dtype=np.float32)) == []
        strict = v.detect_speech(jfk, VadParams(threshold=0.99, min_speech_duration_ms=2000))
        assert len(strict) < len(got)


def test_transcribe_with_vad_matches_whisper_cli(wctx: WhisperContext, vad_model: Path, whisper_model: Path,
                                                 jfk: Path) -> None:
    cli, _ = whisper_cli(whisper_model, jfk, "-bs", "1", "--vad", "-vm", str(vad_model))
    with WhisperContext(whisper_model) as fresh:  # as whisper-cli's: see test_named_options_match_whisper_cli
        r = fresh.transcribe(jfk, n_threads=THREADS, vad=True, vad_model_path=vad_model)
    assert ours(r) == theirs(cli)
    plain = wctx.transcribe(jfk, n_threads=THREADS)
    assert norm(r.text) == norm(plain.text)  # the same words (punctuation may differ): the speech is all there
    assert r.segments[0].start >= 0.3  # the silence before it is skipped, times are the original audio's
    # the same on another state (whisper.cpp only runs VAD on the default state: ours runs on any)
    with wctx.new_state() as st:
        r2 = st.transcribe(jfk, n_threads=THREADS, vad=True, word_timestamps=True)
        assert ours(r2) == ours(r)
        for seg in r2.segments:
            assert seg.words and all(seg.start <= w.start <= w.end <= seg.end for w in seg.words)


def test_vad_on_silence_gives_no_segments(wctx: WhisperContext) -> None:
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 6) * 1e-4).astype(np.float32)
    r = wctx.transcribe(quiet, n_threads=THREADS, vad=True)
    assert r.segments == [] and r.text == "" and 5.9 < r.duration < 6.1


# -- named options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options,cli_args", [
    ({}, ["-bs", "1"]),
    ({"beam_size": 5}, ["-bs", "5"]),
    ({"max_len": 16, "split_on_word": True}, ["-bs", "1", "-ml", "16", "-sow"]),
    ({"offset": 3.0, "duration": 5.0}, ["-bs", "1", "-ot", "3000", "-d", "5000"]),
])
def test_named_options_match_whisper_cli(wctx: WhisperContext, whisper_model: Path, jfk: Path, options: dict,
                                         cli_args: list[str]) -> None:
    cli, _ = whisper_cli(whisper_model, jfk, *cli_args)
    with wctx.new_state() as st:  # fresh, as whisper-cli's: fallbacks sample from a generator kept per state
        r = st.transcribe(jfk, n_threads=THREADS, **options)
    assert ours(r) == theirs(cli)
    if "max_len" in options:
        assert len(r.segments) > 3 and all(len(s.text) <= 16 + 12 for s in r.segments)


def test_option_values_reach_the_params() -> None:
    base = WhisperParams()
    p = base.with_options(temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), beam_size=4, best_of=3,
                          no_speech_threshold=0.5, offset=1.25, duration=2, language="auto")
    assert p.strategy == "beam_search" and p.beam_size == 4 and p.best_of == 3
    assert p.temperature == 0.0 and abs(p.temperature_inc - 0.2) < 1e-6
    assert abs(p.no_speech_thold - 0.5) < 1e-6 and p.offset_ms == 1250 and p.duration_ms == 2000
    assert p.language == "auto" and base.language == "en" and base.strategy == "greedy"  # base unchanged
    assert temperatures(0.0, 0.2) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert base.with_options(temperature=(0.5,)).temperature_inc == 0.0
    assert base.with_options(temperature=0.3).temperature_inc == pytest.approx(0.2)  # whisper.cpp's fallback
    assert base.with_options(beam_size=1).strategy == "greedy"
    q = base.with_options(vad=True, vad_params={"threshold": 0.6, "speech_pad_ms": 50})
    assert q.vad and q.vad_params.threshold == pytest.approx(0.6) and q.vad_params.speech_pad_ms == 50
    q.vad_params.min_silence_duration_ms = 500  # a live view
    assert q.vad_params.min_silence_duration_ms == 500 and base.vad_params.min_silence_duration_ms == 100
    q.vad_params.max_speech_duration_s = float("inf")
    assert q.vad_params.max_speech_duration_s > 1e38


def test_bad_options_raise_clear_errors(wctx: WhisperContext, jfk: Path) -> None:
    samples = read_wav(jfk)
    for options, exc, match in [
        ({"temperature": (0.0, 0.3)}, ValueError, "evenly spaced"),
        ({"temperature": (0.4, 0.2)}, ValueError, "evenly spaced"),
        ({"temperature": ()}, ValueError, "empty"),
        ({"temperature": 1.5}, ValueError, "temperature"),
        ({"temperature": (0.0, 0.5, 1.0), "temperature_inc": 0.5}, ValueError, "temperature_inc"),
        ({"beam_size": 9}, ValueError, "beam_size"),
        ({"beam_size": 0}, ValueError, "beam_size"),
        ({"best_of": 0}, ValueError, "best_of"),
        ({"no_speech_threshold": 2.0}, ValueError, "no_speech_threshold"),
        ({"max_len": -1}, ValueError, "max_len"),
        ({"offset": -1}, ValueError, "offset"),
        ({"offset": 60.0}, ValueError, "past the end"),
        ({"duration": float("nan")}, ValueError, "duration"),
        ({"split_on_word": "yes"}, TypeError, "split_on_word"),
        ({"vad_params": {"threshold": 2}}, ValueError, "threshold"),
        ({"vad_params": {"speech_pad_ms": 10**9}}, ValueError, "speech_pad_ms"),
        ({"vad_params": {"nope": 1}}, TypeError, "nope"),
        ({"vad_model_path": 3}, TypeError, "vad_model_path"),
        ({"language": "de"}, ValueError, "English-only"),
        ({"beam_sise": 5}, TypeError, "beam_sise"),
    ]:
        with pytest.raises(exc, match=match):
            wctx.transcribe(samples, **options)
    with pytest.raises(FileNotFoundError):
        wctx.transcribe(samples, vad=True, vad_model_path="/nonexistent/silero.bin")


# -- language detection ------------------------------------------------------------------------------
def test_detect_language_matches_whisper_cli(wctx: WhisperContext, whisper_model: Path, jfk: Path) -> None:
    _, log = whisper_cli(whisper_model, jfk, "-dl")
    m = re.search(r"auto-detected language: (\w+) \(p = ([\d.]+)\)", log)
    assert m, log[-2000:]
    d = wctx.detect_language(jfk, n_threads=THREADS)
    assert isinstance(d, LanguageDetection)
    assert d.language == m.group(1) and d.probability == pytest.approx(float(m.group(2)), abs=2e-6)
    assert next(iter(d.probs)) == d.language and abs(sum(d.probs.values()) - 1) < 1e-3
    with pytest.raises(ValueError, match="too short"):
        wctx.detect_language(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="past the end"):
        wctx.detect_language(jfk, offset=30)
    assert wctx.transcribe(jfk, language="auto", n_threads=THREADS).language == "en"  # English-only: no detection


# -- several states over one model -------------------------------------------------------------------
def test_two_threads_transcribe_in_parallel_on_one_model(wctx: WhisperContext, jfk: Path) -> None:
    with wctx.new_state() as s0:  # fresh states decode alike (see test_named_options_match_whisper_cli)
        want = s0.transcribe(jfk, n_threads=1)
    states = [wctx.new_state(), wctx.new_state()]
    assert all(isinstance(s, WhisperState) and s.context is wctx for s in states)
    barrier = threading.Barrier(2)
    results: list = [None, None]
    spans: list = [[], []]

    def work(k: int) -> None:
        barrier.wait()
        results[k] = states[k].transcribe(jfk, n_threads=1, on_progress=lambda _p: spans[k].append(time.monotonic()))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [ours(r) for r in results] == [ours(want)] * 2
    assert max(s[0] for s in spans) < min(s[-1] for s in spans)  # both were inside whisper_full at once
    # a state is one thread's: a second concurrent call raises
    assert states[0]._running.acquire(blocking=False)
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            states[0].transcribe(jfk)
        with pytest.raises(RuntimeError, match="states is transcribing"):
            wctx.close()
    finally:
        states[0]._running.release()
    states[0].close()
    assert states[0].closed and not wctx.closed
    with pytest.raises(ClosedError):
        states[0].transcribe(jfk)


def test_closing_the_context_closes_its_states(whisper_model: Path, jfk: Path) -> None:
    ctx = WhisperContext(whisper_model)
    st = ctx.new_state()
    assert st.detect_language(jfk, n_threads=THREADS).language == ctx.detect_language(jfk, n_threads=THREADS).language
    ctx.close()
    assert st.closed
    with pytest.raises(ClosedError):
        st.transcribe(jfk)
    with pytest.raises(ClosedError):
        WhisperState(ctx)
    with pytest.raises(TypeError):
        WhisperState("model.bin")


def test_cli_transcribe_options(jfk: Path, whisper_model: Path, vad_model: Path, tmp_path: Path) -> None:
    import json
    import sys

    out = tmp_path / "jfk.json"
    r = subprocess.run([sys.executable, "-m", "cyllama", "transcribe", str(jfk), "-m", str(whisper_model), "-q",
                        "-f", "json", "-o", str(out), "--vad", "--vad-model", str(vad_model), "--beam-size", "2",
                        "--threads", str(THREADS), "--max-len", "30"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["segments"][0]["start"] >= 0.3 and "country" in data["text"]
    assert all(len(s["text"]) <= 30 + 12 for s in data["segments"])
    bad = subprocess.run([sys.executable, "-m", "cyllama", "transcribe", str(jfk), "-m", str(whisper_model), "-q",
                          "--beam-size", "12"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "beam_size" in bad.stderr

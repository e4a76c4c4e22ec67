"""whisper.cpp through cyllama: the real tiny.en model on whisper.cpp's jfk.wav."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import pytest

from cyllama import ClosedError, _assets
from cyllama.whisper import (
    Segment,
    TranscriptionResult,
    WhisperContext,
    WhisperParams,
    convert_ct2_to_ggml,
    lang_id,
    lang_str,
    languages,
    read_wav,
)

PHRASE = "ask not what your country can do for you"


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def jfk_result(wctx: WhisperContext, jfk: Path) -> TranscriptionResult:
    return wctx.transcribe(jfk, WhisperParams(language="en"))


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


# -- the model ------------------------------------------------------------------------------
def test_default_model_is_a_ggml_whisper_file(whisper_model: Path) -> None:
    assert whisper_model.name == "whisper-tiny-en.bin"
    assert whisper_model.read_bytes()[:4] == (0x67676D6C).to_bytes(4, "little")
    assert callable(convert_ct2_to_ggml)


def test_context_properties(wctx: WhisperContext) -> None:
    assert wctx.n_vocab == 51864  # tiny.en
    assert wctx.is_multilingual is False
    assert wctx.model_type == "tiny"
    assert "tiny" in repr(wctx)


def test_language_helpers() -> None:
    assert lang_id("en") == 0 and lang_id("german") == lang_id("de") == 2
    assert lang_id("klingon") == -1
    assert lang_str(2) == "de" and lang_str(10_000) is None and lang_str(-1) is None
    assert "en" in languages() and len(languages()) >= 99
    assert WhisperContext.lang_id("fr") == lang_id("fr")


# -- transcription --------------------------------------------------------------------------
def test_transcript(jfk_result: TranscriptionResult) -> None:
    assert PHRASE in norm(jfk_result.text), jfk_result.text
    assert "fellow americans" in norm(jfk_result.text)
    assert jfk_result.language == "en"
    assert str(jfk_result) == jfk_result.text


def test_segments_have_sensible_timestamps(jfk_result: TranscriptionResult) -> None:
    segs = jfk_result.segments
    assert segs and all(isinstance(s, Segment) for s in segs)
    prev_end = 0.0
    for s in segs:
        assert 0.0 <= s.start <= s.end <= 11.5, segs
        assert s.start >= prev_end - 1e-6, segs
        assert s.text and s.text == s.text.strip()
        prev_end = s.end
    assert segs[-1].end > 5.0
    assert norm(" ".join(s.text for s in segs)) == norm(jfk_result.text)


def test_array_input_gives_the_same_text(wctx: WhisperContext, jfk: Path, jfk_result: TranscriptionResult) -> None:
    with wave.open(str(jfk), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    samples = pcm.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(samples, read_wav(jfk))
    result = wctx.transcribe(samples, WhisperParams(language="en"))
    assert result.text == jfk_result.text
    assert [(s.start, s.end) for s in result.segments] == [(s.start, s.end) for s in jfk_result.segments]
    # float64 and int16 arrays are converted (int16 scaled to [-1, 1])
    assert wctx.transcribe(pcm.copy()).text == jfk_result.text


def test_beam_search_and_options(wctx: WhisperContext, jfk: Path) -> None:
    p = WhisperParams(strategy="beam_search", beam_size=2, language="auto", no_timestamps=True,
                      single_segment=True, initial_prompt="President Kennedy's inaugural address.")
    assert p.strategy == "beam_search" and p.beam_size == 2 and p.language == "auto"
    result = wctx.transcribe(jfk, p)
    assert PHRASE in norm(result.text), result.text
    assert len(result.segments) == 1
    assert result.language == "en"  # English-only model: no detection


def test_stereo_wav_is_averaged(wctx: WhisperContext, jfk: Path, jfk_result: TranscriptionResult,
                                tmp_path: Path) -> None:
    with wave.open(str(jfk), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    stereo = write_wav(tmp_path / "stereo.wav", np.repeat(pcm, 2), channels=2)
    np.testing.assert_array_equal(read_wav(stereo), read_wav(jfk))
    p = WhisperParams(offset_ms=0, duration_ms=3000)  # only the first 3 s: quick
    assert norm(wctx.transcribe(stereo, p).text).startswith("and so my fellow")


def test_very_short_audio_gives_an_empty_result(wctx: WhisperContext) -> None:
    # whisper.cpp skips < 100 ms and reads past the end of < 201 samples: never passed to C
    result = wctx.transcribe(np.zeros(100, dtype=np.float32))
    assert result.text == "" and result.segments == []


# -- bad inputs -----------------------------------------------------------------------------
def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WhisperContext(tmp_path / "nope.bin")


def test_text_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_text("this is not a whisper model\n")
    with pytest.raises(ValueError, match="model.bin"):
        WhisperContext(path)


def test_corrupt_header_is_rejected_before_c(whisper_model: Path, tmp_path: Path) -> None:
    head = bytearray(whisper_model.read_bytes()[:4096])
    head[44:48] = (5).to_bytes(4, "little")  # an ftype ggml would abort on
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(head))
    with pytest.raises(ValueError, match="bad.bin"):
        WhisperContext(path)


def test_bad_audio_inputs(wctx: WhisperContext, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        wctx.transcribe(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="empty"):
        wctx.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        wctx.transcribe(np.array([0.0, np.nan] * 1000, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        wctx.transcribe(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(ValueError, match="not a readable audio"):
        wctx.transcribe(b"RIFF....")
    with pytest.raises(ValueError, match="empty"):
        wctx.transcribe(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(ValueError, match="audio"):
        wctx.transcribe(text)
    with pytest.raises(ValueError, match="sample_rate"):
        wctx.transcribe(np.zeros(16000, dtype=np.float32), sample_rate=0)
    with pytest.raises(ValueError, match="English-only"):
        wctx.transcribe(np.zeros(16000, dtype=np.float32), WhisperParams(language="de"))
    with pytest.raises(TypeError):
        wctx.transcribe(np.zeros(16000, dtype=np.float32), {"language": "en"})


def test_params_validation() -> None:
    p = WhisperParams()
    assert p.strategy == "greedy" and p.language == "en" and p.n_threads >= 1
    assert not p.print_progress and not p.print_realtime and not p.print_timestamps
    with pytest.raises(AttributeError, match="languag"):
        p.languag = "en"
    with pytest.raises(ValueError, match="n_threads"):
        p.n_threads = 0
    with pytest.raises(TypeError, match="n_threads"):
        p.n_threads = "4"
    with pytest.raises(ValueError, match="language"):
        p.language = "klingon"
    with pytest.raises(ValueError, match="beam_size"):
        p.beam_size = 9
    with pytest.raises(ValueError, match="best_of"):
        p.best_of = 0
    with pytest.raises(ValueError, match="temperature"):
        p.temperature = float("nan")
    with pytest.raises(ValueError, match="offset_ms"):
        p.offset_ms = -1
    with pytest.raises(TypeError, match="translate"):
        p.translate = "yes"
    with pytest.raises(ValueError, match="strategy"):
        WhisperParams(strategy="sampling")
    with pytest.raises(ValueError, match="initial_prompt"):
        p.initial_prompt = "a\x00b"
    p.language = "English"
    assert p.language == "en"
    p.language = None
    assert p.language == "auto"
    p.initial_prompt = "hello"
    assert p.initial_prompt == "hello"
    p.initial_prompt = None
    assert p.initial_prompt is None
    assert WhisperParams(strategy="beam_search").beam_size == 5


# -- lifetime and threads -------------------------------------------------------------------
def test_close_is_idempotent_and_use_after_close_raises(whisper_model: Path) -> None:
    ctx = WhisperContext(whisper_model)
    ctx.close()
    ctx.close()
    assert ctx.closed
    with pytest.raises(ClosedError):
        ctx.transcribe(np.zeros(16000, dtype=np.float32))
    with WhisperContext(whisper_model) as c2:
        assert not c2.closed
    assert c2.closed


def test_concurrent_use_raises(wctx: WhisperContext) -> None:
    assert wctx._running.acquire(blocking=False)  # as if another thread were inside whisper_full
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            wctx.transcribe(np.zeros(16000, dtype=np.float32))
        with pytest.raises(RuntimeError, match="transcribing"):
            wctx.close()
    finally:
        wctx._running.release()
    assert not wctx.closed


# -- llama and whisper share one ggml ---------------------------------------------------------
def _mapped_ggml_base() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "libggml-base" in line}


def test_llama_and_whisper_in_one_process(wctx: WhisperContext, jfk: Path) -> None:
    from cyllama import LlamaContext, LlamaContextParams, LlamaModel, LlamaSampler, llama_batch_get_one

    with LlamaModel(_assets.default_model_path()) as model:
        with LlamaContext(model, LlamaContextParams(n_ctx=256, n_batch=256)) as ctx:
            vocab = model.get_vocab()
            tokens = vocab.tokenize("The capital of France is")
            sampler = LlamaSampler()
            sampler.add_greedy()
            out = []
            ctx.decode(llama_batch_get_one(tokens))
            for _ in range(4):
                tok = sampler.sample(ctx, -1)
                out.append(tok)
                ctx.decode(llama_batch_get_one([tok]))
            sampler.close()
            assert len(out) == 4 and all(0 <= t < model.n_vocab for t in out)
            # whisper runs while the llama context is alive, on the same ggml
            result = wctx.transcribe(jfk, WhisperParams(duration_ms=4000))
            assert norm(result.text).startswith("and so my fellow")
    assert wctx.transcribe(jfk).text  # and after it is freed
    import sys
    if sys.platform.startswith("linux"):
        assert len({Path(p).resolve() for p in _mapped_ggml_base()}) == 1


# -- any audio, writers, progress and cancellation -------------------------------------------------
def test_other_rates_channels_and_formats_give_the_same_words(wctx: WhisperContext, jfk: Path,
                                                             jfk_result: TranscriptionResult, tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    x, rate = sf.read(str(jfk), dtype="float32")
    stereo44 = soxr.resample(np.stack([x, x], 1), rate, 44100)
    flac = tmp_path / "jfk44.flac"
    sf.write(str(flac), stereo44, 44100)
    want = norm(jfk_result.text)
    assert norm(wctx.transcribe(flac).text) == want
    assert norm(wctx.transcribe(flac.read_bytes()).text) == want
    assert norm(wctx.transcribe(stereo44, sample_rate=44100).text) == want
    if "MP3" in sf.available_formats():
        mp3 = tmp_path / "jfk.mp3"
        sf.write(str(mp3), x, rate, format="MP3")
        assert PHRASE in norm(wctx.transcribe(mp3).text)
    tone = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 10000).astype("<i2")
    assert isinstance(wctx.transcribe(write_wav(tmp_path / "8k.wav", tone, rate=8000)).text, str)


def test_subtitle_and_json_writers(jfk_result: TranscriptionResult) -> None:
    import json
    import re

    srt = jfk_result.to_srt()
    blocks = [b for b in srt.strip().split("\n\n") if b]
    assert len(blocks) == len(jfk_result.segments)
    for i, (b, seg) in enumerate(zip(blocks, jfk_result.segments), 1):
        n, times, text = b.split("\n", 2)
        assert int(n) == i and text == seg.text
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", times)
    vtt = jfk_result.to_vtt()
    assert vtt.startswith("WEBVTT\n\n") and "00:00:00.000 --> " in vtt
    data = json.loads(jfk_result.to_json())
    assert data["text"] == jfk_result.text and len(data["segments"]) == len(jfk_result.segments)
    assert 10.5 < jfk_result.duration < 11.5 and data["duration"] == jfk_result.duration
    assert jfk_result.write("txt").splitlines() == [s.text for s in jfk_result.segments]
    with pytest.raises(ValueError, match="format"):
        jfk_result.write("doc")


def test_progress_and_cancel(wctx: WhisperContext, jfk: Path, jfk_result: TranscriptionResult) -> None:
    import threading
    import time

    seen: list[int] = []
    wctx.transcribe(jfk, on_progress=seen.append)
    assert seen and seen[-1] == 100 and seen == sorted(seen)
    long = np.tile(read_wav(jfk), 8)  # 88 s
    timer = threading.Timer(0.3, wctx.cancel)
    timer.start()
    t0 = time.monotonic()
    r = wctx.transcribe(long)
    took = time.monotonic() - t0
    timer.join()
    assert r.cancelled and took < 20
    assert wctx.transcribe(jfk).text == jfk_result.text  # still usable, and not cancelled again


def test_cli_transcribe(jfk: Path, whisper_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "jfk.srt"
    r = subprocess.run([sys.executable, "-m", "cyllama", "transcribe", str(jfk), "-m", str(whisper_model),
                        "-f", "srt", "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "00:00:00,000 -->" in out.read_text() and "fellow americans" in norm(out.read_text())
    bad = subprocess.run([sys.executable, "-m", "cyllama", "transcribe", str(tmp_path / "none.wav"), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "none.wav" in bad.stderr


def test_openai_audio_routes(jfk: Path, whisper_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    openai = pytest.importorskip("openai")
    from cyllama import _assets
    from cyllama.llama.server.embedded import EmbeddedServer

    s = EmbeddedServer(_assets.default_model_path(), port=0, n_ctx=256, n_parallel=1, whisper_model=whisper_model)
    s.start()
    try:
        api = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0)
        with open(jfk, "rb") as f:
            r = api.audio.transcriptions.create(model="whisper-1", file=f)
        assert PHRASE in norm(r.text)
        with open(jfk, "rb") as f:
            srt = api.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
        assert "00:00:00,000 -->" in srt
        with open(jfk, "rb") as f:
            v = api.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
        assert v.language == "en" and 10.5 < v.duration < 11.5 and v.segments
        with open(jfk, "rb") as f:
            vw = api.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                 timestamp_granularities=["word"])
        assert vw.words and vw.words[0].word and vw.words[-1].end <= vw.duration + 0.5
        bad = tmp_path / "bad.wav"
        bad.write_text("not audio")
        with open(bad, "rb") as f, pytest.raises(openai.BadRequestError, match="audio"):
            api.audio.transcriptions.create(model="whisper-1", file=f)
        with open(jfk, "rb") as f, pytest.raises(openai.BadRequestError, match="English-only"):
            api.audio.translations.create(model="whisper-1", file=f, prompt="x")  # tiny.en cannot translate
    finally:
        s.stop()


def test_word_timestamps_tokens_and_logprobs(wctx: WhisperContext, jfk: Path) -> None:
    import json

    r = wctx.transcribe(jfk, word_timestamps=True)
    last = 0.0
    for seg in r.segments:
        assert seg.tokens and -5 < seg.avg_logprob <= 0
        assert seg.words and norm(" ".join(w.word for w in seg.words)) == norm(seg.text)
        for w in seg.words:
            assert seg.start <= w.start <= w.end <= seg.end and w.start >= last - 1e-6
            assert 0 < w.probability <= 1
            last = w.start
    data = json.loads(r.to_json())
    assert data["segments"][0]["words"][0]["word"] == r.segments[0].words[0].word
    plain = wctx.transcribe(jfk)
    assert plain.segments[0].words is None and plain.segments[0].tokens == r.segments[0].tokens


def test_transcribe_iter_yields_segments_as_they_come(wctx: WhisperContext, jfk: Path,
                                                      jfk_result: TranscriptionResult) -> None:
    segs = list(wctx.transcribe_iter(jfk))
    assert [(s.start, s.end, s.text) for s in segs] == [(s.start, s.end, s.text) for s in jfk_result.segments]
    it = wctx.transcribe_iter(np.tile(read_wav(jfk), 6))
    first = next(it)
    assert first.text
    it.close()  # leaving early cancels the rest; the context is free again
    assert wctx.transcribe(jfk).text == jfk_result.text
    with pytest.raises(ValueError, match="empty"):
        next(wctx.transcribe_iter(np.zeros(0, dtype=np.float32)))


def test_audio_routes_transcribe_concurrent_requests_on_states_of_one_model(jfk: Path, whisper_model: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    import concurrent.futures as cf

    import requests

    from cyllama import _assets
    from cyllama.llama.server.embedded import EmbeddedServer

    data = jfk.read_bytes()
    with EmbeddedServer(_assets.default_model_path(), port=0, n_ctx=256, n_parallel=2,
                        whisper_model=whisper_model) as s:
        def one(_: int) -> str:
            r = requests.post(s.base_url + "/v1/audio/transcriptions", files={"file": ("jfk.wav", data)},
                              data={"model": "whisper-1"}, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["text"]

        with cf.ThreadPoolExecutor(4) as ex:
            texts = list(ex.map(one, range(4)))
        svc = s.service
        assert all(PHRASE in norm(t) for t in texts)
        assert 1 <= svc._whisper_made <= 2 and len(svc._whisper_idle) == svc._whisper_made  # all back in the pool

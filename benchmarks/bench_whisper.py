#!/usr/bin/env python3
"""Whisper transcription: our ``WhisperContext.transcribe`` vs whisper.cpp's ``whisper-cli``.

Same library, model (default: whisper tiny.en, made on first use), audio (whisper.cpp's jfk.wav),
threads and decoding, for greedy decoding (``-bs 1``) and beam search with 5 beams (``-bs 5``),
optionally with Silero VAD (--vad). Runs are interleaved (the order rotates each repeat) and
repeated (--repeat); medians are printed, with the median of the per-repeat ratios ours / theirs
(below 1: we are faster).

What is timed: for us, one ``transcribe(path)`` call on a fresh decoding state of a loaded model
(reading the audio, mel, encoder, decoder); for whisper-cli, its own "total time" minus its "load
time" (the same work after the model and its state are made; process start and model load are
left out). A fresh state each run, as whisper-cli's fresh process: a temperature fallback samples
from a generator whisper.cpp keeps per state, so only fresh states give the same transcript each
time. Both transcripts are compared too: they should be identical.

    python benchmarks/bench_whisper.py [--model PATH] [--audio PATH] [--threads 2] [--repeat 5] [--vad]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402
from cyllama.whisper import WhisperContext, default_model_path, vad_model_path  # noqa: E402

med = statistics.median
_TOTAL = re.compile(r"total time =\s+([\d.]+) ms")
_LOAD = re.compile(r"load time =\s+([\d.]+) ms")
_LINE = re.compile(r"^\[[\d:.]+ --> [\d:.]+\]\s+(.*)$")


def cli_run(model: Path, audio: Path, threads: int, beam: int, vad: Path | None) -> tuple[float, str]:
    """whisper-cli's seconds after loading the model, and its transcript."""
    args = [str(lib_dir() / "whisper-cli"), "-m", str(model), "-f", str(audio), "-t", str(threads), "-bs", str(beam)]
    if vad is not None:
        args += ["--vad", "-vm", str(vad)]
    p = subprocess.run(args, capture_output=True, text=True, errors="replace")
    total, load = _TOTAL.search(p.stderr), _LOAD.search(p.stderr)
    if p.returncode != 0 or total is None or load is None:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"whisper-cli failed (rc {p.returncode}):\n{tail}")
    text = " ".join(m.group(1).strip() for line in p.stdout.splitlines() if (m := _LINE.match(line.strip())))
    return (float(total.group(1)) - float(load.group(1))) / 1000, text


def ours_run(ctx: WhisperContext, audio: Path, threads: int, beam: int, vad: Path | None) -> tuple[float, str]:
    with ctx.new_state() as st:
        t0 = time.perf_counter()
        r = st.transcribe(audio, n_threads=threads, beam_size=beam, vad=vad is not None, vad_model_path=vad)
        dt = time.perf_counter() - t0
    return dt, " ".join(s.text for s in r.segments)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="whisper ggml model (default: tiny.en)")
    ap.add_argument("--audio", type=Path, help="audio file (default: whisper.cpp's samples/jfk.wav)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vad", action="store_true", help="with Silero VAD (both sides)")
    args = ap.parse_args()
    if not (lib_dir() / "whisper-cli").exists():
        print("whisper-cli is not built (python build_lib.py)", file=sys.stderr)
        return 1
    model = args.model or default_model_path()
    audio = args.audio or _assets.speech_sample_path()
    vad = vad_model_path() if args.vad else None
    print(f"model {model.name}, audio {audio.name}, {args.threads} threads, {args.repeat} repeats"
          f"{', Silero VAD' if vad else ''}")
    with WhisperContext(model) as ctx:
        ours_run(ctx, audio, args.threads, 1, vad)  # warm-up (first graph allocations)
        for beam, name in ((1, "greedy"), (5, "beam 5")):
            times: dict[str, list[float]] = {"ours": [], "whisper-cli": []}
            texts: dict[str, str] = {}
            ratios = []
            for rep in range(args.repeat):
                order = ("ours", "whisper-cli") if rep % 2 == 0 else ("whisper-cli", "ours")
                got = {}
                for who in order:
                    run = ours_run if who == "ours" else None
                    dt, text = run(ctx, audio, args.threads, beam, vad) if run else \
                        cli_run(model, audio, args.threads, beam, vad)
                    got[who] = dt
                    times[who].append(dt)
                    texts[who] = text
                ratios.append(got["ours"] / got["whisper-cli"])
            same = "identical" if texts["ours"] == texts["whisper-cli"] else \
                f"DIFFER:\n    ours: {texts['ours']}\n    cli:  {texts['whisper-cli']}"
            print(f"{name:7}  ours {med(times['ours']):.3f} s   whisper-cli {med(times['whisper-cli']):.3f} s   "
                  f"median ratio ours/cli {med(ratios):.3f}   transcripts {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

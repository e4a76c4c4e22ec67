#!/usr/bin/env python3
"""Multimodal: one image question end to end, ours vs llama.cpp's ``llama-mtmd-cli``.

Each run loads the model and projector, encodes the image, evaluates the prompt and generates
``--n-gen`` greedy tokens, in a fresh process for both (so both pay process start and model load;
ours also pays the Python interpreter and imports). Runs are interleaved and repeated; medians
and the ratio (theirs / ours wall time, target >= 0.95) are printed.

With ``CYLLAMA_BENCH_VLM=MODEL.gguf:MMPROJ.gguf`` (or ``--model/--mmproj``) a real vision model is
measured; without, the default text model with a tiny random projector (built with ``gguf``) checks
the path and the fixed costs.

    python benchmarks/bench_multimodal.py [--model M --mmproj P] [--image FILE] [--n-gen 64]
        [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cyllama import _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402

PROMPT = "Describe this image in detail."
OURS = """
import sys, time
t = time.perf_counter()
from cyllama import LLM
m, p, img, n, th = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with LLM(m, mmproj=p, temperature=0, max_tokens=n, n_threads=th, repeat_penalty=1.0, ignore_eos=True) as llm:
    out = llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}},
                                                 {"type": "text", "text": %r}]}])
print("TOKENS", llm.last_stats.generated_tokens, "SECONDS", time.perf_counter() - t)
""" % PROMPT


def _inputs(args: argparse.Namespace, tmp: Path) -> tuple[str, str, str, str]:
    spec = os.environ.get("CYLLAMA_BENCH_VLM", "")
    model, mmproj = args.model, args.mmproj
    if not (model and mmproj) and ":" in spec:
        model, mmproj = spec.split(":", 1)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_mmproj import make_mmproj, write_png  # noqa: E402

    import numpy as np

    image = args.image
    if image is None:
        y, x = np.mgrid[0:336, 0:336]
        image = write_png(tmp / "bench.png", np.stack([x % 256, y % 256, (x * y) % 256], -1))
    if model and mmproj:
        return model, mmproj, image, "real model"
    model = str(_assets.default_model_path())
    return model, make_mmproj(tmp / "tiny-mmproj.gguf", 576), image, "default model + tiny random projector"


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-1500:]}")
    return wall, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--mmproj")
    ap.add_argument("--image")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cli = lib_dir() / "llama-mtmd-cli"
    if not cli.exists():
        print("llama-mtmd-cli is not built (python build_lib.py)")
        return 1
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir()), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as d:
        model, mmproj, image, what = _inputs(args, Path(d))
        print(f"bench_multimodal: {what}; {args.n_gen} tokens, {args.threads} threads, {args.repeat} runs each")
        native_cmd = [str(cli), "-m", model, "--mmproj", mmproj, "--image", image, "-p", PROMPT, "-n",
                      str(args.n_gen), "--temp", "0", "-t", str(args.threads), "--ignore-eos", "--no-warmup"]
        ours_cmd = [sys.executable, "-c", OURS, model, mmproj, image, str(args.n_gen), str(args.threads)]
        theirs, ours, inside = [], [], []
        for _ in range(args.repeat):
            theirs.append(_time(native_cmd, env)[0])
            wall, out = _time(ours_cmd, env)
            ours.append(wall)
            inside.append(float(out.split("SECONDS")[-1]))
        mt, mo, mi = statistics.median(theirs), statistics.median(ours), statistics.median(inside)
        print(f"  llama-mtmd-cli   median {mt:.2f} s  (min {min(theirs):.2f}, max {max(theirs):.2f})")
        print(f"  cyllama          median {mo:.2f} s  (min {min(ours):.2f}, max {max(ours):.2f}); "
              f"{mi:.2f} s inside the process")
        print(f"  ratio theirs/ours: {mt / mo:.3f} wall, {mt / mi:.3f} without our interpreter start "
              "(target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

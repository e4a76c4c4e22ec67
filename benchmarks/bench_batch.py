#!/usr/bin/env python3
"""Batch throughput: ``BatchGenerator`` on 8 prompts vs ``llama-batched-bench`` with 8 parallel
sequences (same model, library, prompt and generation lengths), and vs 8 sequential ``LLM`` calls.

Interleaved and repeated; prints medians and ratios of aggregate tokens/s (prompt + generated
tokens over wall time, as llama-batched-bench counts them):

* BatchGenerator / llama-batched-bench   (target >= 0.95)
* BatchGenerator / 8 sequential LLM calls (target >= 1.7)

    python benchmarks/bench_batch.py [--model PATH] [--threads 2] [--npp 32] [--ntg 64] [--npl 8] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM, BatchGenerator, GenerationConfig, _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def native(model: Path, threads: int, npp: int, ntg: int, npl: int) -> float:
    out = subprocess.run([str(lib_dir() / "llama-batched-bench"), "-m", str(model), "-c", str((npp + ntg) * npl + 64),
                          "-b", "512", "-ub", "512", "-npp", str(npp), "-ntg", str(ntg), "-npl", str(npl),
                          "-t", str(threads), "--output-format", "jsonl"],
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[-1]["speed"])


def make_prompts(llm: LLM, n: int, npp: int) -> list[str]:
    prompts = []
    for i in range(n):
        words: list[str] = []
        k = i
        while len(llm.tokenize(" ".join(words))) < npp:
            words.append(WORDS[k % len(WORDS)])
            k += 3 + i
        prompts.append(" ".join(words))
    return prompts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--npp", type=int, default=32)
    ap.add_argument("--ntg", type=int, default=64)
    ap.add_argument("--npl", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model_path = args.model or _assets.default_model_path()
    cfg = GenerationConfig(temperature=0.0, repeat_penalty=1.0, max_tokens=args.ntg, ignore_eos=True,
                           n_threads=args.threads)
    llm = LLM(model_path, cfg, n_ctx=args.npp + args.ntg + 64)
    prompts = make_prompts(llm, args.npl, args.npp)
    n_prompt = sum(len(llm.tokenize(p)) for p in prompts)
    total = n_prompt + args.npl * args.ntg
    gen = BatchGenerator(model_path, batch_size=args.npl, n_ctx=args.npp + args.ntg + 64, n_threads=args.threads)
    gen.generate_batch(prompts[:2], cfg.replace(max_tokens=8))  # warm-up

    def ours() -> float:
        t0 = time.perf_counter()
        outs = gen.generate_batch(prompts, cfg)
        dt = time.perf_counter() - t0
        assert len(outs) == args.npl
        return total / dt

    def sequential() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            llm.reset()
            llm(p)
        return total / (time.perf_counter() - t0)

    b, n, s = [], [], []
    for rep in range(args.reps):
        order = ("native", "ours", "seq") if rep % 2 == 0 else ("seq", "ours", "native")
        for who in order:
            if who == "native":
                n.append(native(model_path, args.threads, args.npp, args.ntg, args.npl))
            elif who == "ours":
                b.append(ours())
            else:
                s.append(sequential())
    med = statistics.median
    print(f"model: {model_path.name}, threads: {args.threads}, {args.npl} sequences x ({args.npp} prompt + "
          f"{args.ntg} generated) tokens, reps: {args.reps} (medians of aggregate tokens/s)")
    print(f"BatchGenerator {med(b):8.1f} tok/s   llama-batched-bench {med(n):8.1f} tok/s   "
          f"ratio {med(b) / med(n):.3f}  (target >= 0.95)")
    print(f"BatchGenerator {med(b):8.1f} tok/s   sequential LLM      {med(s):8.1f} tok/s   "
          f"speed-up {med(b) / med(s):.2f}x  (target >= 1.7)")
    gen.close()
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

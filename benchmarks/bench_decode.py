#!/usr/bin/env python3
"""Core-class decode speed vs llama-bench, same library, same model, same threads.

Runs, interleaved and repeated, (a) llama-bench's tg (token generation) and pp (prompt
processing) tests and (b) the same work through cyllama's core classes: a decode + greedy
sampling loop over single-token batches, and one prompt batch. Prints medians and the ratio
cyllama / llama-bench (target for tg: >= 0.97, the issue-17 target for LLM streaming).

    python benchmarks/bench_decode.py [--model PATH] [--threads N] [--n-gen 128] [--n-prompt 512] [--reps 5]
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

from cyllama import LlamaBatch, LlamaContext, LlamaContextParams, LlamaModel, LlamaSampler, _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402
from cyllama.llama import default_n_threads  # noqa: E402


def llama_bench(model: Path, threads: int, n_prompt: int, n_gen: int) -> float:
    exe = lib_dir() / "llama-bench"
    out = subprocess.run([str(exe), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
                          "-r", "1", "-o", "json"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ours_tg(ctx: LlamaContext, n_gen: int, bos: int) -> float:
    ctx.kv_cache_clear()
    batch = LlamaBatch(1, 0, 1)
    sampler = LlamaSampler().add_greedy()
    batch.add(bos, 0, (0,), True)
    t0 = time.perf_counter()
    ctx.decode(batch)
    for pos in range(1, n_gen):
        tok = sampler.sample(ctx, -1)
        batch.clear()
        batch.add(tok, pos, (0,), True)
        ctx.decode(batch)
    return n_gen / (time.perf_counter() - t0)


def ours_pp(ctx: LlamaContext, n_prompt: int) -> float:
    ctx.kv_cache_clear()
    batch = LlamaBatch(n_prompt, 0, 1)
    batch.add_sequence([(i * 7919) % 40000 + 100 for i in range(n_prompt)], 0, 0)
    t0 = time.perf_counter()
    ctx.decode(batch)
    ctx.synchronize()
    return n_prompt / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=default_n_threads())
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    model_path = args.model or _assets.default_model_path()

    model = LlamaModel(model_path)
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=args.n_prompt + args.n_gen + 16, n_batch=args.n_prompt,
                                                 n_ubatch=args.n_prompt, n_threads=args.threads,
                                                 n_threads_batch=args.threads))
    bos = model.get_vocab().bos
    ours_tg(ctx, 16, bos)  # warm-up
    ours_pp(ctx, args.n_prompt)
    tg_ours, tg_native, pp_ours, pp_native = [], [], [], []
    for rep in range(args.reps):
        # interleave: native, ours, ours, native alternately to spread machine noise evenly
        order = ("native", "ours") if rep % 2 == 0 else ("ours", "native")
        for who in order:
            if who == "native":
                tg_native.append(llama_bench(model_path, args.threads, 0, args.n_gen))
                pp_native.append(llama_bench(model_path, args.threads, args.n_prompt, 0))
            else:
                tg_ours.append(ours_tg(ctx, args.n_gen, bos))
                pp_ours.append(ours_pp(ctx, args.n_prompt))
    med = statistics.median
    print(f"model: {model_path.name}, threads: {args.threads}, reps: {args.reps} (medians)")
    print(f"tg{args.n_gen}:  cyllama {med(tg_ours):8.1f} tok/s   llama-bench {med(tg_native):8.1f} tok/s   "
          f"ratio {med(tg_ours) / med(tg_native):.3f}  (target >= 0.97)")
    print(f"pp{args.n_prompt}: cyllama {med(pp_ours):8.1f} tok/s   llama-bench {med(pp_native):8.1f} tok/s   "
          f"ratio {med(pp_ours) / med(pp_native):.3f}")
    ctx.close()
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""High-level generation speed (``LLM``) vs llama-bench, same library, model and threads.

Interleaved and repeated; prints medians and ratios:

* tg: ``LLM`` streaming N tokens greedily (text, stop checks and all) / llama-bench tg  (target >= 0.97)
* pp: ``LLM`` evaluating a 512-token prompt (no cache reuse) / llama-bench pp512          (target >= 0.97)
* time to first token for that prompt
* when llama-cpp-python is installed: our tokens/s / its tokens/s for the same generation (target >= 1.1)

    python benchmarks/bench_generate.py [--model PATH] [--threads 2] [--n-gen 256] [--n-prompt 512] [--reps 5]
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

from cyllama import LLM, _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402


def llama_bench(model: Path, threads: int, n_prompt: int, n_gen: int) -> float:
    exe = lib_dir() / "llama-bench"
    out = subprocess.run([str(exe), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
                          "-r", "1", "-o", "json"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ours_tg(llm: LLM, n_gen: int) -> float:
    llm.reset()
    n = 0
    for chunk in llm.stream("Once upon a time", max_tokens=n_gen):
        n += chunk.token is not None
    st = llm.last_stats
    assert st.generated_tokens == n_gen, st
    return st.tokens_per_second


def ours_pp(llm: LLM, tokens: list[int]) -> tuple[float, float]:
    llm.reset()
    llm(tokens, max_tokens=1)
    st = llm.last_stats
    return st.prompt_tokens_per_second, st.time_to_first_token


def llama_cpp_python_tg(model: Path, threads: int, n_gen: int) -> float | None:
    try:
        from llama_cpp import Llama  # type: ignore[import-not-found]
    except ImportError:
        return None
    llm = Llama(str(model), n_ctx=n_gen + 64, n_threads=threads, n_threads_batch=threads, verbose=False)
    t0 = time.perf_counter()
    out = llm("Once upon a time", max_tokens=n_gen, temperature=0.0, repeat_penalty=1.0, top_k=1)
    dt = time.perf_counter() - t0
    return out["usage"]["completion_tokens"] / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=256)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    model_path = args.model or _assets.default_model_path()

    llm = LLM(model_path, temperature=0.0, repeat_penalty=1.0, ignore_eos=True, n_threads=args.threads,
              n_ctx=args.n_prompt + args.n_gen + 16, n_batch=args.n_prompt)
    vocab = llm.vocab
    prompt = [vocab.bos] + [(i * 7919) % 40000 + 100 for i in range(args.n_prompt - 1)]
    ours_tg(llm, 16)  # warm-up
    ours_pp(llm, prompt)
    tg_o, tg_n, pp_o, pp_n, ttft, lcp = [], [], [], [], [], []
    for rep in range(args.reps):
        order = ("native", "ours") if rep % 2 == 0 else ("ours", "native")
        for who in order:
            if who == "native":
                tg_n.append(llama_bench(model_path, args.threads, 0, args.n_gen))
                pp_n.append(llama_bench(model_path, args.threads, args.n_prompt, 0))
            else:
                tg_o.append(ours_tg(llm, args.n_gen))
                pps, t = ours_pp(llm, prompt)
                pp_o.append(pps)
                ttft.append(t)
        r = llama_cpp_python_tg(model_path, args.threads, args.n_gen)
        if r is not None:
            lcp.append(r)
    med = statistics.median
    print(f"model: {model_path.name}, threads: {args.threads}, reps: {args.reps} (medians)")
    print(f"tg{args.n_gen}: LLM {med(tg_o):8.1f} tok/s   llama-bench {med(tg_n):8.1f} tok/s   "
          f"ratio {med(tg_o) / med(tg_n):.3f}  (target >= 0.97)")
    print(f"pp{args.n_prompt}: LLM {med(pp_o):8.1f} tok/s   llama-bench {med(pp_n):8.1f} tok/s   "
          f"ratio {med(pp_o) / med(pp_n):.3f}  (target >= 0.97)")
    print(f"time to first token ({args.n_prompt}-token prompt): {med(ttft) * 1000:.1f} ms")
    if lcp:
        print(f"llama-cpp-python tg{args.n_gen}: {med(lcp):8.1f} tok/s   ratio LLM / llama-cpp-python "
              f"{med(tg_o) / med(lcp):.3f}  (target >= 1.1)")
    else:
        print("llama-cpp-python not installed: comparison skipped")
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Speculative decoding: what prompt lookup and a draft model buy, and how close we are to llama.cpp.

Three sections, each interleaved and repeated (--repeat, medians printed), same library, model
and threads for us and the native tools:

1. Prompt lookup on an input-grounded task (default model, SmolLM2-135M-Instruct): the chat prompt
   holds ~1,500 tokens of a real source file (cyllama/_generation.py) and asks for it back with one
   function renamed. Greedy ``LLM.stream`` plain vs ``prompt_lookup_num_tokens=N``:
   tokens/s speed-up (target >= 1.5) and whether the greedy tokens are identical. Also
   ``llama-lookup`` on the same templated prompt text: our lookup tokens/s / its tokens/s.
2. Draft model: Qwen2.5-Coder-0.5B drafting for Qwen2.5-Coder-1.5B on a code-writing task.
   Target alone vs target + draft in ``LLM``, and ours vs ``llama-speculative-simple`` on the
   same pair and prompt (target >= 0.95). The pair is 1.6 GB: the section runs only with
   CYLLAMA_BENCH_BIG=1 (models from ``cyllama._assets.fetch_split``), or with
   ``--target PATH --draft PATH`` for any same-vocabulary pair (the default model as both
   smoke-tests the section).
3. Server engine, 8 concurrent free-form requests (128 tokens, greedy): ``Engine(lookup=0)`` vs
   ``Engine(lookup=N)``, aggregate tokens/s ratio on/off (target >= 0.95: lookup must not cost
   throughput where it has little to copy).

Native tools are run with --no-escape (they expand \\n, \\t, \\" ... in -p text by default, which
would change a code prompt) and with their timings' "decoded N tokens ... t/s" line; like ours,
that rate excludes prompt evaluation. They stop when they have *more* than -n tokens, so they may
generate a few tokens past --n-gen; rates stay comparable.

    python benchmarks/bench_speculative.py [--model PATH] [--threads 2] [--n-gen 256] [--repeat 3]
        [--lookup 10] [--target PATH --draft PATH] [--sections 1,2,3] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM, Engine, GenerationConfig, SpeculativeParams, _assets  # noqa: E402
from cyllama._ffi import lib_dir  # noqa: E402

CODE_FILE = Path(_assets.__file__).resolve().parent / "_generation.py"  # a real source file of ours
RENAME = ("common_prefix", "shared_prefix_length")  # defined near the top of CODE_FILE
CODE_TASK = ("Write a Python module implementing an LRU cache class with get, put, delete and resize "
             "methods, full type hints and docstrings, followed by unittest test cases for every method.")
FREE_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how photosynthesis works to a ten-year-old.",
    "What are the pros and cons of remote work? Answer in a few paragraphs.",
    "Describe a perfect autumn day in the mountains.",
    "Give me advice for learning to play the guitar as an adult.",
    "Write a letter from a cat to its owner complaining about the new dog.",
    "Summarize the history of the bicycle.",
    "Plan a three-day trip to a city you like and explain your choices.",
]
med = statistics.median

_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")
_ENCODED = re.compile(r"encoded\s+(\d+) tokens")
_ACCEPT = re.compile(r"accept\s+=\s+([\d.]+)%")


# -- helpers ---------------------------------------------------------------------------------
def native(tool: str, args: list[str]) -> dict[str, float]:
    """Runs a llama.cpp tool; returns decoded tokens, t/s, prompt tokens and acceptance (0..1)."""
    exe = lib_dir() / tool
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, errors="replace")
    m = _DECODED.search(p.stderr)
    if p.returncode != 0 or m is None:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{tool} failed (rc {p.returncode}):\n{tail}")
    enc, acc = _ENCODED.search(p.stderr), _ACCEPT.search(p.stderr)
    return {"tokens": int(m.group(1)), "tps": float(m.group(3)),
            "prompt_tokens": int(enc.group(1)) if enc else -1,
            "accept": float(acc.group(1)) / 100 if acc else float("nan")}


def common_args(model: Path, prompt: str, n_gen: int, n_ctx: int, threads: int) -> list[str]:
    return ["-m", str(model), "-p", prompt, "--no-escape", "-n", str(n_gen), "--temp", "0", "--top-k", "1",
            "--seed", "42", "-c", str(n_ctx), "-t", str(threads), "-tb", str(threads)]


def ours(llm: LLM, tokens: list[int], **kw) -> tuple[float, list[int], float]:
    """One fresh greedy generation (KV cache cleared): tokens/s, the tokens, acceptance rate."""
    llm.reset()
    toks = [c.token for c in llm.stream(tokens, **kw) if c.token is not None]
    st = llm.last_stats
    assert st is not None and st.generated_tokens == len(toks), st
    return st.tokens_per_second, toks, st.acceptance_rate


def same(a: list[int], b: list[int]) -> str:
    if a == b:
        return f"identical ({len(a)} tokens)"
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    # batch-shape rounding may flip near-tied greedy picks (see tests/test_speculative.py)
    return f"DIFFER at token {i} (lengths {len(a)} / {len(b)}; a near-tie flip, or a bug)"


def rotations(names: tuple[str, ...], rep: int) -> tuple[str, ...]:
    k = rep % len(names)
    return names[k:] + names[:k]


def ctx_for(n_prompt: int, n_gen: int, extra: int = 64) -> int:
    return -(-(n_prompt + n_gen + extra) // 256) * 256


# -- 1: prompt lookup ------------------------------------------------------------------------
def code_messages(llm: LLM, n_code: int) -> list[dict[str, str]]:
    """The rename task over the first ~n_code tokens of CODE_FILE (cut at a line end)."""
    lines, kept, n = CODE_FILE.read_text().splitlines(keepends=True), [], 0
    for line in lines:
        n += len(llm.tokenize(line, add_bos=False))
        if n > n_code and any(f"def {RENAME[0]}(" in k for k in kept):
            break
        kept.append(line)
    code = "".join(kept)
    return [{"role": "user", "content":
             f"Repeat the following Python code exactly, changing only one thing: rename the function "
             f"`{RENAME[0]}` to `{RENAME[1]}`, everywhere it appears. Output only the code.\n\n"
             f"```python\n{code}```"}]


def section_lookup(args: argparse.Namespace, model: Path) -> None:
    print(f"\n== 1. prompt lookup (N={args.lookup}) on a code-rename task: {model.name}")
    llm = LLM(model, temperature=0.0, repeat_penalty=1.0, max_tokens=args.n_gen, n_threads=args.threads,
              n_threads_batch=args.threads)
    messages = code_messages(llm, args.n_code)
    tokens = llm._chat_tokens(messages, None, {})
    text = llm.format_chat(messages)
    n_ctx = ctx_for(len(tokens), args.n_gen + args.lookup)
    llm.config = llm.config.replace(n_ctx=n_ctx)  # one context size for every run, as the native tool's -c
    print(f"prompt: {len(tokens)} tokens ({CODE_FILE.name}, rename {RENAME[0]} -> {RENAME[1]}), "
          f"n_gen {args.n_gen}, n_ctx {n_ctx}")
    ours(llm, tokens[:64], max_tokens=8)  # warm-up
    tps: dict[str, list[float]] = {"plain": [], "lookup": [], "llama-lookup": []}
    out: dict[str, list[int]] = {}
    acc, nat_acc, nat_info = [], [], {}
    for rep in range(args.repeat):
        for who in rotations(tuple(tps), rep):
            if who == "plain":
                r, out["plain"], _ = ours(llm, tokens)
            elif who == "lookup":
                r, out["lookup"], a = ours(llm, tokens, prompt_lookup_num_tokens=args.lookup)
                acc.append(a)
            else:
                nat_info = native("llama-lookup", common_args(model, text, args.n_gen, n_ctx, args.threads)
                                  + ["--spec-draft-n-max", str(args.lookup)])
                r = nat_info["tps"]
                nat_acc.append(nat_info["accept"])
            tps[who].append(r)
    llm.close()
    p, lk, nt = med(tps["plain"]), med(tps["lookup"]), med(tps["llama-lookup"])
    print(f"plain greedy          {p:8.1f} tok/s")
    print(f"prompt lookup         {lk:8.1f} tok/s   acceptance {med(acc):.0%}")
    print(f"llama-lookup          {nt:8.1f} tok/s   acceptance {med(nat_acc):.0%}   "
          f"({nat_info['tokens']} tokens decoded, prompt {nat_info['prompt_tokens']} tokens"
          f"{'' if nat_info['prompt_tokens'] == len(tokens) else ' -- NOT the same prompt tokens as ours'})")
    cost = batch_cost(model, args.lookup + 1, args.threads)
    print(f"llama-bench: a batch of {args.lookup + 1} tokens costs {cost:.1f} one-token decodes here, so drafting "
          f"can gain at most {(args.lookup + 1) / cost:.1f}x")
    print(f"speed-up lookup / plain: {lk / p:.2f}x  (target >= 1.5)")
    print(f"greedy outputs plain vs lookup: {same(out['plain'], out['lookup'])}")
    print(f"ratio ours (lookup) / llama-lookup: {lk / nt:.3f}  (llama-lookup also drafts from n-grams of its output)")


# -- 2: draft model --------------------------------------------------------------------------
def qwen_pair() -> tuple[Path, Path] | None:
    """(target, draft) = (Qwen2.5-Coder-1.5B, Qwen2.5-Coder-0.5B), fetched by ``_assets.fetch_split``,
    or None (with a message) unless CYLLAMA_BENCH_BIG=1 and that helper exists."""
    if os.environ.get("CYLLAMA_BENCH_BIG") != "1":
        print("skipped: the Qwen2.5-Coder pair is 1.6 GB; set CYLLAMA_BENCH_BIG=1, or pass --target and --draft")
        return None
    fetch_split = getattr(_assets, "fetch_split", None)
    if fetch_split is None:
        print("skipped: cyllama._assets.fetch_split does not exist yet; pass --target and --draft")
        return None
    return Path(fetch_split("qwen2.5-coder-1.5b")), Path(fetch_split("qwen2.5-coder-0.5b"))


def qwen_draft() -> Path | None:
    """Qwen2.5-Coder-0.5B for section 1 when CYLLAMA_BENCH_BIG=1 (491 MB), else None."""
    if os.environ.get("CYLLAMA_BENCH_BIG") != "1":
        print("\n(section 1 on Qwen2.5-Coder-0.5B skipped: set CYLLAMA_BENCH_BIG=1)")
        return None
    return Path(_assets.fetch_split("qwen2.5-coder-0.5b"))


def batch_cost(model: Path, n: int, threads: int) -> float:
    """What decoding a batch of ``n`` tokens costs in single-token decodes (llama-bench pp1 vs ppN):
    the most any drafting can gain per verified batch is n over this."""
    exe = lib_dir() / "llama-bench"
    p = subprocess.run([str(exe), "-m", str(model), "-t", str(threads), "-p", f"1,{n}", "-n", "0", "-r", "3",
                        "-o", "csv"], capture_output=True, text=True, errors="replace")
    rates = {int(r["n_prompt"]): float(r["avg_ts"]) for r in csv.DictReader(p.stdout.splitlines())}
    if 1 not in rates or n not in rates:
        return float("nan")
    return (n / rates[n]) / (1 / rates[1])


def section_draft(args: argparse.Namespace) -> None:
    print(f"\n== 2. draft model (n_draft {args.n_draft}, p_min {args.p_min}) on a code task")
    if bool(args.target) != bool(args.draft):
        print("skipped: give both --target and --draft")
        return
    pair = (args.target, args.draft) if args.target else qwen_pair()
    if pair is None:
        return
    target, draft = pair
    kw = dict(temperature=0.0, repeat_penalty=1.0, max_tokens=args.n_gen, n_threads=args.threads,
              n_threads_batch=args.threads)
    alone = LLM(target, **kw)
    messages = [{"role": "user", "content": CODE_TASK}]
    tokens = alone._chat_tokens(messages, None, {})
    text = alone.format_chat(messages)
    n_ctx = ctx_for(len(tokens), args.n_gen + args.n_draft)
    alone.config = alone.config.replace(n_ctx=n_ctx)
    spec = LLM(target, n_ctx=n_ctx, draft_model=draft,
               speculative=SpeculativeParams(n_draft=args.n_draft, p_min=args.p_min), **kw)
    print(f"target {target.name}, draft {draft.name}, prompt {len(tokens)} tokens, n_gen {args.n_gen}")
    ours(alone, tokens[:16], max_tokens=8)  # warm-up
    ours(spec, tokens[:16], max_tokens=8)
    tps: dict[str, list[float]] = {"alone": [], "draft": [], "native": []}
    out: dict[str, list[int]] = {}
    acc, nat_acc, nat_info = [], [], {}
    nat_args = common_args(target, text, args.n_gen, n_ctx, args.threads) + [
        "-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", str(args.n_draft),
        "--spec-draft-p-min", str(args.p_min)]
    for rep in range(args.repeat):
        for who in rotations(tuple(tps), rep):
            if who == "alone":
                r, out["alone"], _ = ours(alone, tokens)
            elif who == "draft":
                r, out["draft"], a = ours(spec, tokens)
                acc.append(a)
            else:
                nat_info = native("llama-speculative-simple", nat_args)
                r = nat_info["tps"]
                nat_acc.append(nat_info["accept"])
            tps[who].append(r)
    alone.close()
    spec.close()
    a, d, n = med(tps["alone"]), med(tps["draft"]), med(tps["native"])
    print(f"target alone              {a:8.1f} tok/s")
    print(f"target + draft (LLM)      {d:8.1f} tok/s   acceptance {med(acc):.0%}")
    print(f"llama-speculative-simple  {n:8.1f} tok/s   acceptance {med(nat_acc):.0%}   "
          f"({nat_info['tokens']} tokens decoded, prompt {nat_info['prompt_tokens']} tokens"
          f"{'' if nat_info['prompt_tokens'] == len(tokens) else ' -- NOT the same prompt tokens as ours'})")
    print(f"speed-up draft / alone: {d / a:.2f}x")
    print(f"greedy outputs alone vs draft: {same(out['alone'], out['draft'])}")
    print(f"ratio ours / llama-speculative-simple: {d / n:.3f}  (target >= 0.95)")


# -- 3: server engine ------------------------------------------------------------------------
def engine_run(engine: Engine, prompts: list[list[int]], cfg: GenerationConfig) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    with engine.hold():  # all 8 start together
        reqs = [engine.submit(p, cfg) for p in prompts]
    for r in reqs:
        r.result(timeout=600)
    wall = time.perf_counter() - t0
    outs = [list(r.completion_tokens) for r in reqs]
    return sum(map(len, outs)) / wall, outs


def section_engine(args: argparse.Namespace, model: Path) -> None:
    print(f"\n== 3. engine, {len(FREE_PROMPTS)} concurrent free-form requests, lookup {args.lookup} vs off")
    llm = LLM(model, n_threads=args.threads)  # owns the model; used for the chat template
    prompts = [llm._chat_tokens([{"role": "user", "content": p}], None, {}) for p in FREE_PROMPTS]
    cfg = GenerationConfig(temperature=0, max_tokens=args.server_tokens, repeat_penalty=1.0)
    n_ctx = ctx_for(max(map(len, prompts)), args.server_tokens)
    engines: dict[str, Engine] = {}
    try:
        engines["off"] = Engine(llm.model, n_slots=len(prompts), n_ctx=n_ctx, n_threads=args.threads)
        try:
            engines["on"] = Engine(llm.model, n_slots=len(prompts), n_ctx=n_ctx, n_threads=args.threads,
                                   lookup=args.lookup)
        except TypeError as e:
            print(f"skipped: Engine has no lookup= parameter yet ({e})")
            return
        for e in engines.values():  # warm-up
            engine_run(e, prompts[:2], cfg.replace(max_tokens=8))
        tps: dict[str, list[float]] = {"off": [], "on": []}
        outs: dict[str, list[list[int]]] = {}
        for rep in range(args.repeat):
            for who in rotations(tuple(tps), rep):
                r, outs[who] = engine_run(engines[who], prompts, cfg)
                tps[who].append(r)
        off, on = med(tps["off"]), med(tps["on"])
        m = engines["on"].metrics
        drafted, accepted = m.get("draft_tokens_total", 0), m.get("accepted_tokens_total", 0)
        print(f"lookup off   {off:8.1f} tok/s aggregate")
        print(f"lookup on    {on:8.1f} tok/s aggregate   drafted {drafted}, accepted {accepted}"
              f"{f' ({accepted / drafted:.0%})' if drafted else ''} over all runs")
        n_same = sum(a == b for a, b in zip(outs["off"], outs["on"]))
        print(f"greedy outputs off vs on: {n_same}/{len(prompts)} identical")
        print(f"ratio on / off: {on / off:.3f}  (target >= 0.95)")
    finally:
        for e in engines.values():
            e.close()
        llm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model for sections 1 and 3 (default: SmolLM2-135M)")
    ap.add_argument("--target", type=Path, default=None, help="section 2 target (with --draft)")
    ap.add_argument("--draft", type=Path, default=None, help="section 2 draft model, same vocabulary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=256, help="tokens generated in sections 1 and 2")
    ap.add_argument("--n-code", type=int, default=1500, help="tokens of source code in the section 1 prompt")
    ap.add_argument("--server-tokens", type=int, default=128, help="tokens per request in section 3")
    ap.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens / --spec-draft-n-max")
    ap.add_argument("--n-draft", type=int, default=8)
    ap.add_argument("--p-min", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    args = ap.parse_args()
    if args.quick:
        args.n_gen, args.n_code, args.server_tokens = min(args.n_gen, 48), min(args.n_code, 300), min(args.server_tokens, 24)
    model = args.model or _assets.default_model_path()
    sections = {s.strip() for s in args.sections.split(",")}
    print(f"threads {args.threads}, repeat {args.repeat} (medians, interleaved){', quick' if args.quick else ''}")
    if "1" in sections:
        section_lookup(args, model)
        if args.model is None:  # a code model, where decoding is bound by memory, not compute
            coder = qwen_draft()
            if coder is not None:
                section_lookup(args, coder)
    if "2" in sections:
        section_draft(args)
    if "3" in sections:
        section_engine(args, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``cyllama info`` and ``cyllama generate`` (also ``python -m cyllama``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main"]

DEFAULT_PROMPT = "Explain in three sentences why the sky is blue."


def _info(args: argparse.Namespace) -> int:
    from . import __version__
    from ._ffi import build_info, lib_dir
    from .llama import available_backends, devices, ggml_backend_offload_supported, system_info

    info = build_info()
    data = {
        "cyllama": __version__,
        "python": sys.version.split()[0],
        "llama.cpp commit": info.get("llama_cpp_commit", "unknown"),
        "whisper.cpp": info.get("whisper_cpp_version", "not built"),
        "build backend": info.get("backend", "unknown"),
        "library dir": str(lib_dir()),
        "backends": available_backends(),
        "gpu offload": ggml_backend_offload_supported(),
        "devices": [f"{d['name']} ({d['type']}): {d['description']}" for d in devices()],
        "system info": system_info().strip(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:18} {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from . import _assets
    from ._generation import StreamStats, apply_chat_template, stream_text
    from .llama import LlamaContext, LlamaContextParams, LlamaModel, LlamaModelParams, LlamaSampler

    model_path = args.model or _assets.default_model_path()
    model = LlamaModel(model_path, LlamaModelParams(n_gpu_layers=args.n_gpu_layers), verbose=args.verbose)
    prompt = args.prompt
    if not args.raw and model.chat_template():
        prompt = apply_chat_template(model, [{"role": "user", "content": prompt}])
    vocab = model.get_vocab()
    tokens = vocab.tokenize(prompt, add_special=True, parse_special=True)
    n_ctx = args.n_ctx or min(model.n_ctx_train, len(tokens) + args.max_tokens + 8)
    cparams = LlamaContextParams(n_ctx=n_ctx, n_batch=min(512, max(n_ctx, 1)))
    if args.threads:
        cparams.n_threads = cparams.n_threads_batch = args.threads
    ctx = LlamaContext(model, cparams)
    sampler = LlamaSampler()
    if args.temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_penalties(64, args.repeat_penalty)
        sampler.add_top_k(40).add_top_p(0.95).add_min_p(0.05).add_temp(args.temperature).add_dist(args.seed)
    stats = StreamStats()
    if args.stream:
        for chunk in stream_text(ctx, sampler, tokens, args.max_tokens, stats):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print("".join(stream_text(ctx, sampler, tokens, args.max_tokens, stats)))
    if not args.quiet:
        print(f"\n[{model.path.name}] prompt: {stats.prompt_tokens} tokens in {stats.prompt_time * 1000:.0f} ms "
              f"({stats.prompt_tokens_per_second:.1f} tok/s) | generated: {stats.generated_tokens} tokens in "
              f"{stats.generation_time:.2f} s ({stats.tokens_per_second:.1f} tok/s) | time to first token: "
              f"{stats.time_to_first_token * 1000:.0f} ms | finish: {stats.finish_reason}", file=sys.stderr)
    ctx.close()
    model.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cyllama", description="Fast local LLM inference on llama.cpp")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, llama.cpp commit, backends and system info")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_info)
    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched on first use)")
    g.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    g.add_argument("-n", "--max-tokens", type=int, default=256)
    g.add_argument("-t", "--temperature", type=float, default=0.0)
    g.add_argument("--repeat-penalty", type=float, default=1.1)
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("-c", "--n-ctx", type=int, default=0)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("-ngl", "--n-gpu-layers", type=int, default=99)
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    g.add_argument("-q", "--quiet", action="store_true", help="no statistics line")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    g.set_defaults(fn=_generate)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_tokens", 1) <= 0:
        print("cyllama: --max-tokens must be > 0", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cyllama: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncyllama: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

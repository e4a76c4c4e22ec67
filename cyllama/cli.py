"""Command line: ``cyllama info``, ``generate``, ``chat``, ``serve``, ``rpc-server``, ``transcribe``
and ``download`` (also ``python -m cyllama``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ._errors import RpcError

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
    if getattr(args, "model", None):
        from .memory import estimate_memory_usage
        from .llama.gguf import GGUFContext

        g = GGUFContext.from_file(args.model)
        try:
            meta = {k: g.get_value(k) for k in g.keys() if not k.startswith("tokenizer.ggml.")}
        finally:
            g.close()
        data["model"] = args.model
        data["model metadata"] = {k: (v if not isinstance(v, list) or len(v) <= 8 else f"[{len(v)} values]")
                                  for k, v in meta.items() if k != "tokenizer.chat_template"}
        est = estimate_memory_usage(args.model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers)
        data["memory estimate"] = str(est)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        for k, v in data.items():
            print(f"{k:18} {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from .download import DownloadError, download_model, list_cached_models

    if args.list:
        if args.repo or args.url:
            raise ValueError("--list takes no repository or URL")
        for m in list_cached_models(args.cache_dir):
            size = f"{m['size'] / 2**20:,.1f} MiB"
            print(f"{m['user']}/{m['model']}:{m['tag']}\t{size}\t{m['path']}")
        return 0
    if (args.repo is None) == (args.url is None):
        raise ValueError("give a repository (user/model[:tag]) or --url, not both")
    try:
        path = download_model(args.repo, url=args.url, output_path=args.output, cache_dir=args.cache_dir,
                              filename=args.file, revision=args.revision, token=args.token,
                              progress=not args.quiet, force_download=args.force)
    except DownloadError as exc:
        print(f"cyllama: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _stats_line(llm, stats) -> str:
    return f"[{llm.model_path.name}] {stats}"


def _load(args: argparse.Namespace):
    from . import _assets
    from ._llm import LLM

    model_path = args.model or _assets.default_model_path()
    kw = {"temperature": args.temperature, "max_tokens": args.max_tokens, "repeat_penalty": args.repeat_penalty,
          "seed": args.seed, "n_gpu_layers": args.n_gpu_layers}
    if args.n_ctx:
        kw["n_ctx"] = args.n_ctx
    if args.threads:
        kw["n_threads"] = args.threads
    if getattr(args, "mmproj", None):
        kw["mmproj"] = args.mmproj
    return LLM(model_path, verbose=args.verbose, rpc_servers=args.rpc, tensor_split=args.tensor_split, **kw)


def _schema_arg(args: argparse.Namespace) -> dict | None:
    if not getattr(args, "json_schema", None):
        return None
    with open(args.json_schema, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.json_schema} is not valid JSON: {exc}") from None


def _generate(args: argparse.Namespace) -> int:
    schema = _schema_arg(args)
    with _load(args) as llm:
        kw = {"json_schema": schema} if schema is not None else {}
        images = getattr(args, "image", None) or []
        if images:
            if not args.mmproj:
                raise ValueError("--image needs the model's projector: --mmproj FILE")
            parts = [{"type": "image_url", "image_url": {"url": path}} for path in images]
            chunks = llm.chat_stream([{"role": "user", "content": parts + [{"type": "text", "text": args.prompt}]}],
                                     **kw)
        elif args.raw or not llm.model.chat_template():
            chunks = llm.stream(args.prompt, **kw)
        else:
            chunks = llm.chat_stream([{"role": "user", "content": args.prompt}], **kw)
        if args.stream:
            for c in chunks:
                sys.stdout.write(c.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print("".join(c.text for c in chunks))
        if not args.quiet:
            print(_stats_line(llm, llm.last_stats), file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    with _load(args) as llm:
        messages: list[dict] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        print(f"cyllama chat with {llm.model_path.name}: empty line or Ctrl-D to quit, /reset to start over",
              file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if not line.strip():
                return 0
            if line.strip() == "/reset":
                messages = messages[:1] if args.system else []
                continue
            messages.append({"role": "user", "content": line})
            parts = []
            try:
                for c in llm.chat_stream(messages):
                    parts.append(c.text)
                    sys.stdout.write(c.text)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                print("\n[interrupted]", file=sys.stderr)
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": "".join(parts)})
            if not args.quiet and llm.last_stats is not None:
                print(_stats_line(llm, llm.last_stats), file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from . import _assets

    model_path = args.model or _assets.default_model_path()
    kw = dict(n_ctx=args.n_ctx or 2048, n_gpu_layers=args.n_gpu_layers, n_parallel=args.parallel,
              n_threads=args.threads or None, api_key=args.api_key or None, max_queue=args.max_queue,
              model_alias=args.alias, cors_origins=args.cors_origin or None, lookup=args.lookup,
              mmproj=args.mmproj, allow_image_urls=args.allow_image_urls, draft_model=args.draft_model,
              draft_max=args.draft_max, whisper_model=args.whisper_model, rpc_servers=args.rpc,
              tensor_split=args.tensor_split, chat_page=not args.no_chat_page,
              max_body_bytes=int(args.max_body_mb * 1024 * 1024), queue_timeout=args.queue_timeout or None)
    if args.mongoose:
        import signal
        import threading

        from .server.mongoose_server import MongooseServer

        server = MongooseServer(model_path, args.host, args.port, **kw).start()
        print(f"cyllama: serving {server.service.model_id} with Mongoose on {server.base_url} (Ctrl-C to stop)",
              flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        server.stop()
        return 0
    from .server.embedded import start_server

    start_server(model_path, args.host, args.port, **kw)
    return 0


def _rpc_server(args: argparse.Namespace) -> int:
    from .server.rpc_server import SECURITY_WARNING, find_rpc_server_binary, is_loopback, rpc_server_command

    binary = find_rpc_server_binary()
    cmd = rpc_server_command(binary, args.host, args.port, n_threads=args.threads or None, cache=args.cache,
                             devices=args.device)
    where = "" if is_loopback(args.host) else f" (listening on {args.host}, not only this machine)"
    print(f"cyllama: WARNING{where}: {SECURITY_WARNING}", file=sys.stderr)
    print(f"cyllama: clients use rpc_servers=[\"{args.host}:{args.port}\"] or --rpc {args.host}:{args.port}; "
          "one client at a time", file=sys.stderr, flush=True)
    if os.name == "posix":
        import signal

        # ignored across exec: a client that disconnects mid-answer must not end the server (SIGPIPE)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.execv(cmd[0], cmd)  # the server replaces this process: signals reach it directly
    import subprocess

    return subprocess.call(cmd)


def _tensor_split(text: str) -> list[float]:
    """``3,1`` (llama.cpp's -ts form) as proportions."""
    try:
        return [float(x) for x in text.replace("/", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 3,1; got {text!r}") from None


def _number(text: str, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v >= 0 if zero_ok else v > 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a {'non-negative' if zero_ok else 'positive'} number, got {text!r}")
    return v


def _positive(text: str) -> float:
    return _number(text, False)


def _positive_or_zero(text: str) -> float:
    return _number(text, True)


def _multi_host(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", metavar="HOST:PORT,...", help="put the model's layers on these llama.cpp rpc-servers "
                   "(started with `cyllama rpc-server` on each machine)")
    p.add_argument("-ts", "--tensor-split", type=_tensor_split, metavar="N,N,...",
                   help="share of the layers per device: the RPC servers in order, then local GPUs (e.g. 3,1)")


def _transcribe(args: argparse.Namespace) -> int:
    from .whisper import WhisperContext, WhisperParams

    params = WhisperParams(language=args.language, translate=args.translate)
    if args.threads:
        params.n_threads = args.threads
    options = {"beam_size": args.beam_size, "best_of": args.best_of, "temperature": args.temperature,
               "no_speech_threshold": args.no_speech_threshold, "max_len": args.max_len,
               "split_on_word": args.split_on_word or None, "offset": args.offset, "duration": args.duration,
               "vad": args.vad or None, "vad_model_path": args.vad_model}
    if args.no_fallback:
        options["temperature_inc"] = 0.0
    if args.vad_threshold is not None:
        options["vad_params"] = {**params.vad_params.to_dict(), "threshold": args.vad_threshold}
    params = params.with_options(**{k: v for k, v in options.items() if v is not None})
    with WhisperContext(args.model) as w:
        bar = None
        if not args.quiet:
            try:
                from tqdm import tqdm

                bar = tqdm(total=100, unit="%", file=sys.stderr, leave=False)
            except ImportError:
                bar = None
        last = [0]

        def progress(pct: int) -> None:
            if bar is not None:
                bar.update(max(0, pct - last[0]))
                last[0] = max(last[0], pct)

        result = w.transcribe(args.audio, params, on_progress=progress, word_timestamps=args.word_timestamps)
        if bar is not None:
            bar.close()
    text = result.write(args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if not args.quiet:
        print(f"[whisper] {result.duration:.1f} s of audio, language {result.language}, "
              f"{len(result.segments)} segments", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched on first use)")
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens)
    p.add_argument("-t", "--temperature", type=float, default=0.0)
    p.add_argument("--repeat-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("-c", "--n-ctx", type=int, default=0, help="context size (default: sized to fit)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=99)
    p.add_argument("-q", "--quiet", action="store_true", help="no statistics line")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    _multi_host(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cyllama", description="Fast local LLM inference on llama.cpp")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, llama.cpp commit, backends and system info")
    p.add_argument("--json", action="store_true")
    p.add_argument("model", nargs="?", help="a GGUF model: also print its metadata and memory estimate")
    p.add_argument("-c", "--n-ctx", type=int, default=2048, help="context size for the estimate")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers offloaded, for the estimate")
    p.set_defaults(fn=_info)
    g = sub.add_parser("generate", help="generate text from a prompt")
    _common(g, 256)
    g.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    g.add_argument("--json-schema", metavar="FILE", help="constrain the output to this JSON schema")
    g.add_argument("--mmproj", metavar="FILE", help="the model's multimodal projector (for --image)")
    g.add_argument("--image", action="append", metavar="FILE", help="an image (or audio file) to ask about "
                   "(repeatable; needs --mmproj)")
    g.set_defaults(fn=_generate)
    c = sub.add_parser("chat", help="interactive chat that keeps the conversation")
    _common(c, 512)
    c.add_argument("-s", "--system", help="system prompt")
    c.set_defaults(fn=_chat)
    t = sub.add_parser("transcribe", help="speech to text with whisper.cpp (txt, srt, vtt or json)")
    t.add_argument("audio", help="an audio file (WAV; FLAC, OGG, MP3... with soundfile installed)")
    t.add_argument("-m", "--model", help="whisper ggml model (default: tiny.en, made on first use)")
    t.add_argument("-f", "--format", default="txt", choices=["txt", "srt", "vtt", "json"])
    t.add_argument("-l", "--language", default="auto", help="language code, or auto (default)")
    t.add_argument("--translate", action="store_true", help="translate to English")
    t.add_argument("--word-timestamps", action="store_true", help="times for each word (in the json format)")
    t.add_argument("-bs", "--beam-size", type=int, help="beam search with N beams (default: greedy)")
    t.add_argument("-bo", "--best-of", type=int, help="candidates sampled at a fallback temperature (default 5)")
    t.add_argument("--temperature", type=float, help="first decoding temperature (default 0)")
    t.add_argument("--no-fallback", action="store_true", help="no retries at higher temperatures")
    t.add_argument("--no-speech-threshold", type=float, help="no-speech probability threshold (default 0.6)")
    t.add_argument("-ml", "--max-len", type=int, help="longest segment in characters (default: no limit)")
    t.add_argument("-sow", "--split-on-word", action="store_true", help="with --max-len, split between words")
    t.add_argument("--offset", type=float, help="start this many seconds into the audio")
    t.add_argument("--duration", type=float, help="transcribe only this many seconds")
    t.add_argument("--vad", action="store_true", help="transcribe only the speech Silero VAD finds")
    t.add_argument("--vad-model", metavar="FILE", help="ggml Silero VAD model for --vad (default: Silero "
                   "v6.2.0, made on first use)")
    t.add_argument("--vad-threshold", type=float, help="speech probability threshold of --vad (default 0.5)")
    t.add_argument("-o", "--output", help="write to this file instead of stdout")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    t.set_defaults(fn=_transcribe)
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    s.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched on first use)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("-c", "--n-ctx", type=int, default=2048, help="context per parallel sequence")
    s.add_argument("-np", "--parallel", type=int, default=4, help="sequences decoded together (slots)")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=99)
    s.add_argument("--api-key", default=os.environ.get("CYLLAMA_API_KEY"),
                   help="require Authorization: Bearer KEY (default: $CYLLAMA_API_KEY)")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503")
    s.add_argument("--queue-timeout", type=_positive_or_zero, default=0, metavar="SECONDS",
                   help="answer 503 (with Retry-After) to a request that waited this long for a slot (0: no limit)")
    s.add_argument("--max-body-mb", type=_positive, default=32, metavar="MB",
                   help="largest request body in MiB (larger: 413; default 32)")
    s.add_argument("--alias", help="model id reported to clients")
    s.add_argument("--no-chat-page", action="store_true", help="do not serve the chat page at /")
    s.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the server (repeatable; '*' for any; off by default)")
    s.add_argument("--lookup", type=int, default=0, metavar="N",
                   help="speculative decoding by prompt lookup: draft up to N tokens per step while few "
                        "sequences share the batch (default 0: off; requests may set prompt_lookup_num_tokens)")
    s.add_argument("--mmproj", metavar="FILE", help="the model's multimodal projector: chat messages may carry "
                   "images (data: URLs) and audio")
    s.add_argument("-md", "--draft-model", metavar="FILE", help="a small model with the same vocabulary that "
                   "drafts tokens for the model to verify (speculative decoding; the output is unchanged)")
    s.add_argument("--draft-max", type=int, default=16, metavar="N", help="most tokens drafted per step (default 16)")
    s.add_argument("--whisper-model", metavar="FILE", help="a whisper ggml model: serve /v1/audio/transcriptions "
                   "and /v1/audio/translations")
    s.add_argument("--allow-image-urls", action="store_true", help="download http(s) image URLs in requests "
                   "(64 MB, 15 s limits; off by default: data: URLs only)")
    s.add_argument("--mongoose", action="store_true", help="serve with the Mongoose C event loop (cymongoose)")
    _multi_host(s)
    s.set_defaults(fn=_serve)
    d = sub.add_parser("download", help="download a GGUF model from the Hugging Face Hub (or a URL) and print its "
                       "path; --list shows the cached models")
    d.add_argument("repo", nargs="?", help="user/model[:tag], e.g. bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m "
                   "(no tag: Q4_K_M, else the first GGUF)")
    d.add_argument("-f", "--file", help="a file name or glob in the repository instead of a tag")
    d.add_argument("--url", help="download this http(s) URL instead")
    d.add_argument("-o", "--output", help="put the file here (a file path, or a folder ending in '/')")
    d.add_argument("--cache-dir", help="the Hugging Face cache to use (default: HF_HUB_CACHE, HF_HOME/hub, "
                   "~/.cache/huggingface/hub)")
    d.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    d.add_argument("--token", help="Hugging Face token (default: HF_TOKEN, or the stored login)")
    d.add_argument("--force", action="store_true", help="download again even when cached")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.add_argument("--list", action="store_true", help="list the GGUF models in the cache")
    d.set_defaults(fn=_download)
    r = sub.add_parser("rpc-server", help="lend this machine to a model loaded elsewhere (llama.cpp's rpc-server; "
                       "no authentication: loopback or a trusted private network only)")
    r.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    r.add_argument("--port", type=int, default=50052)
    r.add_argument("--cache", action="store_true", help="keep large tensors in a local file cache, so that "
                   "loading the same model again sends less")
    r.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: rpc-server's)")
    r.add_argument("-d", "--device", help="ggml devices to offer, comma-separated (default: the GPUs, else the CPU)")
    r.set_defaults(fn=_rpc_server)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_tokens", 1) <= 0:
        print("cyllama: --max-tokens must be > 0", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, PermissionError, RpcError) as exc:
        print(f"cyllama: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncyllama: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

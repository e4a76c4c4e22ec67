#!/usr/bin/env python3
"""Server throughput and latency: cyllama's embedded server vs ``llama-server --parallel 8``, same
model and library, in one run.

For 1 and 8 concurrent clients each sending 64-token completions (greedy, EOS ignored), prints
aggregate generated tokens/s and p50/p99 request latency for both servers, and the ratios of
aggregate tokens/s at 1 client (target >= 0.97) and at 8 (target >= 0.95). Servers are measured
alternately, and each configuration is repeated; medians are reported.

    python benchmarks/bench_server.py [--model PATH] [--threads 2] [--requests 24] [--reps 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import _assets  # noqa: E402
from cyllama.llama.server.embedded import EmbeddedServer  # noqa: E402
from cyllama.llama.server.launcher import ServerLauncher  # noqa: E402


def load(url: str, clients: int, n_requests: int, n_tokens: int) -> tuple[float, float, float]:
    """Returns (aggregate generated tokens/s, p50 latency s, p99 latency s)."""

    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/completions", timeout=300, json={
            "prompt": f"Request {i}: write a story about a robot.", "max_tokens": n_tokens, "temperature": 0,
            "ignore_eos": True, "n_predict": n_tokens})
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, range(n_requests)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return tokens / wall, statistics.median(lat), p99


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=24, help="requests per measurement")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model_path = args.model or _assets.default_model_path()
    ours = EmbeddedServer(model_path, port=0, n_ctx=512, n_parallel=8, n_threads=args.threads).start()
    native = ServerLauncher(model_path, port=0, n_ctx=512 * 8, n_parallel=8, n_threads=args.threads,
                            ).start()
    servers = {"cyllama": ours.base_url, "llama-server": native.base_url}
    res: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        for name, url in servers.items():  # warm-up
            load(url, 2, 2, 8)
        for rep in range(args.reps):
            for clients in (1, 8):
                names = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for name in names:
                    n = args.requests if clients > 1 else max(4, args.requests // 4)
                    res.setdefault((name, clients), []).append(load(servers[name], clients, n, args.tokens))
    finally:
        ours.stop()
        native.stop()
    med = statistics.median
    print(f"model: {model_path.name}, threads: {args.threads}, {args.tokens}-token completions, reps: {args.reps} (medians)")
    for clients in (1, 8):
        for name in servers:
            rows = res[(name, clients)]
            print(f"{clients} client(s)  {name:13} {med(r[0] for r in rows):8.1f} tok/s   "
                  f"p50 {med(r[1] for r in rows) * 1000:7.0f} ms   p99 {med(r[2] for r in rows) * 1000:7.0f} ms")
    for clients, target in ((1, 0.97), (8, 0.95)):
        ratio = med(r[0] for r in res[("cyllama", clients)]) / med(r[0] for r in res[("llama-server", clients)])
        print(f"ratio at {clients} client(s) (cyllama / llama-server): {ratio:.3f}  (target >= {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

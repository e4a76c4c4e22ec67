#!/usr/bin/env python3
"""Soak test of the embedded server: ``cyllama serve`` in its own process under mixed load for a
while (30 minutes by default), checking that it stays correct and does not leak.

Client threads send, at random: streamed chat completions, whole text completions, embeddings and
tokenizations (every one must be answered completely: 200, a finish reason, ``data: [DONE]``),
requests whose client goes away early (a stream closed after its first events, a non-streamed
request whose connection is dropped), and malformed requests (each must get a 4xx in OpenAI's
error shape). The server's resident memory is sampled throughout; its growth after a warm-up is
reported and must stay under ``--max-growth-mb``. At the end the server must be alive, idle
(every slot free, nothing queued) and still answer.

    python benchmarks/soak_server.py [--minutes 30] [--clients 8] [--model PATH] [--threads 2]

Exits 0 when every check held, 1 otherwise (the report says which).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

__all__ = ["SoakReport", "soak", "main"]

_MALFORMED: list[tuple[str, Any]] = [  # (path, JSON body) or (path, raw bytes)
    ("/v1/chat/completions", b'{"messages": ['),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}'),
    ("/v1/chat/completions", b"\xff\xfe\x00"),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 5}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 99, "logprobs": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream_options": [1]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "grammar": "root ::= ("}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "no_such_field": 1}),
    ("/v1/completions", {"prompt": [1, 2, 10**9]}),
    ("/v1/completions", {"prompt": [10**40]}),
    ("/v1/completions", {"prompt": "x", "grammar": "root ::= [\\x00]", "max_tokens": 4}),
    ("/v1/completions", {"prompt": "x", "top_k": 2**40}),
    ("/v1/embeddings", {"input": []}),
    ("/detokenize", {"tokens": ["a"]}),
]
_TOPICS = ["the sea", "a robot", "bread", "a mountain", "winter", "a library", "trains", "the moon"]


@dataclass
class SoakReport:
    """What a soak run saw. ``ok`` when every check held."""

    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # requests by kind
    failures: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds, resident MiB)
    baseline_mb: float | None = None  # after the warm-up
    growth_mb: float | None = None  # final minus baseline
    max_growth_mb: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # the server's counters at the end

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        total = sum(self.counts.values())
        out = [f"soak: {self.seconds / 60:.1f} min, {total} requests "
               f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))})"]
        if self.rss_mb:
            peak = max(m for _, m in self.rss_mb)
            out.append(f"resident memory: start {self.rss_mb[0][1]:.0f} MiB, after warm-up {self.baseline_mb or 0:.0f} "
                       f"MiB, peak {peak:.0f} MiB, end {self.rss_mb[-1][1]:.0f} MiB; growth after warm-up "
                       f"{self.growth_mb or 0:+.1f} MiB (limit {self.max_growth_mb:.0f})")
        else:
            out.append("resident memory: not measurable on this platform")
        keys = ("requests_total", "requests_finished_total", "requests_cancelled_total", "requests_failed_total",
                "client_disconnects_total", "http_errors_total", "tokens_generated_total")
        out.append("server: " + ", ".join(f"{k} {self.metrics[k]:.0f}" for k in keys if k in self.metrics))
        out.append("result: " + ("ok" if self.ok else f"{len(self.failures)} failure(s)"))
        out.extend(f"  - {f}" for f in self.failures[:20])
        return out


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (psutil when installed, else /proc), None if unknown."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("cyllama_"):
            name, value = line.split()
            out[name[len("cyllama_"):]] = float(value)
    return out


class _Client:
    """One client thread's requests; returns the kind it sent, raises AssertionError on a bad answer."""

    def __init__(self, url: str, seed: int, max_tokens: int):
        self.url, self.rng, self.max_tokens = url, random.Random(seed), max_tokens
        self.http = requests.Session()
        self.host, self.port = url.rsplit("/", 1)[1].split(":")

    def one(self) -> str:
        x = self.rng.random()
        kind, fn = next((k, f) for p, k, f in (
            (0.35, "stream", self.stream), (0.55, "complete", self.complete), (0.62, "embed", self.embed),
            (0.67, "tokenize", self.tokenize), (0.75, "cancel_stream", self.cancel_stream),
            (0.83, "cancel_request", self.cancel_request), (1.0, "malformed", self.malformed)) if x < p)
        fn()
        return kind

    def _prompt(self) -> str:
        return f"Write {self.rng.randint(1, 5)} sentences about {self.rng.choice(_TOPICS)}."

    def stream(self) -> None:
        body = {"messages": [{"role": "user", "content": self._prompt()}], "stream": True,
                "max_tokens": self.rng.randint(1, self.max_tokens), "temperature": 0.8, "seed": self.rng.randint(0, 999),
                "stream_options": {"include_usage": True}}
        with self.http.post(self.url + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
            assert r.status_code == 200, f"stream: {r.status_code} {r.text[:200]}"
            events = [line[6:] for line in r.iter_lines() if line.startswith(b"data: ")]
        assert events and events[-1] == b"[DONE]", "stream: no data: [DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks), f"stream: {chunks[-1]}"
        reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
        assert reasons and reasons[-1] in ("stop", "length"), f"stream: finish {reasons}"
        assert chunks[-1]["usage"]["completion_tokens"] <= body["max_tokens"], "stream: usage"

    def complete(self) -> None:
        n = self.rng.choice([1, 1, 1, 2])
        body = {"prompt": self._prompt(), "max_tokens": self.rng.randint(1, self.max_tokens), "n": n,
                "temperature": self.rng.choice([0, 0.7])}
        r = self.http.post(self.url + "/v1/completions", json=body, timeout=300)
        assert r.status_code == 200, f"complete: {r.status_code} {r.text[:200]}"
        out = r.json()
        assert len(out["choices"]) == n and all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
        assert 0 <= out["usage"]["completion_tokens"] <= n * body["max_tokens"], f"complete: usage {out['usage']}"

    def embed(self) -> None:
        texts = [self._prompt() for _ in range(self.rng.randint(1, 3))]
        r = self.http.post(self.url + "/v1/embeddings", json={"input": texts}, timeout=300)
        assert r.status_code == 200 and len(r.json()["data"]) == len(texts), f"embed: {r.status_code}"

    def tokenize(self) -> None:
        text = self._prompt()
        toks = self.http.post(self.url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"]
        back = self.http.post(self.url + "/detokenize", json={"tokens": toks}, timeout=60).json()["content"]
        assert back == text, "tokenize: round trip"

    def cancel_stream(self) -> None:
        body = {"prompt": self._prompt(), "max_tokens": 200, "ignore_eos": True, "stream": True}
        with requests.post(self.url + "/v1/completions", json=body, stream=True, timeout=300) as r:
            assert r.status_code == 200, f"cancel_stream: {r.status_code}"
            lines = r.iter_lines()
            for _ in range(self.rng.randint(1, 4)):
                next(lines, None)
        # leaving the block closes the connection mid-stream

    def cancel_request(self) -> None:
        body = json.dumps({"prompt": self._prompt(), "max_tokens": 200, "ignore_eos": True}).encode()
        with socket.create_connection((self.host, int(self.port)), timeout=60) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(self.rng.uniform(0.05, 0.5))

    def malformed(self) -> None:
        path, body = self.rng.choice(_MALFORMED)
        if isinstance(body, bytes):
            r = self.http.post(self.url + path, data=body, headers={"content-type": "application/json"}, timeout=300)
        else:
            r = self.http.post(self.url + path, json=body, timeout=300)
        assert 400 <= r.status_code < 500, f"malformed {path}: {r.status_code} {r.text[:200]}"
        err = r.json()["error"]
        assert err["message"] and err["type"], f"malformed {path}: {r.text[:200]}"


def _start_server(model: Path, threads: int, slots: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cyllama", "serve", "-m", str(model), "--port", str(port),
                             "-c", "512", "-np", str(slots), "--threads", str(threads), "--max-queue", "256",
                             "--max-body-mb", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)


def soak(minutes: float = 30.0, clients: int = 8, model: Path | None = None, threads: int = 2, slots: int = 4,
         max_tokens: int = 48, max_growth_mb: float = 64.0, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> SoakReport:
    """Runs the soak and returns its report (see the module's doc)."""
    from cyllama import _assets

    report = SoakReport(max_growth_mb=max_growth_mb)
    proc, url = _start_server(model or _assets.default_model_path(), threads, slots)
    lock = threading.Lock()
    t0 = time.monotonic()
    end = t0 + minutes * 60
    warm = t0 + min(max(10.0, minutes * 60 * 0.2), 300.0)  # memory baseline after this

    def worker(i: int) -> None:
        client = _Client(url, seed * 1000 + i, max_tokens)
        while time.monotonic() < end and proc.poll() is None:
            try:
                kind = client.one()
            except Exception as exc:  # a wrong answer, a timeout, a refused connection
                with lock:
                    report.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                    kind = "failed"
            with lock:
                report.counts[kind] = report.counts.get(kind, 0) + 1

    try:
        with cf.ThreadPoolExecutor(clients) as ex:
            futures = [ex.submit(worker, i) for i in range(clients)]
            next_report = t0
            while not all(f.done() for f in futures):
                now = time.monotonic()
                mb = rss_mb(proc.pid)
                if mb is not None:
                    report.rss_mb.append((now - t0, mb))
                    if report.baseline_mb is None and now >= warm:
                        report.baseline_mb = mb
                if progress is not None and now >= next_report:
                    progress(f"{(now - t0) / 60:5.1f} min  {sum(report.counts.values())} requests  "
                             f"{len(report.failures)} failures  rss {mb or 0:.0f} MiB")
                    next_report = now + 60
                time.sleep(1.0)
            for f in futures:
                f.result()
        report.seconds = time.monotonic() - t0
        if proc.poll() is not None:
            report.failures.append(f"the server process died (exit code {proc.returncode})")
            return report
        deadline = time.monotonic() + 30
        while True:  # cancelled sequences end at the next step; nothing may stay busy
            health = requests.get(url + "/health", timeout=30).json()
            if (health["slots_busy"] == 0 and health["queue_length"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if health["status"] != "ok" or health["slots_busy"] or health["queue_length"]:
            report.failures.append(f"the server is not idle after the run: {health}")
        try:
            _Client(url, seed, max_tokens).complete()
        except Exception as exc:
            report.failures.append(f"the server does not answer after the run: {exc}")
        mb = rss_mb(proc.pid)
        if mb is not None:
            report.rss_mb.append((time.monotonic() - t0, mb))
            if report.baseline_mb is None:
                report.baseline_mb = report.rss_mb[0][1]
            report.growth_mb = mb - report.baseline_mb
            if report.growth_mb > max_growth_mb:
                report.failures.append(f"resident memory grew {report.growth_mb:.1f} MiB after the warm-up "
                                       f"(limit {max_growth_mb:.0f})")
        report.metrics = _metrics(url)
        if report.counts.get("cancel_stream", 0) + report.counts.get("cancel_request", 0) and \
                not report.metrics.get("client_disconnects_total"):
            report.failures.append("clients went away but the server counted no disconnect")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--model", type=Path, default=None, help="GGUF model (default: the test model)")
    ap.add_argument("--threads", type=int, default=2, help="the server's decoding threads")
    ap.add_argument("--slots", type=int, default=4, help="the server's parallel sequences")
    ap.add_argument("--max-tokens", type=int, default=48, help="longest completion a client asks for")
    ap.add_argument("--max-growth-mb", type=float, default=64.0, help="allowed resident growth after warm-up")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = soak(args.minutes, args.clients, args.model, args.threads, args.slots, args.max_tokens,
                  args.max_growth_mb, args.seed, progress=lambda line: print(line, flush=True))
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

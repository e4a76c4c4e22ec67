"""A local HTTP server that answers as the Hugging Face Hub does, for the part of its protocol
huggingface_hub and cyllama's own client use (no network needed):

- ``GET /api/models/{repo}[/revision/{rev}]``: the model info, ``sha`` (the commit) and
  ``siblings`` (the file list);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit`` and ``ETag`` always; an LFS file
  (``.gguf``) answers 302 to a CDN on another origin (``localhost`` instead of ``127.0.0.1``) with
  ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``; other files answer 200 with their bytes;
- ``GET /cdn/{repo}/{file}``: the bytes, ``Range`` requests honoured;
- errors with the Hub's ``X-Error-Code`` (``RepoNotFound`` with 401 for missing or private
  repositories asked anonymously, ``GatedRepo``, ``EntryNotFound``, ``RevisionNotFound``).

Every request is logged with its headers, so tests can see what was sent where."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from contextlib import contextmanager
from email.message import Message
from typing import Iterator
from urllib.parse import unquote, urlsplit

__all__ = ["Hub", "serve", "payload"]


def payload(name: str, size: int = 20_000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return b"GGUF" + (seed * (size // len(seed) + 1))[: size - 4]


class Hub:
    """The fake Hub's repositories, options and request log."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str, Message]] = []  # (method, path, headers)
        self.url = ""
        self.cdn = ""
        self.lock = threading.Lock()

    def add(self, repo: str, names=(), *, files: dict[str, bytes] | None = None, private: bool = False,
            gated: bool = False, extra_listing=(), sha=None, truncate_once=(), size: int = 20_000) -> dict[str, bytes]:
        data = dict(files or {})
        data.update({n: payload(repo + n, size) for n in names})
        commit = hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = {"files": data, "private": private, "gated": gated, "extra": list(extra_listing),
                            "sha": dict(sha or {}), "truncate": set(truncate_once), "commit": commit}
        return data

    def commit(self, repo: str) -> str:
        return self.repos[repo]["commit"]

    def requests(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str, Message]]:
        with self.lock:
            return [r for r in self.log if (method is None or r[0] == method) and r[1].startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def hub(self) -> Hub:
        return self.server.hub  # type: ignore[attr-defined]

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, error_code: str | None, message: str = "", extra: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if error_code:
            headers["X-Error-Code"] = error_code
        if message:
            headers["X-Error-Message"] = message
        self._send(code, json.dumps({"error": message or error_code or "error"}).encode(), headers)

    def _repo(self, name: str) -> dict | None:
        """The repository when this request may see it; else answers the error and returns None."""
        repo = self.hub.repos.get(name)
        auth = self.headers.get("Authorization")
        if repo is None or (repo["private"] and auth is None):
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if (repo["private"] or repo["gated"]) and auth != "Bearer good":
            if repo["gated"]:
                self._error(403, "GatedRepo", "Access to this model is restricted")
            else:
                self._error(401, None, "Invalid credentials in Authorization header")
            return None
        return repo

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:  # noqa: C901 - a small router
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.log.append((self.command, path, self.headers))  # case-insensitive
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None:
                return None
            if m.group(2) not in (None, "main", repo["commit"]):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            info = {"id": m.group(1), "modelId": m.group(1), "sha": repo["commit"], "private": repo["private"],
                    "siblings": [{"rfilename": n} for n in repo["files"]] + repo["extra"]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None:
                return None
            if m.group(2) not in ("main", repo["commit"]):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            commit = {"X-Repo-Commit": repo["commit"]}
            data = repo["files"].get(m.group(3))
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found", commit)
            if not m.group(3).endswith(".gguf"):  # a git file: served by the Hub itself
                etag = '"' + hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() + '"'
                return self._send(200, data, {**commit, "ETag": etag})
            sha = repo["sha"].get(m.group(3), hashlib.sha256(data).hexdigest())
            return self._send(302, b"", {**commit, "Location": f"{self.hub.cdn}/cdn/{m.group(1)}/{m.group(3)}",
                                         "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                         "ETag": f'"{sha}"'})
        m = re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path)
        if m:
            repo = self.hub.repos[m.group(1)]
            data = repo["files"][m.group(2)]
            rng = self.headers.get("Range")
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            if m.group(2) in repo["truncate"] and self.command == "GET":
                repo["truncate"].discard(m.group(2))
                self._send(200, data[: len(data) // 2], {"Accept-Ranges": "bytes"}, length=len(data))
                self.wfile.flush()
                self.close_connection = True
                return None
            return self._send(200, data, {"Accept-Ranges": "bytes"})
        m = re.fullmatch(r"/plain/(.+)", path)
        if m:
            return self._send(200, payload(m.group(1)))
        return self._send(404, b"no route")


@contextmanager
def serve() -> Iterator[Hub]:
    """``with serve() as hub:`` runs a fake Hub on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    hub = Hub()
    server.hub = hub  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    hub.url, hub.cdn = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()

"""cyllama.download against a local fake of the Hugging Face Hub (no network needed)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("requests")

from cyllama import download as dl
from cyllama.download import (
    DownloadConnectionError,
    DownloadError,
    download_model,
    hf_hub_file,
    list_cached_models,
    parse_hf_repo,
    select_gguf,
)


def payload(name: str, size: int = 20_000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return b"GGUF" + (seed * (size // len(seed) + 1))[: size - 4]


class Hub:
    """State of the fake Hub: repositories, options, and a log of the requests it answered."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, dict]] = []
        self.url = ""
        self.lock = threading.Lock()

    def add(self, repo: str, names, *, private: bool = False, extra_listing=(), header_sha=None,
            listing_sha=None, truncate_once=(), no_sha=False, size: int = 20_000) -> dict[str, bytes]:
        files = {n: payload(repo + n, size) for n in names}
        self.repos[repo] = {"files": files, "private": private, "extra": list(extra_listing),
                            "header_sha": dict(header_sha or {}), "listing_sha": dict(listing_sha or {}),
                            "truncate": set(truncate_once), "no_sha": no_sha}
        return files

    def paths(self, prefix: str = "") -> list[str]:
        return [p for p, _ in self.log if p.startswith(prefix)]


class Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1.0"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, repo: dict) -> bool:
        return not repo["private"] or self.headers.get("Authorization") == "Bearer good"

    def do_GET(self) -> None:  # noqa: C901 - a small router
        hub: Hub = self.server.hub  # type: ignore[attr-defined]
        path = unquote(urlsplit(self.path).path)
        with hub.lock:
            hub.log.append((path, dict(self.headers)))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
        if m:
            repo = hub.repos.get(m.group(1))
            if repo is None:
                return self._send(404, b'{"error":"Repository not found"}')
            if not self._authorized(repo):
                return self._send(401, b'{"error":"Invalid credentials"}')
            listing = []
            for name, data in repo["files"].items():
                entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                if name.endswith(".gguf"):
                    sha = repo["listing_sha"].get(name, hashlib.sha256(data).hexdigest())
                    entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
                    if repo["no_sha"]:
                        del entry["lfs"]
                listing.append(entry)
            listing += repo["extra"]
            return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = hub.repos.get(m.group(1))
            if repo is None:
                return self._send(404, b"Repository not found")
            if not self._authorized(repo):
                return self._send(401, b"Invalid credentials")
            data = repo["files"].get(m.group(3))
            if data is None:
                return self._send(404, b"Entry not found")
            headers = {"Location": f"/cdn/{m.group(1)}/{m.group(3)}", "X-Linked-Size": str(len(data))}
            if not repo["no_sha"]:
                sha = repo["header_sha"].get(m.group(3), hashlib.sha256(data).hexdigest())
                headers["X-Linked-Etag"] = f'"{sha}"'
                headers["ETag"] = f'"{sha}"'
            return self._send(302, b"", headers)
        m = re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path)
        if m:
            repo = hub.repos[m.group(1)]
            data = repo["files"][m.group(2)]
            rng = self.headers.get("Range")
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            if m.group(2) in repo["truncate"]:
                repo["truncate"].discard(m.group(2))
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            return self._send(200, data, {"Accept-Ranges": "bytes"})
        m = re.fullmatch(r"/plain/(.+)", path)
        if m:
            return self._send(200, payload(m.group(1)))
        return self._send(404, b"no route")


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Hub()
    server.hub = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("CYLLAMA_CACHE_DIR", str(tmp_path / "cyllama-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


GGUFS = ["Tiny-Q8_0.gguf", "Tiny-Q4_0.gguf", "Tiny-Q4_K_M.gguf", "Tiny-Q4_K_S.gguf", "Tiny-F16.gguf",
         "mmproj-Tiny-F16.gguf", "README.md"]


# -- tag selection ----------------------------------------------------------------------------

@pytest.mark.parametrize("tag, expected", [
    (None, "Tiny-Q4_K_M.gguf"), ("latest", "Tiny-Q4_K_M.gguf"), ("q4", "Tiny-Q4_K_M.gguf"),
    ("Q4_K_S", "Tiny-Q4_K_S.gguf"), ("q4_0", "Tiny-Q4_0.gguf"), ("q8", "Tiny-Q8_0.gguf"),
    ("Q8_0", "Tiny-Q8_0.gguf"), ("f16", "Tiny-F16.gguf"), ("Tiny-Q4_0.gguf", "Tiny-Q4_0.gguf"),
])
def test_select_gguf(tag, expected) -> None:
    assert select_gguf(GGUFS, tag) == expected


def test_select_gguf_default_without_q4_k_m_and_errors() -> None:
    assert select_gguf(["b-Q8_0.gguf", "a-Q5_K_M.gguf", "notes.txt"]) == "a-Q5_K_M.gguf"
    assert select_gguf(["x-Q4_K_M-00002-of-00002.gguf", "x-Q4_K_M-00001-of-00002.gguf"], "q4") == \
        "x-Q4_K_M-00001-of-00002.gguf"
    with pytest.raises(FileNotFoundError, match="Q4_K_M"):
        select_gguf(GGUFS, "q3")
    with pytest.raises(FileNotFoundError):
        select_gguf(["mmproj-F16.gguf", "README.md"])


def test_parse_hf_repo() -> None:
    assert parse_hf_repo("bartowski/Llama-3.2-1B-Instruct-GGUF:q4") == ("bartowski", "Llama-3.2-1B-Instruct-GGUF", "q4")
    assert parse_hf_repo("u/m") == ("u", "m", None)
    for bad in ("justmodel", "a/b/c", "../m", "u/..", "u/m/..", "u/.hidden", "u/m:a/b", "", "u/m\x00"):
        with pytest.raises(ValueError):
            parse_hf_repo(bad)


# -- downloads --------------------------------------------------------------------------------

def test_download_default_tag_and_cache_hit(hub: Hub, cache: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    path = download_model("tiny/Tiny-GGUF", cache_dir=cache, progress=False)
    assert path == (cache / "tiny" / "Tiny-GGUF" / "main" / "Tiny-Q4_K_M.gguf").resolve()
    assert path.read_bytes() == files["Tiny-Q4_K_M.gguf"]
    assert len(hub.paths("/tiny/Tiny-GGUF/resolve/")) == 1
    q8 = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    assert q8.name == "Tiny-Q8_0.gguf" and q8.read_bytes() == files["Tiny-Q8_0.gguf"]
    # Cached: the listing is asked again (to resolve the tag) but nothing is downloaded.
    assert download_model("tiny/Tiny-GGUF:Q4_K_M", cache_dir=cache, progress=False) == path
    assert len(hub.paths("/tiny/Tiny-GGUF/resolve/")) == 2
    assert not [p for p in all_files(cache) if p.name.endswith(".part")]


def test_default_cache_dir_from_env(hub: Hub, tmp_path: Path) -> None:
    hub.add("tiny/Env", ["e-Q4_K_M.gguf"])
    path = download_model("tiny/Env", progress=False)
    assert path.is_relative_to((tmp_path / "cyllama-cache" / "models").resolve())
    assert dl.default_cache_dir() == tmp_path / "cyllama-cache" / "models"


def test_progress_bar(hub: Hub, cache: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    hub.add("tiny/Bar", ["b-Q4_K_M.gguf"])
    download_model("tiny/Bar", cache_dir=cache, progress=True)
    assert "b-Q4_K_M.gguf" in capsys.readouterr().err


def test_hf_hub_file_glob(hub: Hub, cache: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    path = hf_hub_file("tiny/Tiny-GGUF", "*q8_0.gguf", cache_dir=cache, progress=False)
    assert path.name == "Tiny-Q8_0.gguf" and path.read_bytes() == files["Tiny-Q8_0.gguf"]
    with pytest.raises(ValueError, match="several"):
        hf_hub_file("tiny/Tiny-GGUF", "*Q4*.gguf", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="matches"):
        hf_hub_file("tiny/Tiny-GGUF", "*q2_k.gguf", cache_dir=cache, progress=False)
    # Exact names are served from the cache without asking the Hub at all.
    n = len(hub.log)
    assert hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q8_0.gguf", cache_dir=cache, progress=False) == path
    assert len(hub.log) == n
    # download_model(filename=) takes the same route.
    assert download_model("tiny/Tiny-GGUF", filename="*Q4_0.gguf", cache_dir=cache, progress=False).name == \
        "Tiny-Q4_0.gguf"


def test_split_model_downloads_every_shard(hub: Hub, cache: Path) -> None:
    names = ["Big-Q4_K_M-00001-of-00003.gguf", "Big-Q4_K_M-00002-of-00003.gguf", "Big-Q4_K_M-00003-of-00003.gguf",
             "Big-Q8_0.gguf"]
    files = hub.add("tiny/Big", names)
    first = download_model("tiny/Big:q4_k_m", cache_dir=cache, progress=False)
    assert first.name == names[0]
    for n in names[:3]:
        assert (first.parent / n).read_bytes() == files[n]
    listed = [m for m in list_cached_models(cache) if m["model"] == "Big"]
    assert len(listed) == 1 and listed[0]["size"] == sum(len(files[n]) for n in names[:3])


def test_offline_mode(hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        hf_hub_file("tiny/Tiny-GGUF", "*Q8_0.gguf", cache_dir=cache, progress=False)
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    got = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    assert download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False) == got
    assert download_model("tiny/Tiny-GGUF", cache_dir=cache, progress=False) == got  # only cached file
    assert hf_hub_file("tiny/Tiny-GGUF", "*q8_0.gguf", cache_dir=cache, progress=False) == got
    assert len(hub.log) == n
    assert got.read_bytes() == files["Tiny-Q8_0.gguf"]


def test_http_errors(hub: Hub, cache: Path) -> None:
    hub.add("tiny/Tiny-GGUF", GGUFS)
    hub.add("corp/Private", ["p-Q4_K_M.gguf"], private=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        download_model("nobody/Nothing:q4", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError) as info:
        hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q2_K.gguf", cache_dir=cache, progress=False)
    assert "Tiny-Q2_K.gguf" in str(info.value)
    with pytest.raises(PermissionError, match="HF_TOKEN"):
        download_model("corp/Private", cache_dir=cache, progress=False)
    with pytest.raises(PermissionError, match="refused"):
        download_model("corp/Private", cache_dir=cache, token="wrong", progress=False)
    assert all_files(cache) == []  # no empty .part files left behind
    assert download_model("corp/Private", cache_dir=cache, token="good", progress=False).exists()


def test_token_from_env_goes_only_to_the_hub(hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("corp/Private", ["p-Q4_K_M.gguf"], private=True)
    monkeypatch.setenv("HF_TOKEN", "good")
    assert download_model("corp/Private", cache_dir=cache, progress=False).exists()
    assert all(h.get("Authorization") == "Bearer good" for p, h in hub.log if p.startswith("/api/"))
    # Another origin (localhost instead of 127.0.0.1) never sees HF_TOKEN.
    other = hub.url.replace("127.0.0.1", "localhost") + "/plain/thing.gguf"
    out = download_model(url=other, output_path=cache / "out" / "thing.gguf", progress=False)
    assert out.read_bytes() == payload("thing.gguf")
    assert "Authorization" not in dict(hub.log[-1][1])


def test_network_error_names_the_url(hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("tiny/Tiny-GGUF", GGUFS)
    cached = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(ConnectionError) as info:
        download_model("tiny/Tiny-GGUF:q4", cache_dir=cache, progress=False)
    assert isinstance(info.value, DownloadConnectionError) and dead in str(info.value)
    with pytest.warns(UserWarning, match="cached"):  # falls back to what the cache has
        assert download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False) == cached


@pytest.mark.parametrize("name", ["../x.gguf", "a/../../x.gguf", "/etc/passwd", "a\\..\\x.gguf", "x\x00.gguf",
                                  "./x.gguf", "a//b.gguf", "C:/x.gguf", "~/x.gguf"])
def test_path_traversal_in_file_names(hub: Hub, cache: Path, tmp_path: Path, name: str) -> None:
    hub.add("tiny/Tiny-GGUF", GGUFS)
    with pytest.raises(ValueError):
        hf_hub_file("tiny/Tiny-GGUF", name, cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        download_model("tiny/Tiny-GGUF", filename=name, cache_dir=cache, progress=False)
    assert all_files(tmp_path) == []


@pytest.mark.parametrize("repo", ["../Tiny-GGUF", "tiny/..", "../..", "tiny/Tiny-GGUF/../../x", "/abs/path",
                                  "tiny\\Tiny"])
def test_path_traversal_in_repo_names(hub: Hub, cache: Path, tmp_path: Path, repo: str) -> None:
    with pytest.raises(ValueError):
        download_model(repo + ":q4", cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        hf_hub_file(repo, "x.gguf", cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        hf_hub_file("tiny/Tiny-GGUF", "x.gguf", cache_dir=cache, revision="..", progress=False)
    assert hub.log == [] and all_files(tmp_path) == []


def test_hostile_listing_cannot_escape(hub: Hub, cache: Path, tmp_path: Path) -> None:
    evil = [{"type": "file", "path": "../../evil-Q4_K_M.gguf", "size": 4},
            {"type": "file", "path": "/tmp/abs-Q4_K_M.gguf", "size": 4}]
    hub.add("tiny/Evil", ["ok-Q8_0.gguf"], extra_listing=evil)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = download_model("tiny/Evil", cache_dir=cache, progress=False)
    assert path.name == "ok-Q8_0.gguf"
    assert sum("unsafe" in str(w.message) for w in caught) == 2
    assert [p.name for p in all_files(tmp_path)] == ["ok-Q8_0.gguf"]


def test_url_with_encoded_traversal(hub: Hub, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        download_model(url=hub.url + "/plain/..%2F..%2Fevil.gguf", cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        download_model(url="file:///etc/passwd", cache_dir=cache)
    assert all_files(tmp_path) == []


def test_url_download_into_cache_and_folder(hub: Hub, cache: Path, tmp_path: Path) -> None:
    p = download_model(url=hub.url + "/plain/model.gguf", cache_dir=cache, progress=False)
    assert p.read_bytes() == payload("model.gguf") and p.is_relative_to(cache.resolve())
    n = len(hub.log)
    assert download_model(url=hub.url + "/plain/model.gguf", cache_dir=cache, progress=False) == p
    assert len(hub.log) == n
    folder = tmp_path / "models"
    folder.mkdir()
    q = download_model(url=hub.url + "/plain/other.gguf", output_path=folder, progress=False)
    assert q == (folder / "other.gguf").resolve()
    assert list_cached_models(cache) == []  # URL downloads are not Hub models


@pytest.mark.parametrize("where", ["header", "listing"])
def test_sha256_mismatch_is_rejected_and_leaves_nothing(hub: Hub, cache: Path, where: str) -> None:
    wrong = "0" * 64
    opts = {"header_sha": {"m-Q4_K_M.gguf": wrong}} if where == "header" else \
        {"listing_sha": {"m-Q4_K_M.gguf": wrong}}
    hub.add("tiny/Bad", ["m-Q4_K_M.gguf"], **opts)
    with pytest.raises(DownloadError) as info:
        if where == "header":
            hf_hub_file("tiny/Bad", "m-Q4_K_M.gguf", cache_dir=cache, progress=False)
        else:
            download_model("tiny/Bad", cache_dir=cache, progress=False)
    assert "sha256" in str(info.value) and not isinstance(info.value, ConnectionError)
    assert all_files(cache) == []
    assert list_cached_models(cache) == []


def test_truncated_download_resumes(hub: Hub, cache: Path) -> None:
    # Large enough that some 1 MiB chunks arrive before the connection drops.
    files = hub.add("tiny/Cut", ["c-Q4_K_M.gguf"], truncate_once=["c-Q4_K_M.gguf"], size=3_000_000)
    with pytest.raises(DownloadConnectionError, match="resume"):
        download_model("tiny/Cut", cache_dir=cache, progress=False)
    parts = [p for p in all_files(cache) if p.name.endswith(".part")]
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(files["c-Q4_K_M.gguf"])
    assert list_cached_models(cache) == []
    path = download_model("tiny/Cut", cache_dir=cache, progress=False)
    assert path.read_bytes() == files["c-Q4_K_M.gguf"]  # verified against the sha256 as a whole
    assert any(h.get("Range") for p, h in hub.log if p.startswith("/cdn/"))
    assert all_files(cache) == [path]


def test_without_checksums_size_is_still_checked(hub: Hub, cache: Path) -> None:
    files = hub.add("tiny/NoSha", ["n-Q4_K_M.gguf"], no_sha=True)
    assert download_model("tiny/NoSha", cache_dir=cache, progress=False).read_bytes() == files["n-Q4_K_M.gguf"]


def test_force_download_replaces_only_after_success(hub: Hub, cache: Path) -> None:
    files = hub.add("tiny/F", ["f-Q4_K_M.gguf"])
    path = download_model("tiny/F", cache_dir=cache, progress=False)
    path.write_bytes(b"stale")
    assert download_model("tiny/F", cache_dir=cache, progress=False).read_bytes() == b"stale"
    hub.repos["tiny/F"]["header_sha"]["f-Q4_K_M.gguf"] = "1" * 64
    hub.repos["tiny/F"]["listing_sha"]["f-Q4_K_M.gguf"] = "1" * 64
    with pytest.raises(DownloadError):
        download_model("tiny/F", cache_dir=cache, progress=False, force_download=True)
    assert path.read_bytes() == b"stale"  # the failed download did not destroy the cached copy
    hub.repos["tiny/F"]["header_sha"].clear()
    hub.repos["tiny/F"]["listing_sha"].clear()
    assert download_model("tiny/F", cache_dir=cache, progress=False, force_download=True).read_bytes() == \
        files["f-Q4_K_M.gguf"]


def test_list_cached_models(hub: Hub, cache: Path) -> None:
    assert list_cached_models(cache) == []
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    hub.add("other/Thing", ["thing.Q8_0.gguf"])
    a = download_model("tiny/Tiny-GGUF:q4", cache_dir=cache, progress=False)
    b = download_model("tiny/Tiny-GGUF:q8_0", cache_dir=cache, progress=False)
    c = download_model("other/Thing", cache_dir=cache, progress=False)
    (a.parent / "ignored.gguf.part").write_bytes(b"partial")
    models = list_cached_models(cache)
    assert [(m["user"], m["model"], m["tag"]) for m in models] == [
        ("other", "Thing", "Q8_0"), ("tiny", "Tiny-GGUF", "Q4_K_M"), ("tiny", "Tiny-GGUF", "Q8_0")]
    by_path = {Path(m["path"]): m for m in models}
    assert set(by_path) == {a, b, c}
    assert by_path[a]["size"] == len(files["Tiny-Q4_K_M.gguf"])
    assert all(set(m) >= {"user", "model", "tag", "path", "size"} for m in models)
    assert by_path[a]["revision"] == "main" and by_path[a]["filename"] == "Tiny-Q4_K_M.gguf"


def test_output_path_for_hub_model(hub: Hub, tmp_path: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    out = tmp_path / "here" / "model.gguf"
    got = download_model("tiny/Tiny-GGUF:q4_0", output_path=out, progress=False)
    assert got == out.resolve() and got.read_bytes() == files["Tiny-Q4_0.gguf"]
    assert all_files(tmp_path / "cyllama-cache") == []

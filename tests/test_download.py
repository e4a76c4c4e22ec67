"""cyllama.download against a local emulation of the Hugging Face Hub (tests/fake_hub.py), once
through huggingface_hub ("hub") and once through the small client used without it ("plain")."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

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

from fake_hub import Hub, payload, serve

ROOT = Path(__file__).resolve().parent.parent
GGUFS = ["Tiny-Q8_0.gguf", "Tiny-Q4_0.gguf", "Tiny-Q4_K_M.gguf", "Tiny-Q4_K_S.gguf", "Tiny-F16.gguf",
         "mmproj-Tiny-F16.gguf", "README.md"]


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CYLLAMA_CACHE_DIR", str(tmp_path / "cyllama-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login token
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.url)
        yield state


@pytest.fixture(params=["hub", "plain"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which client does the work: huggingface_hub, or cyllama's own (as without it)."""
    if request.param == "hub":
        constants = pytest.importorskip("huggingface_hub.constants")
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; another test may have set it then.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(dl._hub, "available", lambda: True)
    else:
        monkeypatch.setattr(dl._hub, "available", lambda: False)
    return request.param


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def data_files(root: Path) -> list[Path]:
    """Files in a folder tree, but the locks both clients leave in the cache's ``.locks``."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.relative_to(root).parts)


def model_files(root: Path) -> list[Path]:
    """Blobs and snapshot entries (not the refs and not-found markers huggingface_hub keeps)."""
    return [p for p in data_files(root) if "blobs" in p.parts or "snapshots" in p.parts]


def resolve_gets(hub: Hub) -> list:
    return [r for r in hub.requests("GET", "/cdn/")]


# -- names and tags ---------------------------------------------------------------------------

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
    for bad in ("justmodel", "a/b/c", "../m", "u/..", "u/m/..", "u/.hidden", "u/m:a/b", "", "u/m\x00", "u/a--b"):
        with pytest.raises(ValueError):
            parse_hf_repo(bad)


# -- downloads into the Hugging Face cache ----------------------------------------------------

def test_tag_picks_the_file_into_the_hf_cache(hub: Hub, client: str, cache: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    commit = hub.commit("tiny/Tiny-GGUF")
    path = download_model("tiny/Tiny-GGUF", cache_dir=cache, progress=False)
    repo_dir = cache / "models--tiny--Tiny-GGUF"
    assert path == repo_dir / "snapshots" / commit / "Tiny-Q4_K_M.gguf"
    assert path.read_bytes() == files["Tiny-Q4_K_M.gguf"]
    assert path.is_symlink() and path.resolve().parent == (repo_dir / "blobs").resolve()
    assert (repo_dir / "refs" / "main").read_text() == commit
    q8 = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    assert q8.name == "Tiny-Q8_0.gguf" and q8.read_bytes() == files["Tiny-Q8_0.gguf"]
    # The listing is asked again (to resolve the tag), but nothing is downloaded twice.
    assert download_model("tiny/Tiny-GGUF:Q4_K_M", cache_dir=cache, progress=False) == path
    assert len(resolve_gets(hub)) == 2
    # Which client talked to the Hub.
    agents = {h.get("User-Agent", "") for _, p, h in hub.requests(prefix="/api/models/")}
    assert all(("huggingface_hub" in a or "hf_hub" in a) if client == "hub" else a.startswith("cyllama/")
               for a in agents), agents
    assert not [p for p in data_files(cache) if p.name.endswith(".incomplete")]


def test_each_client_finds_the_others_files(hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = pytest.importorskip("huggingface_hub")
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    monkeypatch.setattr(dl._hub, "available", lambda: False)
    mine = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    # huggingface_hub itself, offline, sees the file cyllama's own client stored.
    assert Path(hf.try_to_load_from_cache("tiny/Tiny-GGUF", "Tiny-Q8_0.gguf", cache_dir=cache)) == mine
    theirs = Path(hf.hf_hub_download("tiny/Tiny-GGUF", "Tiny-Q4_0.gguf", cache_dir=cache, endpoint=hub.url))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_model("tiny/Tiny-GGUF:q4_0", cache_dir=cache, progress=False) == theirs
    assert theirs.read_bytes() == files["Tiny-Q4_0.gguf"]


def test_default_cache_is_the_hf_cache(hub: Hub, client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("tiny/Env", ["e-Q4_K_M.gguf"])
    assert dl.default_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "shared"))
    assert dl.default_cache_dir() == tmp_path / "shared"
    path = download_model("tiny/Env", progress=False)
    assert path.is_relative_to(tmp_path / "shared" / "models--tiny--Env")
    assert [m["path"] for m in list_cached_models()] == [path]


def test_progress_bar(hub: Hub, cache: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr(dl._hub, "available", lambda: False)
    hub.add("tiny/Bar", ["b-Q4_K_M.gguf"])
    download_model("tiny/Bar", cache_dir=cache, progress=True)
    assert "b-Q4_K_M.gguf" in capsys.readouterr().err


def test_hf_hub_file_glob_and_exact(hub: Hub, client: str, cache: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    path = hf_hub_file("tiny/Tiny-GGUF", "*q8_0.gguf", cache_dir=cache, progress=False)
    assert path.name == "Tiny-Q8_0.gguf" and path.read_bytes() == files["Tiny-Q8_0.gguf"]
    with pytest.raises(ValueError, match="several"):
        hf_hub_file("tiny/Tiny-GGUF", "*Q4*.gguf", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="matches"):
        hf_hub_file("tiny/Tiny-GGUF", "*q2_k.gguf", cache_dir=cache, progress=False)
    # An exact name needs no listing; a cached one is checked with the Hub (HEAD) but not fetched.
    n_api, n_get = len(hub.requests(prefix="/api/")), len(resolve_gets(hub))
    assert hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q8_0.gguf", cache_dir=cache, progress=False) == path
    assert (len(hub.requests(prefix="/api/")), len(resolve_gets(hub))) == (n_api, n_get)
    readme = hf_hub_file("tiny/Tiny-GGUF", "README.md", cache_dir=cache, progress=False)  # a git file, no redirect
    assert readme.read_bytes() == files["README.md"]
    assert download_model("tiny/Tiny-GGUF", filename="*Q4_0.gguf", cache_dir=cache, progress=False).name == \
        "Tiny-Q4_0.gguf"


def test_split_model_downloads_every_shard(hub: Hub, client: str, cache: Path) -> None:
    names = ["Big-Q4_K_M-00001-of-00003.gguf", "Big-Q4_K_M-00002-of-00003.gguf", "Big-Q4_K_M-00003-of-00003.gguf",
             "Big-Q8_0.gguf"]
    files = hub.add("tiny/Big", names)
    first = download_model("tiny/Big:q4_k_m", cache_dir=cache, progress=False)
    assert first.name == names[0]
    for n in names[:3]:
        assert (first.parent / n).read_bytes() == files[n]
    listed = [m for m in list_cached_models(cache) if m["model"] == "Big"]
    assert len(listed) == 1 and listed[0]["size"] == sum(len(files[n]) for n in names[:3])
    assert listed[0]["tag"] == "Q4_K_M"


# -- offline, errors, tokens ------------------------------------------------------------------

def test_offline_mode(hub: Hub, client: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors = pytest.importorskip("huggingface_hub.errors")
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (lambda: download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False),
                 lambda: hf_hub_file("tiny/Tiny-GGUF", "*Q8_0.gguf", cache_dir=cache, progress=False),
                 lambda: hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q8_0.gguf", cache_dir=cache, progress=False)):
        with pytest.raises(errors.LocalEntryNotFoundError, match="HF_HUB_OFFLINE") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    got = download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    assert download_model("tiny/Tiny-GGUF:q8", cache_dir=cache, progress=False) == got
    assert download_model("tiny/Tiny-GGUF", cache_dir=cache, progress=False) == got  # the only cached model
    assert hf_hub_file("tiny/Tiny-GGUF", "*q8_0.gguf", cache_dir=cache, progress=False) == got
    assert hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q8_0.gguf", cache_dir=cache, progress=False) == got
    assert len(hub.log) == n
    assert got.read_bytes() == files["Tiny-Q8_0.gguf"]


def test_http_errors(hub: Hub, client: str, cache: Path) -> None:
    hub.add("tiny/Tiny-GGUF", GGUFS)
    hub.add("corp/Private", ["p-Q4_K_M.gguf"], private=True)
    hub.add("corp/Gated", ["g-Q4_K_M.gguf"], gated=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        download_model("nobody/Nothing:q4", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError) as info:
        hf_hub_file("tiny/Tiny-GGUF", "Tiny-Q2_K.gguf", cache_dir=cache, progress=False)
    assert "Tiny-Q2_K.gguf" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        download_model("tiny/Tiny-GGUF", revision="v9", cache_dir=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="HF_TOKEN"):  # the Hub does not say whether it exists
        download_model("corp/Private", cache_dir=cache, progress=False)
    with pytest.raises(PermissionError, match="refused"):
        download_model("corp/Private", cache_dir=cache, token="wrong", progress=False)
    with pytest.raises(PermissionError, match="gated"):
        download_model("corp/Gated", cache_dir=cache, progress=False)
    assert model_files(cache) == []
    assert download_model("corp/Private", cache_dir=cache, token="good", progress=False).exists()
    assert download_model("corp/Gated", cache_dir=cache, token="good", progress=False).exists()


def test_token_goes_to_the_hub_only(hub: Hub, client: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("corp/Private", ["p-Q4_K_M.gguf"], private=True)
    monkeypatch.setenv("HF_TOKEN", "good")
    assert download_model("corp/Private", cache_dir=cache, progress=False).exists()
    hub_side = hub.requests(prefix="/api/") + hub.requests(prefix="/corp/")
    assert hub_side and all(h.get("Authorization") == "Bearer good" for _, _, h in hub_side)
    cdn = hub.requests(prefix="/cdn/")
    assert cdn and all("Authorization" not in h for _, _, h in cdn)  # another origin: never the token
    other = hub.cdn + "/plain/thing.gguf"
    out = download_model(url=other, output_path=cache / "out" / "thing.gguf", progress=False)
    assert out.read_bytes() == payload("thing.gguf")
    assert "Authorization" not in hub.log[-1][2]


def test_network_error_names_the_url(hub: Hub, client: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


# -- nothing outside the cache ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x.gguf", "a/../../x.gguf", "/etc/passwd", "a\\..\\x.gguf", "x\x00.gguf",
                                  "./x.gguf", "a//b.gguf", "C:/x.gguf", "~/x.gguf"])
def test_path_traversal_in_file_names(hub: Hub, cache: Path, tmp_path: Path, name: str) -> None:
    hub.add("tiny/Tiny-GGUF", GGUFS)
    with pytest.raises(ValueError):
        hf_hub_file("tiny/Tiny-GGUF", name, cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        download_model("tiny/Tiny-GGUF", filename=name, cache_dir=cache, progress=False)
    assert data_files(tmp_path) == [] and hub.log == []


@pytest.mark.parametrize("repo", ["../Tiny-GGUF", "tiny/..", "../..", "tiny/Tiny-GGUF/../../x", "/abs/path",
                                  "tiny\\Tiny", "models--a/b"])
def test_path_traversal_in_repo_names(hub: Hub, cache: Path, tmp_path: Path, repo: str) -> None:
    with pytest.raises(ValueError):
        download_model(repo + ":q4", cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        hf_hub_file(repo, "x.gguf", cache_dir=cache, progress=False)
    for rev in ("..", "../../x", "/abs", ""):
        with pytest.raises(ValueError):
            hf_hub_file("tiny/Tiny-GGUF", "x.gguf", cache_dir=cache, revision=rev, progress=False)
    assert hub.log == [] and data_files(tmp_path) == []


def test_hostile_listing_cannot_escape(hub: Hub, client: str, cache: Path, tmp_path: Path) -> None:
    evil = [{"rfilename": "../../evil-Q4_K_M.gguf"}, {"rfilename": "/tmp/abs-Q4_K_M.gguf"}]
    hub.add("tiny/Evil", ["ok-Q8_0.gguf"], extra_listing=evil)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = download_model("tiny/Evil", cache_dir=cache, progress=False)
    assert path.name == "ok-Q8_0.gguf"
    assert sum("unsafe" in str(w.message) for w in caught) == 2
    assert {p.name for p in model_files(cache)} == {"ok-Q8_0.gguf", path.resolve().name}
    assert all(p.is_relative_to(cache) for p in data_files(tmp_path))
    assert not Path("/tmp/abs-Q4_K_M.gguf").exists()


def test_url_with_encoded_traversal(hub: Hub, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        download_model(url=hub.url + "/plain/..%2F..%2Fevil.gguf", cache_dir=cache, progress=False)
    with pytest.raises(ValueError):
        download_model(url="file:///etc/passwd", cache_dir=cache)
    assert data_files(tmp_path) == []


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
    r = download_model(url=hub.url + "/plain/third.gguf", progress=False)  # cyllama's own cache by default
    assert r.is_relative_to(tmp_path / "cyllama-cache")
    assert list_cached_models(cache) == []  # URL downloads are not Hub models


# -- transfers: integrity and resuming --------------------------------------------------------

def test_sha256_mismatch_is_rejected_and_leaves_nothing(hub: Hub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl._hub, "available", lambda: False)  # huggingface_hub checks sizes only
    hub.add("tiny/Bad", ["m-Q4_K_M.gguf"], sha={"m-Q4_K_M.gguf": "0" * 64})
    with pytest.raises(DownloadError) as info:
        download_model("tiny/Bad", cache_dir=cache, progress=False)
    assert "sha256" in str(info.value) and not isinstance(info.value, ConnectionError)
    assert data_files(cache) == []
    assert list_cached_models(cache) == []


def test_cut_off_download_resumes(hub: Hub, client: str, cache: Path) -> None:
    # Large enough that whole chunks (huggingface_hub reads 10 MiB at a time) arrive before the
    # connection drops half-way.
    files = hub.add("tiny/Cut", ["c-Q4_K_M.gguf"], truncate_once=["c-Q4_K_M.gguf"], size=24_000_000)
    if client == "plain":  # the call fails and leaves its partial blob; the next call resumes it
        with pytest.raises(DownloadConnectionError, match="resume"):
            download_model("tiny/Cut", cache_dir=cache, progress=False)
        parts = [p for p in data_files(cache) if p.name.endswith(".incomplete")]
        assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(files["c-Q4_K_M.gguf"])
        assert list_cached_models(cache) == []
    path = download_model("tiny/Cut", cache_dir=cache, progress=False)  # huggingface_hub resumes within the call
    assert path.read_bytes() == files["c-Q4_K_M.gguf"]
    ranges = [h.get("Range") for _, _, h in resolve_gets(hub) if h.get("Range")]
    assert len(ranges) == 1 and int(ranges[0].removeprefix("bytes=").rstrip("-")) > 0
    assert [p.name for p in model_files(cache) if not p.is_symlink()] == [hashlib.sha256(path.read_bytes()).hexdigest()]


def test_force_download_replaces_the_file(hub: Hub, client: str, cache: Path) -> None:
    files = hub.add("tiny/F", ["f-Q4_K_M.gguf"])
    path = download_model("tiny/F", cache_dir=cache, progress=False)
    path.resolve().write_bytes(b"stale")
    assert download_model("tiny/F", cache_dir=cache, progress=False).read_bytes() == b"stale"
    assert download_model("tiny/F", cache_dir=cache, progress=False, force_download=True).read_bytes() == \
        files["f-Q4_K_M.gguf"]


def test_list_cached_models(hub: Hub, client: str, cache: Path) -> None:
    assert list_cached_models(cache) == []
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    hub.add("other/Thing", ["thing.Q8_0.gguf"])
    a = download_model("tiny/Tiny-GGUF:q4", cache_dir=cache, progress=False)
    b = download_model("tiny/Tiny-GGUF:q8_0", cache_dir=cache, progress=False)
    c = download_model("other/Thing", cache_dir=cache, progress=False)
    hf_hub_file("tiny/Tiny-GGUF", "README.md", cache_dir=cache, progress=False)
    os.symlink("../../blobs/nothing", a.parent / "Tiny-F16.gguf")  # an unfinished download: no blob yet
    models = list_cached_models(cache)
    assert [(m["user"], m["model"], m["tag"]) for m in models] == [
        ("other", "Thing", "Q8_0"), ("tiny", "Tiny-GGUF", "Q4_K_M"), ("tiny", "Tiny-GGUF", "Q8_0")]
    by_path = {Path(m["path"]): m for m in models}
    assert set(by_path) == {a, b, c}
    assert by_path[a]["size"] == len(files["Tiny-Q4_K_M.gguf"])
    assert by_path[a]["revision"] == "main" and by_path[a]["filename"] == "Tiny-Q4_K_M.gguf"
    assert by_path[a]["commit"] == hub.commit("tiny/Tiny-GGUF")


def test_output_path_for_hub_model(hub: Hub, client: str, tmp_path: Path) -> None:
    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    out = tmp_path / "here" / "model.gguf"
    got = download_model("tiny/Tiny-GGUF:q4_0", output_path=out, progress=False)
    assert got == out.resolve() and got.read_bytes() == files["Tiny-Q4_0.gguf"]
    folder = download_model("tiny/Tiny-GGUF:q8", output_path=str(tmp_path / "dir") + os.sep, progress=False)
    assert folder == (tmp_path / "dir" / "Tiny-Q8_0.gguf").resolve()
    n = len(hub.log)
    assert download_model("tiny/Tiny-GGUF:q4_0", output_path=out, progress=False) == got
    assert len(hub.log) == n  # already there: no request at all
    assert sorted(m["filename"] for m in list_cached_models(tmp_path / "hf-home" / "hub")) == \
        ["Tiny-Q4_0.gguf", "Tiny-Q8_0.gguf"]


def test_without_huggingface_hub(hub: Hub, tmp_path: Path) -> None:
    """In a process where huggingface_hub cannot be imported, downloads still work."""
    hub.add("tiny/Tiny-GGUF", GGUFS)
    code = (
        "import sys; sys.modules['huggingface_hub'] = None\n"
        "import os, cyllama\n"
        "p = cyllama.download_model('tiny/Tiny-GGUF:q8', cache_dir=sys.argv[1], progress=False)\n"
        "print(p.name, 'huggingface_hub' in sys.modules and sys.modules['huggingface_hub'] is not None)\n"
        "os.environ['HF_HUB_OFFLINE'] = '1'\n"
        "try:\n"
        "    cyllama.download_model('tiny/Tiny-GGUF:f16', cache_dir=sys.argv[1], progress=False)\n"
        "except FileNotFoundError as e:\n"
        "    print(type(e).__name__)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Tiny-Q8_0.gguf", "False", "FileNotFoundError"]


# -- LLM.from_pretrained ----------------------------------------------------------------------

def test_llm_from_pretrained(hub: Hub, tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real default model, served by the emulated Hub, found by its tag and generating what
    the same file loaded from its own path generates."""
    from cyllama import LLM

    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    hub.add(repo, ["mmproj-SmolLM2-F16.gguf", "README.md"], files={model_path.name: model_path.read_bytes()})
    opts = {"temperature": 0.0, "max_tokens": 8, "n_ctx": 256, "n_threads": 2, "ignore_eos": True}
    with LLM(model_path, **opts) as local:
        expected = local("The capital of France is")
    cache = tmp_path / "hf"
    with LLM.from_pretrained(repo, "q4_1", cache_dir=cache, progress=False, **opts) as llm:
        assert llm.model_path == cache / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.commit(repo) / \
            model_path.name
        got = llm("The capital of France is")
        assert got == expected and len(llm.tokenize(got, add_bos=False)) >= 4
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    for args in ((repo + ":q4_1",), (repo, "*Q4_1.gguf"), (repo,)):  # the only model file cached
        with LLM.from_pretrained(*args, cache_dir=cache, **opts) as again:
            assert again("The capital of France is") == expected
    assert len(hub.log) == n
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        LLM.from_pretrained(repo, "q8_0", cache_dir=cache, **opts)
    with pytest.raises(ValueError, match="both"):
        LLM.from_pretrained(repo + ":q4_1", "q4_1", cache_dir=cache, **opts)


# -- the command line -------------------------------------------------------------------------

def test_cli_download_and_list(hub: Hub, client: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cyllama.cli import main

    files = hub.add("tiny/Tiny-GGUF", GGUFS)
    cache = str(tmp_path / "c")
    assert main(["download", "tiny/Tiny-GGUF:q8", "--cache-dir", cache, "-q"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "Tiny-Q8_0.gguf" and path.read_bytes() == files["Tiny-Q8_0.gguf"]
    assert main(["download", "tiny/Tiny-GGUF", "-f", "*q4_0.gguf", "-o", str(tmp_path / "out") + "/",
                 "--cache-dir", cache, "-q"]) == 0
    assert Path(capsys.readouterr().out.strip()) == (tmp_path / "out" / "Tiny-Q4_0.gguf").resolve()
    assert main(["download", "--list", "--cache-dir", cache]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["tiny/Tiny-GGUF:Q4_0", "tiny/Tiny-GGUF:Q8_0"]
    assert lines[1].split("\t")[2] == str(path)
    for argv, message in ((["download", "tiny/Tiny-GGUF:q2", "--cache-dir", cache], "Q4_K_M"),
                          (["download", "../x", "--cache-dir", cache], "invalid"),
                          (["download", "nobody/None", "--cache-dir", cache], "not found"),
                          (["download"], "repository")):
        assert main(argv) == 1
        assert message in capsys.readouterr().err

"""Model downloads from the Hugging Face Hub (or any URL).

>>> download_model("bartowski/Llama-3.2-1B-Instruct-GGUF:q4")          # doctest: +SKIP
>>> hf_hub_file("Qwen/Qwen2-0.5B-Instruct-GGUF", "*q8_0.gguf")         # doctest: +SKIP
>>> download_model(url="https://example.com/m.gguf", output_path="models/m.gguf")  # doctest: +SKIP

Hub files go to the Hugging Face cache (``cache_dir=``, else ``HF_HUB_CACHE``, ``HF_HOME/hub``,
``~/.cache/huggingface/hub``), the one other tools share, laid out as ``huggingface_hub`` lays it
out. With ``pip install cyllama[hub]`` huggingface_hub does the transfers (resumed, its progress
bars, its stored login token); without it a small client on ``requests`` speaks the same protocol
and writes the same layout (``_plain``), so nothing changes for the caller but the progress bar.

Environment: ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` (sent only to that endpoint),
``HF_HUB_OFFLINE=1`` (cached files only; a miss raises huggingface_hub's
``LocalEntryNotFoundError``, a FileNotFoundError), all read at each call.

Nothing is written outside the cache (or the folder of ``output_path``): repository, file and
revision names are checked, names in the Hub's answers too, and target paths are resolved and
checked to lie inside their folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlparse

from . import _cache, _hub, _plain
from ._cache import hub_cache_root, list_cached_models
from ._errors import DownloadConnectionError, DownloadError, offline_miss
from ._names import (check_revision, contained, glob_select, is_glob, parse_hf_repo, parse_repo_id, safe_relpath,
                     select_gguf, split_info, split_set)

__all__ = [
    "download_model", "hf_hub_file", "list_cached_models", "default_cache_dir", "parse_hf_repo",
    "select_gguf", "DownloadError", "DownloadConnectionError",
]

DEFAULT_ENDPOINT = "https://huggingface.co"

def default_cache_dir() -> Path:
    """The Hugging Face cache Hub models go to: ``HF_HUB_CACHE``, ``HF_HOME/hub`` or
    ``~/.cache/huggingface/hub``."""
    return hub_cache_root()


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _client():  # -> the _hub or the _plain module
    return _hub if _hub.available() else _plain


def _safe_names(files: Iterable[str], repo: str) -> list[str]:
    safe = []
    for name in files:
        try:
            safe.append(safe_relpath(name))
        except ValueError:
            warnings.warn(f"ignoring unsafe file name {name!r} in the listing of {repo}", stacklevel=4)
    return safe


def _resolve(repo: str, revision: str, root: Path, token: str | bool | None, progress: bool, force: bool,
             pick: Callable[[list[str]], str], needs_listing: bool, what: str) -> Path:
    """Picks a file (from the Hub's listing when ``needs_listing``, else ``pick([])``) and returns
    its cached path, downloading it (and every shard of a split model) when needed. Offline, or
    when the Hub cannot be reached, the cache's snapshot of ``revision`` answers instead."""
    snap = _cache.snapshot_dir(root, repo, revision)

    def from_cache() -> Path | None:
        return _cache.find_cached(snap, pick)

    if _offline():
        hit = from_cache()
        if hit is None:
            raise offline_miss(f"{what} is not in the cache ({root}) and HF_HUB_OFFLINE is set; "
                               "unset HF_HUB_OFFLINE to download it")
        return hit
    client, endpoint = _client(), _endpoint()
    try:
        files = None
        if needs_listing:
            _, listed = client.list_files(repo, revision, token, endpoint)
            files = _safe_names(listed, repo)
        name = pick(files or [])
        shards = split_set(name)
        if files is not None and any(n not in files for n in shards):
            raise FileNotFoundError(f"{repo}@{revision} lacks {', '.join(n for n in shards if n not in files)}")
        paths = [client.fetch(repo, revision, n, root, token, endpoint, progress, force) for n in shards]
    except DownloadConnectionError:
        hit = None if force else from_cache()
        if hit is None:
            raise
        warnings.warn(f"could not reach {endpoint}; using the cached {hit}", stacklevel=3)
        return hit
    return paths[0]


def hf_hub_file(repo_id: str, filename: str, *, cache_dir: str | os.PathLike | None = None,
                revision: str = "main", token: str | bool | None = None, progress: bool = True,
                force_download: bool = False) -> Path:
    """The local path of one file of a Hub repository, downloaded into the cache if needed.

    ``filename`` may be a glob (``"*q4_0.gguf"``, matched case-sensitively first, then
    case-insensitively); it must select one file (or one split model, whose shards are all
    fetched and whose first shard is returned), else ValueError lists the candidates.
    """
    repo = "/".join(parse_repo_id(repo_id))
    check_revision(revision)
    glob = isinstance(filename, str) and is_glob(filename)
    if glob:
        if "\x00" in filename or "\\" in filename or filename.startswith("/") or ".." in filename.split("/"):
            raise ValueError(f"invalid file pattern {filename!r}")
    else:
        filename = safe_relpath(filename)

    def pick(files: list[str]) -> str:
        return glob_select(files, filename, repo) if glob else filename

    return _resolve(repo, revision, hub_cache_root(cache_dir), token, progress, force_download, pick,
                    needs_listing=glob or split_info(filename) is not None, what=f"{repo}@{revision}: {filename}")


def download_model(hf_repo: str | None = None, *, url: str | None = None,
                   output_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   filename: str | None = None, revision: str = "main", token: str | bool | None = None,
                   progress: bool = True, force_download: bool = False) -> Path:
    """Downloads a GGUF model and returns its local path.

    ``hf_repo="user/model:tag"`` picks the file for the tag from the repository's listing (see
    :func:`select_gguf`; ``filename=`` names the file, or a glob, instead) into the Hugging Face
    cache (``cache_dir`` or :func:`default_cache_dir`). ``url=`` downloads any http(s) URL (into
    cyllama's cache, or ``cache_dir``). ``output_path`` (a file path, or an existing folder / one
    ending in '/') puts the file there instead, as a hard link to the cached copy where possible.
    A file already there is returned without a download unless ``force_download``.

    Errors: FileNotFoundError (no such repository, revision or file; no file for the tag; offline
    and not cached), PermissionError (gated repository, token refused), DownloadConnectionError
    (network; a partial download resumes on the next call), DownloadError (size or sha256
    mismatch, other HTTP errors), ValueError (unsafe or malformed names).
    """
    if (hf_repo is None) == (url is None):
        raise ValueError("pass exactly one of hf_repo or url")
    if url is not None:
        return _download_url(url, output_path, cache_dir, token, progress, force_download)
    user, model, tag = parse_hf_repo(hf_repo)
    repo = f"{user}/{model}"
    check_revision(revision)
    if output_path is not None and not _is_folder(output_path):
        out = Path(output_path).expanduser()
        if out.is_file() and not force_download:
            return out.resolve()
    if filename is not None:
        path = hf_hub_file(repo, filename, cache_dir=cache_dir, revision=revision, token=token, progress=progress,
                           force_download=force_download)
    else:
        path = _resolve(repo, revision, hub_cache_root(cache_dir), token, progress, force_download,
                        lambda files: select_gguf(files, tag, repo=repo), needs_listing=True,
                        what=f"a model for {hf_repo}")
    return path if output_path is None else _place(path, output_path, force_download)


def _is_folder(output_path: str | os.PathLike) -> bool:
    return Path(output_path).expanduser().is_dir() or os.fspath(output_path).endswith(("/", os.sep))


def _place(path: Path, output_path: str | os.PathLike, force: bool) -> Path:
    """Puts a cached file (every shard of a split model) at ``output_path``: a hard link where the
    file system allows, else a copy."""
    names = [p.name for p in map(Path, split_set(str(path)))]
    if _is_folder(output_path):
        folder = Path(output_path).expanduser()
        targets = [contained(folder, n) for n in names]
    elif len(names) > 1:
        raise ValueError(f"{path.name} is a split model: give output_path as a folder")
    else:
        out = Path(output_path).expanduser()
        targets = [out.parent.resolve() / out.name]
    for name, target in zip(names, targets):
        if target.exists() and not force:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = (path.parent / name).resolve()
        tmp = target.with_name(target.name + ".incomplete")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    return targets[0]


def _download_url(url: str, output_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                  token: str | bool | None, progress: bool, force: bool) -> Path:
    from .. import _assets

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    base = unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]) or "download"
    try:
        base = safe_relpath(base)
    except ValueError:
        raise ValueError(f"cannot take a file name from {url!r}; pass output_path=") from None
    own = _assets.cache_dir() / "downloads"
    if output_path is not None:
        folder = _is_folder(output_path)
        out = Path(output_path).expanduser()
        dest = contained(out, base) if folder else out.parent.resolve() / out.name
    else:
        root = Path(cache_dir).expanduser() / "_url" if cache_dir is not None else own / "url"
        dest = contained(root, f"{hashlib.sha256(url.encode()).hexdigest()[:16]}/{base}")
    if dest.exists() and not force:
        return dest
    if _offline():
        raise offline_miss(f"{url} is not downloaded yet and HF_HUB_OFFLINE is set")
    # The Hub token goes only to the Hub; other hosts get only an explicit token=.
    if isinstance(token, str) and token:
        tok: str | None = token
    elif _plain.same_origin(url, _endpoint()):
        tok = _plain.env_token(token)
    else:
        tok = None
    return _plain.download_url(url, dest, tok, progress, own / "locks")

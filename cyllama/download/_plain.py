"""A small Hub client on ``requests``, for when huggingface_hub is not installed, and for plain
URL downloads. It speaks the part of the Hub's protocol huggingface_hub uses (``HEAD
/{repo}/resolve/{revision}/{file}`` for ``X-Repo-Commit``, ``X-Linked-Etag``/``ETag``,
``X-Linked-Size``, ``Location``; ``GET /api/models/{repo}/revision/{revision}`` for the file list)
and writes the same cache layout (see ``_cache``), so either client finds the other's files.

Transfers go to ``<blob>.incomplete`` (kept when cut off, resumed with a ``Range`` request next
time), are checked against the announced size and, for LFS files (whose etag is the sha256),
the sha256, then renamed into place. ``HF_TOKEN`` goes only to the Hub's own origin."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urljoin, urlparse

from . import _cache
from ._errors import DownloadConnectionError, DownloadError, http_error
from ._names import contained

__all__ = ["list_files", "fetch", "download_url", "env_token", "same_origin"]

_TIMEOUT = (15, 120)  # connect, read (seconds)
_CHUNK = 1 << 20


def env_token(token: str | bool | None) -> str | None:
    """``token`` itself, or ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` (None for ``token=False``)."""
    if token is False:
        return None
    if isinstance(token, str) and token:
        return token
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def _session() -> Any:
    import requests

    from .._version import __version__

    s = requests.Session()
    s.headers["User-Agent"] = f"cyllama/{__version__}"
    return s


def _request(session: Any, method: str, url: str, **kw: Any) -> Any:
    import requests

    kw.setdefault("timeout", _TIMEOUT)
    try:
        return session.request(method, url, **kw)
    except requests.exceptions.RequestException as exc:
        raise DownloadConnectionError(f"could not reach {url}: {exc}") from exc


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(resp: Any, url: str, what: str, token: str | None) -> None:
    if resp.status_code >= 400:
        resp.close()
        raise http_error(resp.status_code, resp.headers, url, what, bool(token))


def list_files(repo_id: str, revision: str, token: str | bool | None, endpoint: str) -> tuple[str | None, list[str]]:
    """``(commit, files)`` of ``repo_id@revision`` from ``/api/models/{repo}/revision/{revision}``."""
    tok = env_token(token)
    url = f"{endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    with _session() as s:
        resp = _request(s, "GET", url, headers=_auth(tok))
        _check(resp, url, f"repository {repo_id}@{revision}", tok)
        try:
            data = resp.json()
        except ValueError as exc:
            raise DownloadError(f"unexpected answer from {url}: not JSON") from exc
    siblings = data.get("siblings") if isinstance(data, dict) else None
    if not isinstance(siblings, list):
        raise DownloadError(f"unexpected answer from {url}: no file list ('siblings')")
    sha = data.get("sha")
    return (sha if isinstance(sha, str) else None,
            [s["rfilename"] for s in siblings if isinstance(s, dict) and isinstance(s.get("rfilename"), str)])


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    return (v[2:] if v.startswith("W/") else v).strip('"') or None


def _metadata(session: Any, url: str, what: str, token: str | None) -> dict[str, Any]:
    """The Hub's answer to ``HEAD`` on a resolve URL: commit, etag, size and download location;
    redirects are followed on the same origin only (the Hub's own), as huggingface_hub does."""
    for _ in range(5):
        resp = _request(session, "HEAD", url, headers={**_auth(token), "Accept-Encoding": "identity"},
                        allow_redirects=False)
        _check(resp, url, what, token)
        location = resp.headers.get("Location")
        if resp.is_redirect and location and same_origin(url, urljoin(url, location)) and \
                not resp.headers.get("X-Linked-Etag"):
            url = urljoin(url, location)
            continue
        size = resp.headers.get("X-Linked-Size") or (None if resp.is_redirect else resp.headers.get("Content-Length"))
        return {"commit": resp.headers.get("X-Repo-Commit"),
                "etag": _etag(resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag")),
                "size": int(size) if size and size.isdigit() else None,
                "location": urljoin(url, location) if resp.is_redirect and location else url}
    raise DownloadError(f"too many redirects resolving {url}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (flock, as the ``filelock`` package huggingface_hub uses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def fetch(repo_id: str, revision: str, filename: str, root: Path, token: str | bool | None, endpoint: str,
          progress: bool, force: bool) -> Path:
    """``filename`` of ``repo_id@revision`` in the cache ``root``: the Hub is asked which commit
    and blob ``revision`` holds; the blob is downloaded when it is not there yet."""
    tok = env_token(token)
    url = f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"
    what = f"{repo_id}: {filename}"
    with _session() as s:
        meta = _metadata(s, url, what, tok)
        if not meta["commit"] or not meta["etag"]:
            raise DownloadError(f"{url} is not answered as the Hugging Face Hub answers (no X-Repo-Commit or "
                                "ETag header): is HF_ENDPOINT a Hub?")
        commit = _cache.checked_key(meta["commit"], "commit")
        etag = _cache.checked_key(meta["etag"], "etag")
        folder = _cache.repo_folder(root, repo_id)
        pointer = contained(folder / "snapshots" / commit, filename)
        blob = contained(folder / "blobs", etag)
        with _locked(root / ".locks" / folder.name / f"{etag}.lock"):
            if force or not pointer.is_file():
                if force or not blob.is_file():
                    headers = _auth(tok) if same_origin(meta["location"], endpoint) else {}
                    sha = etag.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", etag) else None
                    _download(s, meta["location"], blob, headers=headers, size=meta["size"], sha256=sha,
                              progress=progress, what=what, token=tok)
                _cache.link_into_snapshot(blob, pointer)
        _cache.write_ref(root, repo_id, revision, commit)
        return pointer


def download_url(url: str, dest: Path, token: str | None, progress: bool, lock_dir: Path) -> Path:
    """Any http(s) URL into ``dest`` (through ``dest.incomplete``, resumed, size-checked); the
    lock that keeps two processes off one file lives in ``lock_dir``."""
    key = hashlib.sha256(os.fsencode(dest)).hexdigest()[:32]
    with _session() as s, _locked(lock_dir / f"{key}.lock"):
        _download(s, url, dest, headers=_auth(token), size=None, sha256=None, progress=progress, what=dest.name,
                  token=token)
    return dest


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                dynamic_ncols=True)


def _download(session: Any, url: str, dest: Path, *, headers: dict[str, str], size: int | None,
              sha256: str | None, progress: bool, what: str, token: str | None) -> None:
    """Streams ``url`` into ``dest`` through ``dest.incomplete``, resuming what a previous attempt
    left there; ``dest`` is replaced only by a complete, verified file."""
    import requests

    part = dest.with_name(dest.name + ".incomplete")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0
    req = {**headers, "Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    resp = _request(session, "GET", url, headers=req, stream=True)
    if resp.status_code == 416 and offset:  # a stale partial file: start again
        resp.close()
        offset = 0
        req.pop("Range")
        resp = _request(session, "GET", url, headers=req, stream=True)
    try:
        _check(resp, url, what, token)
        if offset and resp.status_code == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(f"bad Content-Range from {url}: {resp.headers.get('Content-Range')!r}")
            total = int(m.group(2)) if m.group(2) != "*" else size
        else:
            offset = 0
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() and not resp.headers.get("Content-Encoding") else size
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url} sends {total} bytes, the Hub announced {size}")
        if total is not None and total - offset > shutil.disk_usage(dest.parent).free:
            raise OSError(errno.ENOSPC, f"not enough disk space for {what}: need {total - offset} bytes",
                          str(dest.parent))
        with open(part, "r+b" if offset else "wb") as fh:
            hasher = hashlib.sha256() if sha256 else None
            while hasher is not None and fh.tell() < offset:
                hasher.update(fh.read(min(_CHUNK, offset - fh.tell())))
            fh.seek(offset)
            fh.truncate()
            done = offset
            bar = _progress_bar(progress, total, offset, what)
            try:
                for chunk in resp.iter_content(_CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            except requests.exceptions.RequestException as exc:
                raise DownloadConnectionError(f"download of {url} was cut off after {done} bytes ({exc}); "
                                              "run again to resume") from exc
            finally:
                if bar is not None:
                    bar.close()
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        resp.close()
    if total is not None and done < total:
        raise DownloadConnectionError(f"download of {url} ended after {done} of {total} bytes; run again to resume")
    if (total is not None and done > total) or (hasher is not None and hasher.hexdigest() != sha256):
        part.unlink(missing_ok=True)
        got = f"{done} bytes" if total is not None and done > total else f"sha256 {hasher.hexdigest()}"
        raise DownloadError(f"{what} from {url} does not match what the Hub announced (got {got}, expected "
                            f"{total} bytes, sha256 {sha256}); the download was discarded")
    os.replace(part, dest)

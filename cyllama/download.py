"""Model downloads from the Hugging Face Hub (or any URL) into cyllama's model cache.

>>> download_model("bartowski/Llama-3.2-1B-Instruct-GGUF:q4")          # doctest: +SKIP
>>> hf_hub_file("Qwen/Qwen2-0.5B-Instruct-GGUF", "*q8_0.gguf")         # doctest: +SKIP
>>> download_model(url="https://example.com/m.gguf", output_path="models/m.gguf")  # doctest: +SKIP

Layout: ``<cache>/<user>/<model>/<revision>/<file in repo>``; the cache is ``cache_dir=`` or
``$CYLLAMA_CACHE_DIR/models`` (default ``~/.cache/cyllama/models``). A file present in the cache
is returned without touching the network. Downloads go to ``<file>.part`` beside the target
(resumed when a previous attempt was cut off), are checked against the announced size and, where
the Hub gives one, the sha256, then renamed into place, so a cached file is always complete.
Nothing is ever written outside the cache (or the folder of ``output_path``): repository, file
and revision names are checked, and every target path is resolved and checked to lie inside it.

Environment: ``HF_ENDPOINT`` (default ``https://huggingface.co``), ``HF_TOKEN`` (sent only to
that endpoint), ``HF_HUB_OFFLINE=1`` (use the cache only), ``CYLLAMA_CACHE_DIR``.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, unquote, urlparse

from . import _assets

__all__ = [
    "download_model", "hf_hub_file", "list_cached_models", "default_cache_dir", "parse_hf_repo",
    "select_gguf", "DownloadError", "DownloadConnectionError",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_TIMEOUT = (15, 120)  # connect, read (seconds)
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed: bad answer from the server, size or sha256 mismatch."""


class DownloadConnectionError(DownloadError, ConnectionError):
    """The server could not be reached, or the transfer was cut off (run again to resume)."""


# -- names and paths --------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|F32|FP16|FP32|MXFP4(?:_MOE)?|TQ\d_\d)(?![A-Za-z0-9])",
    re.IGNORECASE)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# After the tag's own text, which variant a short tag ("q4") prefers.
_VARIANT_ORDER = ("_K_M", "_K_S", "_0", "_K_L", "_1", "_K", "_K_XL", "_NL", "_XS", "_M", "_S")


def default_cache_dir() -> Path:
    """``$CYLLAMA_CACHE_DIR/models``, by default ``~/.cache/cyllama/models``."""
    return _assets.cache_dir() / "models"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _check_name(part: str, what: str) -> str:
    if not isinstance(part, str) or not _NAME_RE.match(part) or ".." in part:
        raise ValueError(f"invalid {what} {part!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit, no '..')")
    return part


def _parse_repo_id(repo_id: str) -> tuple[str, str]:
    if not isinstance(repo_id, str):
        raise TypeError(f"repo id must be a string, got {type(repo_id).__name__}")
    parts = repo_id.strip().split("/")
    if len(parts) != 2:
        raise ValueError(f"invalid Hugging Face repo {repo_id!r}: expected 'user/model'")
    return _check_name(parts[0], "repo owner"), _check_name(parts[1], "repo name")


def parse_hf_repo(spec: str) -> tuple[str, str, str | None]:
    """``"user/model:tag"`` → ``(user, model, tag)``; the tag is None when absent."""
    if not isinstance(spec, str):
        raise TypeError(f"hf_repo must be a string, got {type(spec).__name__}")
    repo, sep, tag = spec.strip().partition(":")
    user, model = _parse_repo_id(repo)
    tag = tag.strip() if sep else None
    if tag is not None:
        if not tag:
            tag = None
        elif "\x00" in tag or "/" in tag or "\\" in tag:
            raise ValueError(f"invalid tag {tag!r}")
    return user, model, tag


def _safe_relpath(name: str, what: str = "file name") -> str:
    """A repo-relative path that cannot leave the folder it is joined to."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid {what}: {name!r}")
    if "\x00" in name or "\\" in name:
        raise ValueError(f"invalid {what} {name!r}: NUL and backslashes are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or name.startswith("~"):
        raise ValueError(f"invalid {what} {name!r}: absolute paths are not allowed")
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise ValueError(f"invalid {what} {name!r}: empty, '.' and '..' path parts are not allowed")
        if any(ord(c) < 32 or ord(c) == 127 for c in p):
            raise ValueError(f"invalid {what} {name!r}: control characters are not allowed")
    return "/".join(parts)


def _rev_component(revision: str) -> str:
    if not isinstance(revision, str) or not revision or revision in (".", "..") or "\x00" in revision:
        raise ValueError(f"invalid revision {revision!r}")
    if any(ord(c) < 32 for c in revision) or ".." in revision.split("/"):
        raise ValueError(f"invalid revision {revision!r}")
    return quote(revision, safe="")  # one folder name: 'refs/pr/1' -> 'refs%2Fpr%2F1'


def _contained(root: Path, rel: str) -> Path:
    """``root / rel``, resolved, refusing anything that ends up outside ``root``."""
    root_r = root.resolve()
    target = (root_r / rel).resolve()
    if target == root_r or not target.is_relative_to(root_r):
        raise ValueError(f"refusing to write {rel!r} outside {root}")
    return target


def _quant(filename: str) -> str | None:
    base = filename.rsplit("/", 1)[-1]
    base = _SPLIT_RE.sub(".gguf", base)
    if base.lower().endswith(".gguf"):
        base = base[:-5]
    found = _QUANT_RE.findall(base)
    return found[-1].upper() if found else None


def _is_mmproj(filename: str) -> bool:
    return "mmproj" in filename.rsplit("/", 1)[-1].lower()


def _split_info(filename: str) -> tuple[int, int] | None:
    m = _SPLIT_RE.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _split_set(filename: str) -> list[str]:
    """All shards of a split GGUF, given any one of them (or ``[filename]``)."""
    m = _SPLIT_RE.search(filename)
    if not m:
        return [filename]
    total = int(m.group(2))
    prefix = filename[:m.start()]
    return [f"{prefix}-{i:05d}-of-{m.group(2)}.gguf" for i in range(1, total + 1)]


def _first_shard(filename: str) -> str:
    return _split_set(filename)[0]


def _variant_rank(quant: str, tag: str) -> int:
    rest = quant[len(tag):]
    return _VARIANT_ORDER.index(rest) if rest in _VARIANT_ORDER else len(_VARIANT_ORDER)


def select_gguf(files: Iterable[str], tag: str | None = None, *, repo: str = "the repository") -> str:
    """Picks the model file for an Ollama-style tag from a repo's file list.

    No tag (or ``latest``): Q4_K_M if there is one, else the first .gguf. A tag that names a
    quantization (``q4_k_m``, ``Q8_0``, case-insensitive) picks that file; a shorter one (``q4``)
    picks the best variant (Q4_K_M, Q4_K_S, Q4_0, ...); a tag ending in ``.gguf`` names the file;
    otherwise a file whose name contains the tag. Projector (mmproj) files and shards other than
    the first of a split model are never picked. Raises FileNotFoundError when nothing matches.
    """
    files = sorted(set(files))
    cands = [f for f in files if f.lower().endswith(".gguf") and not _is_mmproj(f)
             and (_split_info(f) is None or _split_info(f)[0] == 1)]
    if not cands:
        raise FileNotFoundError(f"no .gguf model file in {repo}")
    if tag is None or tag.strip().lower() in ("", "latest", "default"):
        for f in cands:
            if _quant(f) == "Q4_K_M":
                return f
        return cands[0]
    if tag.lower().endswith(".gguf"):
        for f in files:
            if f == tag or f.rsplit("/", 1)[-1] == tag:
                return _first_shard(f)
        for f in files:
            if f.lower() == tag.lower() or f.rsplit("/", 1)[-1].lower() == tag.lower():
                return _first_shard(f)
        raise FileNotFoundError(f"no file named {tag!r} in {repo}")
    t = tag.strip().upper()
    by_len = lambda f: (len(f), f)  # noqa: E731 - the shortest (top-level, plainest) name wins ties
    exact = [f for f in cands if _quant(f) == t]
    if exact:
        return min(exact, key=by_len)
    prefix = [f for f in cands if (_quant(f) or "").startswith(t + "_")]
    if prefix:
        return min(prefix, key=lambda f: (_variant_rank(_quant(f) or "", t), *by_len(f)))
    contains = [f for f in cands if t in f.rsplit("/", 1)[-1].upper()]
    if contains:
        return min(contains, key=by_len)
    tags = sorted({q for q in map(_quant, cands) if q})
    raise FileNotFoundError(f"no model file for tag {tag!r} in {repo}; available: {', '.join(tags) or 'none'} "
                            f"(files: {', '.join(cands[:20])})")


def _glob_select(files: Iterable[str], pattern: str, repo: str) -> str:
    files = sorted(set(files))
    matches = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
    if not matches:  # "*q4_0.gguf" should find "...Q4_0.gguf"
        matches = [f for f in files if fnmatch.fnmatchcase(f.lower(), pattern.lower())]
    if not matches:
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        raise FileNotFoundError(f"no file in {repo} matches {pattern!r}"
                                + (f"; .gguf files: {', '.join(ggufs[:20])}" if ggufs else ""))
    firsts = sorted({_first_shard(f) for f in matches})
    if len(firsts) > 1:
        raise ValueError(f"{pattern!r} matches several files in {repo}: {', '.join(firsts[:20])}; "
                         "use a more specific pattern")
    return firsts[0]


# -- environment ------------------------------------------------------------------------------

def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hf_token(token: str | bool | None) -> str | None:
    if token is False:
        return None
    if isinstance(token, str) and token:
        return token
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


# -- HTTP -------------------------------------------------------------------------------------

def _requests() -> Any:
    try:
        import requests
    except ImportError as exc:  # pragma: no cover - requests ships with the server/dev extras
        raise ImportError("model downloads need the 'requests' package: pip install requests") from exc
    return requests


def _session(token: str | None) -> Any:
    from ._version import __version__

    s = _requests().Session()
    s.headers["User-Agent"] = f"cyllama/{__version__}"
    if token:
        # requests drops this header when a redirect leaves the host (the Hub's CDN).
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def _request(session: Any, method: str, url: str, **kw: Any) -> Any:
    requests = _requests()
    kw.setdefault("timeout", _TIMEOUT)
    try:
        return session.request(method, url, **kw)
    except requests.exceptions.RequestException as exc:
        raise DownloadConnectionError(f"could not reach {url}: {exc}") from exc


def _check_status(resp: Any, url: str, what: str, has_token: bool) -> None:
    code = resp.status_code
    if code < 400:
        return
    resp.close()
    if code in (401, 403):
        hint = ("the token was refused or has no access to it" if has_token else
                "it may not exist, or be private or gated (accept its terms on the Hub, then pass token= or "
                "set HF_TOKEN)")
        raise PermissionError(errno.EACCES, f"access denied to {what} (HTTP {code}); {hint}", url)
    if code == 404:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found (HTTP 404)", url)
    reason = getattr(resp, "reason", None)
    raise DownloadError(f"HTTP {code}{' ' + reason if reason else ''} for {url}")


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def _list_repo(session: Any, endpoint: str, repo: str, revision: str, has_token: bool) -> dict[str, dict]:
    """``{path: {"size": int|None, "sha256": str|None}}`` for every file of ``repo@revision``."""
    rev = quote(revision, safe="")
    url: str | None = f"{endpoint}/api/models/{repo}/tree/{rev}"
    params: dict | None = {"recursive": "true"}
    entries: list[dict] = []
    first = True
    while url:
        resp = _request(session, "GET", url, params=params)
        if first and resp.status_code in (400, 404, 405, 501):
            # Older mirrors lack the tree API: fall back to the model info's file list.
            resp.close()
            return _list_repo_siblings(session, endpoint, repo, revision, has_token)
        _check_status(resp, url, f"repository {repo}@{revision}", has_token)
        data = _json(resp, url)
        if not isinstance(data, list):
            raise DownloadError(f"unexpected answer from {url}: expected a JSON list")
        entries += [e for e in data if isinstance(e, dict)]
        nxt = resp.links.get("next", {}).get("url") if hasattr(resp, "links") else None
        url = nxt if nxt and _same_origin(nxt, endpoint) else None
        params, first = None, False
    files: dict[str, dict] = {}
    for e in entries:
        if e.get("type", "file") != "file" or not isinstance(e.get("path"), str):
            continue
        lfs = e.get("lfs") if isinstance(e.get("lfs"), dict) else None
        sha = (lfs or {}).get("oid") or (lfs or {}).get("sha256")
        size = (lfs or {}).get("size", e.get("size"))
        files[e["path"]] = {"size": size if isinstance(size, int) else None,
                            "sha256": sha.lower() if isinstance(sha, str) and _is_sha256(sha) else None}
    return _drop_unsafe(files, repo)


def _list_repo_siblings(session: Any, endpoint: str, repo: str, revision: str, has_token: bool) -> dict[str, dict]:
    url = f"{endpoint}/api/models/{repo}" + ("" if revision == "main" else f"/revision/{quote(revision, safe='')}")
    resp = _request(session, "GET", url, params={"blobs": "true"})
    _check_status(resp, url, f"repository {repo}@{revision}", has_token)
    data = _json(resp, url)
    siblings = data.get("siblings") if isinstance(data, dict) else None
    if not isinstance(siblings, list):
        raise DownloadError(f"unexpected answer from {url}: no file list ('siblings')")
    files: dict[str, dict] = {}
    for s in siblings:
        if isinstance(s, dict) and isinstance(s.get("rfilename"), str):
            lfs = s.get("lfs") if isinstance(s.get("lfs"), dict) else {}
            sha = lfs.get("sha256") or lfs.get("oid")
            size = lfs.get("size", s.get("size"))
            files[s["rfilename"]] = {"size": size if isinstance(size, int) else None,
                                     "sha256": sha.lower() if isinstance(sha, str) and _is_sha256(sha) else None}
    return _drop_unsafe(files, repo)


def _drop_unsafe(files: dict[str, dict], repo: str) -> dict[str, dict]:
    safe = {}
    for name, meta in files.items():
        try:
            safe[_safe_relpath(name)] = meta
        except ValueError:
            warnings.warn(f"ignoring unsafe file name {name!r} in the listing of {repo}", stacklevel=3)
    return safe


def _json(resp: Any, url: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise DownloadError(f"unexpected answer from {url}: not JSON") from exc
    finally:
        resp.close()


def _is_sha256(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{64}", text))


def _etag_sha256(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    return v.lower() if _is_sha256(v) else None


def _announced_sha256(resp: Any, trust_etag: bool) -> str | None:
    """The sha256 the server vouches for: ``X-Linked-Etag`` anywhere along the redirects, or the
    first (Hub, not CDN) response's ``ETag`` when it is a 64-hex digest."""
    chain = [*getattr(resp, "history", []), resp]
    for r in chain:
        sha = _etag_sha256(r.headers.get("X-Linked-Etag"))
        if sha:
            return sha
    return _etag_sha256(chain[0].headers.get("ETag")) if trust_etag else None


def _announced_size(resp: Any) -> int | None:
    for r in [*getattr(resp, "history", []), resp]:
        v = r.headers.get("X-Linked-Size")
        if v and v.isdigit():
            return int(v)
    return None


# -- the transfer -----------------------------------------------------------------------------

def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                dynamic_ncols=True)


def _lock(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def _sha256_file(fh: Any, upto: int) -> Any:
    h = hashlib.sha256()
    fh.seek(0)
    left = upto
    while left > 0:
        block = fh.read(min(_CHUNK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h


def _download_file(session: Any, url: str, dest: Path, *, expected_size: int | None = None,
                   expected_sha256: str | None = None, trust_etag: bool = False, progress: bool = True,
                   has_token: bool = False, what: str | None = None, replace: bool = False) -> Path:
    """Streams ``url`` into ``dest`` through ``dest.part`` (resumed, verified, renamed).

    An existing ``dest`` is kept (``replace=False``) or replaced only once the new copy is
    complete and verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    what = what or dest.name
    while True:
        fh = open(part, "a+b")
        try:
            _lock(fh)  # another process downloading the same file: wait for it
            if dest.exists() and not replace:
                return dest
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(part).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder renamed or removed the file we waited on: start over
                continue
            try:
                _transfer(session, url, fh, part, dest, expected_size, expected_sha256, trust_etag, progress,
                          has_token, what)
            except BaseException:
                _drop_if_empty(fh, part)
                raise
            return dest
        finally:
            fh.close()


def _transfer(session: Any, url: str, fh: Any, part: Path, dest: Path, expected_size: int | None,
              expected_sha256: str | None, trust_etag: bool, progress: bool, has_token: bool, what: str) -> None:
    requests = _requests()
    fh.seek(0, os.SEEK_END)
    offset = fh.tell()
    if expected_size is not None and offset > expected_size:
        fh.truncate(0)
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    resp = _request(session, "GET", url, headers=headers, stream=True)
    if resp.status_code == 416 and offset:  # stale partial file: start again
        resp.close()
        fh.truncate(0)
        offset = 0
        headers.pop("Range")
        resp = _request(session, "GET", url, headers=headers, stream=True)
    try:
        _check_status(resp, url, what, has_token)
        if offset and resp.status_code == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(f"bad Content-Range from {url}: {resp.headers.get('Content-Range')!r}")
            total = int(m.group(2)) if m.group(2) != "*" else None
        else:
            offset = 0
            fh.truncate(0)
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() and not resp.headers.get("Content-Encoding") else None
        linked_size = _announced_size(resp)
        expected_size = expected_size if expected_size is not None else linked_size
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url} announces {total} bytes, expected {expected_size}")
        total = total if total is not None else expected_size
        sha = _announced_sha256(resp, trust_etag)
        if expected_sha256 and sha and sha != expected_sha256.lower():
            raise DownloadError(f"conflicting sha256 for {url}: listing says {expected_sha256}, server says {sha}")
        sha = (expected_sha256 or sha or "").lower() or None
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if total - offset > free:
                raise OSError(errno.ENOSPC, f"not enough disk space for {what}: need {total - offset} bytes, "
                              f"{free} free", str(part.parent))
        hasher = _sha256_file(fh, offset) if sha else None
        fh.seek(offset)
        size = offset
        bar = _progress_bar(progress, total, offset, what)
        try:
            for chunk in resp.iter_content(_CHUNK):
                if not chunk:
                    continue
                fh.write(chunk)
                size += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if total is not None and size > total:
                    _discard(fh, part)
                    raise DownloadError(f"{url} sent more than the {total} bytes it announced")
        except requests.exceptions.RequestException as exc:
            fh.flush()
            raise DownloadConnectionError(f"download of {url} was cut off after {size} bytes ({exc}); "
                                          "run again to resume") from exc
        finally:
            if bar is not None:
                bar.close()
        fh.flush()
        os.fsync(fh.fileno())
    finally:
        resp.close()
    if total is not None and size < total:
        raise DownloadConnectionError(f"download of {url} ended after {size} of {total} bytes; run again to resume")
    if hasher is not None and hasher.hexdigest() != sha:
        _discard(fh, part)
        raise DownloadError(f"sha256 mismatch for {url}: expected {sha}, got {hasher.hexdigest()}; "
                            "the download was discarded")
    if os.name == "nt":  # pragma: no cover - an open file cannot be renamed there
        fh.close()
    os.replace(part, dest)


def _drop_if_empty(fh: Any, part: Path) -> None:
    """Removes a partial file that holds nothing worth resuming."""
    try:
        if not fh.closed and os.fstat(fh.fileno()).st_size == 0 and \
                os.fstat(fh.fileno()).st_ino == os.stat(part).st_ino:
            os.unlink(part)
    except OSError:
        pass


def _discard(fh: Any, part: Path) -> None:
    try:
        fh.truncate(0)
        os.unlink(part)
    except OSError:
        pass


# -- the Hub ----------------------------------------------------------------------------------

def _resolve_url(endpoint: str, repo: str, revision: str, filename: str) -> str:
    return f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"


def _cached_files(rev_dir: Path) -> list[str]:
    if not rev_dir.is_dir():
        return []
    return sorted(p.relative_to(rev_dir).as_posix() for p in rev_dir.rglob("*")
                  if p.is_file() and not p.name.endswith(".part"))


def _offline_error(what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} is not in the cache and HF_HUB_OFFLINE is set; "
                             "unset HF_HUB_OFFLINE to download it")


def _fetch_set(session: Any, endpoint: str, repo: str, revision: str, first: str, root: Path,
               listing: dict[str, dict] | None, progress: bool, has_token: bool, force: bool,
               target: Path | None = None) -> Path:
    """Downloads ``first`` (and the rest of its split set) into ``root``; returns the first file."""
    names = _split_set(first)
    if listing is not None:
        missing = [n for n in names if n not in listing]
        if missing:
            raise FileNotFoundError(f"split model {first} in {repo} lacks {', '.join(missing)}")
    paths = []
    for name in names:
        dest = target if (target is not None and len(names) == 1) else _contained(root, name)
        if force or not dest.exists():
            meta = (listing or {}).get(name, {})
            _download_file(session, _resolve_url(endpoint, repo, revision, name), dest,
                           expected_size=meta.get("size"), expected_sha256=meta.get("sha256"), trust_etag=True,
                           progress=progress, has_token=has_token, what=f"{repo}/{name}", replace=force)
        paths.append(dest)
    return paths[0]


def _output_target(output_path: str | os.PathLike, default_name: str) -> tuple[Path, Path]:
    """(folder the download is confined to, file path) for a user-chosen output path."""
    text = os.fspath(output_path)
    out = Path(text).expanduser()
    if out.is_dir() or text.endswith(("/", os.sep)):
        name = _safe_relpath(default_name.rsplit("/", 1)[-1])
        return out, _contained(out, name)
    return out.parent, out.parent.resolve() / out.name


def hf_hub_file(repo_id: str, filename: str, *, cache_dir: str | os.PathLike | None = None,
                revision: str = "main", token: str | bool | None = None, progress: bool = True,
                force_download: bool = False) -> Path:
    """The local path of one file of a Hub repository, downloaded into the cache if needed.

    ``filename`` may be a glob (``"*q4_0.gguf"``, matched case-sensitively first, then
    case-insensitively); it must select one file (or one split model, whose shards are all
    fetched and whose first shard is returned), else ValueError lists the candidates.
    """
    user, model = _parse_repo_id(repo_id)
    repo = f"{user}/{model}"
    rev_dir = _contained(_cache_root(cache_dir), f"{user}/{model}/{_rev_component(revision)}")
    is_glob = any(c in filename for c in "*?[") if isinstance(filename, str) else False
    if not is_glob:
        filename = _safe_relpath(filename)
    if is_glob and ("\x00" in filename or "\\" in filename or filename.startswith("/") or
                    ".." in filename.split("/")):
        raise ValueError(f"invalid file pattern {filename!r}")

    def from_cache() -> Path | None:
        name = _glob_select(_cached_files(rev_dir), filename, repo) if is_glob else filename
        paths = [_contained(rev_dir, n) for n in _split_set(name)]
        return paths[0] if all(p.exists() for p in paths) else None

    if _offline() or (not force_download and not is_glob):
        try:
            hit = from_cache()
        except FileNotFoundError:
            hit = None
        if hit is not None and (not force_download or _offline()):
            return hit
        if _offline():
            raise _offline_error(f"{repo}@{revision}: {filename}")
    tok = _hf_token(token)
    endpoint = _endpoint()
    with _session(tok) as session:
        listing = None
        if is_glob or _split_info(filename):
            listing = _list_repo(session, endpoint, repo, revision, bool(tok))
            name = _glob_select(listing, filename, repo) if is_glob else filename
        else:
            name = filename
        return _fetch_set(session, endpoint, repo, revision, name, rev_dir, listing, progress, bool(tok),
                          force_download)


def download_model(hf_repo: str | None = None, *, url: str | None = None,
                   output_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   filename: str | None = None, revision: str = "main", token: str | bool | None = None,
                   progress: bool = True, force_download: bool = False) -> Path:
    """Downloads a GGUF model and returns its local path.

    ``hf_repo="user/model:tag"`` picks the file for the tag from the repository's listing (see
    :func:`select_gguf`; ``filename=`` names the file, or a glob, instead). ``url=`` downloads
    any http(s) URL. The file goes to the cache (``cache_dir`` or :func:`default_cache_dir`),
    or to ``output_path`` (a file path, or an existing folder / one ending in '/'). A cached
    file is returned without a download unless ``force_download``. Errors: FileNotFoundError
    (HTTP 404, no matching file, offline and not cached), PermissionError (HTTP 401/403),
    DownloadConnectionError (network), DownloadError (size or sha256 mismatch, other HTTP errors),
    ValueError (unsafe or malformed names).
    """
    if (hf_repo is None) == (url is None):
        raise ValueError("pass exactly one of hf_repo or url")
    if url is not None:
        return _download_url(url, output_path, cache_dir, token, progress, force_download)
    user, model, tag = parse_hf_repo(hf_repo)
    repo = f"{user}/{model}"
    if filename is not None and output_path is None:
        return hf_hub_file(repo, filename, cache_dir=cache_dir, revision=revision, token=token,
                           progress=progress, force_download=force_download)
    rev_dir = _contained(_cache_root(cache_dir), f"{user}/{model}/{_rev_component(revision)}")

    def pick(files: Iterable[str]) -> str:
        if filename is not None:
            return _glob_select(files, filename, repo) if any(c in filename for c in "*?[") \
                else _first_shard(_safe_relpath(filename))
        return select_gguf(files, tag, repo=repo)

    def cached() -> Path | None:
        if output_path is not None:
            out = Path(output_path).expanduser()
            return out if out.is_file() else None
        try:
            name = pick(_cached_files(rev_dir))
        except FileNotFoundError:
            return None
        paths = [_contained(rev_dir, n) for n in _split_set(name)]
        return paths[0] if all(p.exists() for p in paths) else None

    if _offline():
        hit = cached()
        if hit is None:
            raise _offline_error(f"a model for {hf_repo}")
        return hit
    tok = _hf_token(token)
    endpoint = _endpoint()
    with _session(tok) as session:
        try:
            listing = _list_repo(session, endpoint, repo, revision, bool(tok))
        except DownloadConnectionError:
            hit = None if force_download else cached()
            if hit is None:
                raise
            warnings.warn(f"could not reach {endpoint}; using the cached {hit}", stacklevel=2)
            return hit
        name = pick(listing)
        if filename is not None and name not in listing:
            raise FileNotFoundError(f"no file {name!r} in {repo}@{revision}")
        target = None
        root = rev_dir
        if output_path is not None:
            if _split_info(name):
                out = Path(output_path).expanduser()
                if not (out.is_dir() or os.fspath(output_path).endswith(("/", os.sep))):
                    raise ValueError(f"{name} is a split model: give output_path as a folder")
                root = out
            else:
                root, target = _output_target(output_path, name)
            if target is not None and target.exists() and not force_download:
                return target
        return _fetch_set(session, endpoint, repo, revision, name, root, listing, progress, bool(tok),
                          force_download, target=target)


def _download_url(url: str, output_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                  token: str | bool | None, progress: bool, force: bool) -> Path:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    base = unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]) or "download"
    try:
        base = _safe_relpath(base)
    except ValueError:
        raise ValueError(f"cannot take a file name from {url!r}; pass output_path=") from None
    if output_path is not None:
        _, dest = _output_target(output_path, base)
    else:
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        dest = _contained(_cache_root(cache_dir), f"_url/{key}/{base}")
    if dest.exists() and not force:
        return dest
    if _offline():
        raise _offline_error(url)
    # The Hub token goes only to the Hub; other hosts get only an explicit token=.
    if isinstance(token, str) and token:
        tok: str | None = token
    elif token is not False and _same_origin(url, _endpoint()):
        tok = _hf_token(None)
    else:
        tok = None
    with _session(tok) as session:
        return _download_file(session, url, dest, trust_etag=False, progress=progress, has_token=bool(tok),
                              what=base, replace=force)


# -- the cache --------------------------------------------------------------------------------

def list_cached_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The GGUF models in the cache: dicts with ``user``, ``model``, ``tag``, ``path``, ``size``
    (bytes; all shards of a split model), ``filename`` and ``revision``. Split models appear
    once, by their first shard; files being downloaded (``.part``) are left out."""
    root = _cache_root(cache_dir)
    if not root.is_dir():
        return []
    out: list[dict] = []
    for user_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME_RE.match(p.name)):
        for model_dir in sorted(p for p in user_dir.iterdir() if p.is_dir() and _NAME_RE.match(p.name)):
            for rev_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                for rel in _cached_files(rev_dir):
                    if not rel.lower().endswith(".gguf"):
                        continue
                    split = _split_info(rel)
                    if split and split[0] != 1:
                        continue
                    shards = [rev_dir / n for n in _split_set(rel)]
                    size = sum(p.stat().st_size for p in shards if p.exists())
                    base = rel.rsplit("/", 1)[-1]
                    tag = _quant(rel) or _SPLIT_RE.sub("", base).removesuffix(".gguf")
                    out.append({"user": user_dir.name, "model": model_dir.name, "tag": tag,
                                "path": rev_dir / rel, "size": size, "filename": rel,
                                "revision": unquote(rev_dir.name)})
    return out

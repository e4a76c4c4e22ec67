"""Where ``Llama.from_pretrained`` finds a repository's file: the Hugging Face cache first (as
``huggingface_hub`` lays it out, so files other tools downloaded are found, also offline), then
cyllama's downloader (:mod:`cyllama.download`, its own cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

from .. import download

__all__ = ["resolve_pretrained", "hf_cache_root", "find_in_hf_cache"]

PathLike = Union[str, "os.PathLike[str]"]


def hf_cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, or
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``), read at each call."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _snapshot(root: Path, repo_id: str, revision: str) -> Optional[Path]:
    user, model = download._parse_repo_id(repo_id)  # checked names: no path tricks
    repo_dir = root / f"models--{user}--{model}"
    ref = repo_dir / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    if not commit or "/" in commit or commit.startswith("."):
        return None
    snap = repo_dir / "snapshots" / commit
    return snap if snap.is_dir() else None


def find_in_hf_cache(repo_id: str, pattern: str, cache_dir: Optional[PathLike] = None,
                     revision: str = "main") -> Optional[Path]:
    """The cached file of ``repo_id`` matching ``pattern`` (a name or glob; a split model only when
    all its shards are there), or None. Raises ValueError when the pattern matches several."""
    snap = _snapshot(hf_cache_root(cache_dir), repo_id, revision)
    if snap is None:
        return None
    files = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]  # is_file follows links
    try:
        name = download._glob_select(files, pattern, repo_id)
    except FileNotFoundError:
        return None
    paths = [snap / n for n in download._split_set(name)]
    return paths[0] if all(p.is_file() for p in paths) else None


def _not_cached(message: str) -> FileNotFoundError:
    """huggingface_hub's ``LocalEntryNotFoundError`` (a FileNotFoundError) when it is installed."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return FileNotFoundError(message)
    return LocalEntryNotFoundError(message)


def resolve_pretrained(repo_id: str, filename: str, additional_files: Optional[List[str]] = None,
                       local_dir: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> Path:
    """The local path of ``filename`` (a name or glob) of ``repo_id``, downloading what is missing
    (also each of ``additional_files``) unless ``HF_HUB_OFFLINE`` is set.

    Offline, a file missing from both caches raises ``LocalEntryNotFoundError`` (from
    ``huggingface_hub``; a ``FileNotFoundError`` either way), as ``hf_hub_download`` does."""
    if not isinstance(filename, str) or not filename:
        raise ValueError("filename (a file name or a glob pattern) is required")

    def fetch(name: str) -> Path:
        if local_dir is not None:
            folder = Path(local_dir).expanduser()
            if not any(c in name for c in "*?[") and (folder / name).is_file():
                return folder / name
            if _offline():
                raise _not_cached(f"{name} is not in {folder} and HF_HUB_OFFLINE is set")
            folder.mkdir(parents=True, exist_ok=True)
            return download.download_model(repo_id, filename=name, output_path=str(folder) + os.sep,
                                           cache_dir=cache_dir, progress=False)
        hit = find_in_hf_cache(repo_id, name, cache_dir)
        if hit is not None:
            return hit
        try:
            return download.hf_hub_file(repo_id, name, cache_dir=cache_dir, progress=False)
        except FileNotFoundError as e:
            if _offline():
                raise _not_cached(f"{repo_id}: no cached file matches {name!r} (looked in "
                                  f"{hf_cache_root(cache_dir)} and cyllama's cache) and HF_HUB_OFFLINE is set; "
                                  "unset it to download") from e
            raise

    path = fetch(filename)
    for extra in additional_files or []:
        fetch(extra)
    return path

"""Where ``Llama.from_pretrained`` finds a repository's file: the Hugging Face cache first (as
``huggingface_hub`` lays it out, so files other tools downloaded are found, also offline), then
cyllama's downloader (:mod:`cyllama.download`, its own cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

from .. import download
from ..download._cache import find_cached, hub_cache_root, snapshot_dir
from ..download._errors import offline_miss
from ..download._names import glob_select

__all__ = ["resolve_pretrained", "hf_cache_root", "find_in_hf_cache"]

PathLike = Union[str, "os.PathLike[str]"]

hf_cache_root = hub_cache_root  # the Hugging Face hub cache: cache_dir, $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...


def find_in_hf_cache(repo_id: str, pattern: str, cache_dir: Optional[PathLike] = None,
                     revision: str = "main") -> Optional[Path]:
    """The cached file of ``repo_id`` matching ``pattern`` (a name or glob; a split model only when
    all its shards are there), or None. Raises ValueError when the pattern matches several."""
    snap = snapshot_dir(hf_cache_root(cache_dir), repo_id, revision)
    return find_cached(snap, lambda files: glob_select(files, pattern, repo_id))


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
            if download._offline():
                raise offline_miss(f"{name} is not in {folder} and HF_HUB_OFFLINE is set")
            folder.mkdir(parents=True, exist_ok=True)
            return download.download_model(repo_id, filename=name, output_path=str(folder) + os.sep,
                                           cache_dir=cache_dir, progress=False)
        hit = find_in_hf_cache(repo_id, name, cache_dir)
        if hit is not None:
            return hit
        try:
            return download.hf_hub_file(repo_id, name, cache_dir=cache_dir, progress=False)
        except FileNotFoundError as e:
            if download._offline():
                raise offline_miss(f"{repo_id}: no cached file matches {name!r} (looked in "
                                  f"{hf_cache_root(cache_dir)} and cyllama's cache) and HF_HUB_OFFLINE is set; "
                                  "unset it to download") from e
            raise

    path = fetch(filename)
    for extra in additional_files or []:
        fetch(extra)
    return path

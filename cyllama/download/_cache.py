"""The Hugging Face cache, laid out as ``huggingface_hub`` lays it out, so that files other tools
downloaded are found and files downloaded here are theirs too::

    <root>/models--<user>--<model>/refs/<revision>            the commit a branch or tag points to
                                  /blobs/<etag>               the file's bytes
                                  /snapshots/<commit>/<file>  a relative link to the blob

``<root>`` is ``cache_dir=``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``), read at each call."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from ._names import parse_repo_id, quant, split_base, split_info, split_set

__all__ = ["hub_cache_root", "repo_folder", "snapshot_dir", "snapshot_files", "cached_file", "find_cached", "checked_key",
           "link_into_snapshot", "write_ref", "list_cached_models"]

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def hub_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache (see the module's docstring)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_folder(root: Path, repo_id: str) -> Path:
    user, model = parse_repo_id(repo_id)
    return root / f"models--{user}--{model}"


def checked_key(value: str | None, what: str) -> str:
    """A commit hash or etag from a server, safe to use as one folder or file name."""
    if not isinstance(value, str) or not _KEY_RE.match(value) or ".." in value:
        raise ValueError(f"refusing the {what} {value!r} the server sent: not a plain name")
    return value


def snapshot_dir(root: Path, repo_id: str, revision: str) -> Path | None:
    """The snapshot folder ``revision`` (a ref, or a commit hash) names in the cache, or None."""
    folder = repo_folder(root, repo_id)
    ref = folder / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
        snap = folder / "snapshots" / checked_key(commit, "commit")
    except (OSError, ValueError):
        return None
    return snap if snap.is_dir() else None


def snapshot_files(snap: Path | None) -> list[str]:
    """The complete files of a snapshot (links to blobs that are there), repo-relative."""
    if snap is None:
        return []
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def cached_file(snap: Path | None, name: str) -> Path | None:
    """``name`` in the snapshot, when it (and, for a split model, every shard) is there."""
    if snap is None:
        return None
    paths = [snap / n for n in split_set(name)]
    return paths[0] if all(p.is_file() for p in paths) else None


def find_cached(snap: Path | None, pick: Callable[[list[str]], str]) -> Path | None:
    """The file ``pick`` chooses from the snapshot's files (it raises FileNotFoundError when none
    fits), when it and every shard of a split model are there; else None."""
    try:
        return cached_file(snap, pick(snapshot_files(snap)))
    except FileNotFoundError:
        return None


def link_into_snapshot(blob: Path, pointer: Path) -> None:
    """Points ``snapshots/<commit>/<file>`` at its blob (a relative link, or a move where links
    cannot be made), as huggingface_hub does."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(pointer.name + ".link")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, pointer.parent), tmp)
    except OSError:  # pragma: no cover - file systems without links
        os.replace(blob, pointer)
        return
    os.replace(tmp, pointer)


def write_ref(root: Path, repo_id: str, revision: str, commit: str) -> None:
    """Records that ``revision`` points to ``commit`` (nothing to record when it is the commit)."""
    if revision == commit:
        return
    ref = repo_folder(root, repo_id) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text(encoding="utf-8").strip() != commit:
        tmp = ref.with_name(ref.name + ".tmp")
        tmp.write_text(commit, encoding="utf-8")
        os.replace(tmp, ref)


def list_cached_models(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The GGUF models in the Hugging Face cache (:func:`hub_cache_root`), downloaded here or by
    any other tool: dicts with ``user``, ``model``, ``tag``, ``path``, ``size`` (bytes; all shards
    of a split model), ``filename``, ``revision`` (a branch or tag pointing at the snapshot, else
    its commit) and ``commit``. Split models appear once, by their first shard, and only when all
    shards are there; unfinished downloads are left out."""
    root = hub_cache_root(cache_dir)
    if not root.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("models--")):
        parts = folder.name.split("--")
        if len(parts) != 3:
            continue
        user, model = parts[1], parts[2]
        refs: dict[str, str] = {}
        if (folder / "refs").is_dir():
            for ref in sorted(p for p in (folder / "refs").rglob("*") if p.is_file()):
                refs.setdefault(ref.read_text(encoding="utf-8").strip(), ref.relative_to(folder / "refs").as_posix())
        snaps = folder / "snapshots"
        for snap in sorted(p for p in snaps.iterdir() if p.is_dir()) if snaps.is_dir() else []:
            for rel in snapshot_files(snap):
                split = split_info(rel)
                if not rel.lower().endswith(".gguf") or (split and split[0] != 1):
                    continue
                if cached_file(snap, rel) is None:
                    continue
                size = sum((snap / n).stat().st_size for n in split_set(rel))
                base = split_base(rel.rsplit("/", 1)[-1])
                out.append({"user": user, "model": model, "tag": quant(rel) or base.removesuffix(".gguf"),
                            "path": snap / rel, "size": size, "filename": rel,
                            "revision": refs.get(snap.name, snap.name), "commit": snap.name})
    return out
